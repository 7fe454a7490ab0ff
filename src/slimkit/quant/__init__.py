"""slimkit.quant: fewer bits per number, packed on disk and run on integer kernels.

>>> import slimkit as sk
>>> from slimkit.quant import GPTQ, Int8, WeightOnly
>>> sk.quantize_(model, Int8())                                  # w8a8 dynamic + int8 embeddings
>>> sk.quantize_(model, GPTQ(bits=4, symmetric=False), data=task)

Methods: `int8`, `int8-static`, `rtn` (`WeightOnly`), `gptq`, `qat`; each quantizes Linear and
Conv2d layers (a conv's weight as the matrix out x in*kh*kw, `conv.py`) and, where asked,
embeddings. Math lives in `math.py`, `gptq.py`, `observers.py` and `static_search.py`; runtime
modules in `slimkit.nn.quant_*`.
"""

from slimkit.quant.api import GPTQ, Int8, WeightOnly
from slimkit.quant.convert import quant_report
from slimkit.quant.math import Granularity
from slimkit.quant.qat import QAT
from slimkit.quant.sensitivity import sensitivity
from slimkit.quant.static import Int8Static

__all__ = ["GPTQ", "QAT", "Granularity", "Int8", "Int8Static", "WeightOnly", "quant_report", "sensitivity"]
