"""slimkit.quantization: fewer bits per number, packed on disk and run on integer kernels.

>>> import slimkit as sk
>>> from slimkit.quantization import GPTQ, Int8, WeightOnly
>>> sk.quantize_(model, Int8())                                  # w8a8 dynamic + int8 embeddings
>>> sk.quantize_(model, GPTQ(bits=4, symmetric=False), data=task)

Methods: `int8`, `int8-static`, `rtn` (`WeightOnly`), `gptq`, `qat`; each quantizes Linear and
Conv2d layers (a conv's weight as the matrix out x in*kh*kw, `conv.py`) and, where asked,
embeddings. Math lives in `math.py`, `gptq.py`, `observers.py` and `static_search.py`; runtime
modules in `slimkit.nn.quant_*`.
"""

from slimkit.nn.quant_math import Granularity
from slimkit.quantization import (
    estimate,  # noqa: F401  (registers the size estimates)
    streaming,  # noqa: F401  (registers the streaming support)
)
from slimkit.quantization.api import GPTQ, Int8, WeightOnly
from slimkit.quantization.convert import quant_report
from slimkit.quantization.qat import QAT
from slimkit.quantization.sensitivity import sensitivity
from slimkit.quantization.static import Int8Static

__all__ = ["GPTQ", "QAT", "Granularity", "Int8", "Int8Static", "WeightOnly", "quant_report", "sensitivity"]
