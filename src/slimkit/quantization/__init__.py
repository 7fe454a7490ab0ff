"""slimkit.quantization: fewer bits per number, packed on disk and run on integer kernels.

>>> import slimkit as sk
>>> from slimkit.quantization import GPTQ, Int8, WeightOnly
>>> sk.quantize_(model, Int8Config())                                  # w8a8 dynamic + int8 embeddings
>>> sk.quantize_(model, GPTQConfig(bits=4, symmetric=False), data=task)

Methods: `int8`, `int8-static`, `rtn` (`WeightOnly`), `gptq`, `awq`, `smoothquant`, `qat`; each quantizes Linear and
Conv2d layers (a conv's weight as the matrix out x in*kh*kw, `conv.py`) and, where asked,
embeddings. Math lives in `math.py`, `gptq.py`, `observers.py` and `static_search.py`; runtime
modules in `slimkit.nn.quant_*`.
"""

from slimkit.nn.quant_math import Granularity
from slimkit.quantization import (
    estimate,  # noqa: F401  (registers the size estimates)
    scaled_stream,  # noqa: F401  (registers awq / smoothquant streaming)
    streaming,  # noqa: F401  (registers the streaming support)
)
from slimkit.quantization.api import GPTQ, GPTQConfig, Int8, Int8Config, WeightOnly, WeightOnlyConfig
from slimkit.quantization.convert import quant_report
from slimkit.quantization.qat import QAT, QATConfig
from slimkit.quantization.scaled import AWQConfig, SmoothQuantConfig
from slimkit.quantization.sensitivity import sensitivity
from slimkit.quantization.static import Int8Static, Int8StaticConfig

__all__ = ["AWQConfig", "GPTQConfig", "Granularity", "Int8Config", "Int8StaticConfig", "QATConfig",
           "SmoothQuantConfig", "WeightOnlyConfig",
           "quant_report", "sensitivity",
           "GPTQ", "Int8", "Int8Static", "QAT", "WeightOnly"]   # names before the <Method>Config scheme
