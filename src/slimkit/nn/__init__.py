"""slimkit.nn"""

from slimkit.nn import bert_fast, codec_affine, hashed, quant_conv, quant_embedding, quant_linear, tied_head  # noqa: F401  (register)
