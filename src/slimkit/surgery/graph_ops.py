"""What a captured graph may call: the allowlist of `slimkit.surgery.graph`.

A .slim file names every function of its graph by a string; loading maps the string to a callable
through `FUNCTIONS` (built here from fixed lists of names, never by importing or looking up a name
the file supplies), and a tensor method name must be in `METHODS`. Everything here computes on
tensors and numbers: nothing reads or writes files, imports, runs code from strings, calls back into
Python objects or touches private (`_`) attributes. `getattr` may only read `TENSOR_ATTRS`.

>>> FUNCTIONS["torch.nn.functional.relu"] is torch.nn.functional.relu
True
>>> name_of(operator.add)
'operator.add'
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F

_TORCH = """
abs absolute acos adaptive_avg_pool1d addcdiv addcmul addmm add all amax amin any arange argmax argmin argsort asin
atan atan2 baddbmm batch_norm bmm broadcast_to bucketize cat cdist ceil chunk clamp clamp_max clamp_min clip clone
concat concatenate conv1d conv2d cos cosh count_nonzero cummax cummin cumprod cumsum detach diag diagonal div divide
dot dropout einsum embedding eq erf erfc exp exp2 expm1 eye flatten flip floor floor_divide fmod frac full full_like
gather ge group_norm gt hstack index_select instance_norm isfinite isinf isnan layer_norm le lerp linspace log log10
log1p log2 log_softmax logical_and logical_not logical_or logical_xor logsumexp lt masked_fill matmul max maximum mean
median min minimum mm movedim mul multiply mv nan_to_num narrow ne neg negative norm numel ones ones_like outer
permute pow prod rand rand_like randn randn_like reciprocal relu remainder repeat_interleave reshape roll round rsqrt
select sigmoid sign sin sinh softmax sort split sqrt square squeeze stack std std_mean sub subtract sum swapaxes t
tan tanh tensordot tile topk transpose tril triu true_divide trunc unbind unflatten unsqueeze var var_mean vstack
where zeros zeros_like
"""
_FUNCTIONAL = """
adaptive_avg_pool1d adaptive_avg_pool2d adaptive_max_pool1d adaptive_max_pool2d alpha_dropout avg_pool1d avg_pool2d
batch_norm bilinear celu conv1d conv2d conv3d conv_transpose1d conv_transpose2d cosine_similarity dropout dropout1d
dropout2d elu embedding fold gelu glu group_norm hardshrink hardsigmoid hardswish hardtanh instance_norm interpolate
layer_norm leaky_relu linear local_response_norm log_softmax logsigmoid lp_pool1d lp_pool2d max_pool1d max_pool2d mish
normalize one_hot pad pairwise_distance pixel_shuffle pixel_unshuffle prelu relu relu6 rms_norm
scaled_dot_product_attention selu sigmoid silu softmax softmin softplus softshrink softsign tanh tanhshrink threshold
unfold
"""
_OPERATOR = """
abs add and_ eq floordiv ge getitem gt invert le lshift lt matmul mod mul ne neg not_ or_ pos pow rshift sub
truediv xor
"""
METHODS = frozenset("""
abs add add_ addmm all amax amin any argmax argmin argsort bfloat16 bmm bool ceil chunk clamp clamp_ clamp_max
clamp_min clip clone contiguous copy_ cos cumprod cumsum detach dim div div_ double eq exp expand expand_as fill_
flatten flip float floor gather ge gt half index_select int isnan le log log_softmax logical_not long lt masked_fill
masked_fill_ matmul max mean min mm movedim mul mul_ narrow ne neg new_full new_ones new_zeros norm numel permute pow
prod reciprocal relu relu_ repeat repeat_interleave reshape reshape_as roll round rsqrt select sigmoid sign sin size
softmax sort split sqrt square squeeze std sub sub_ sum swapaxes t tanh tile to topk transpose tril triu type_as
unbind unflatten unsqueeze var view view_as where zero_
""".split())
TENSOR_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "T", "mT"})
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in (
    "float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")}


def _table() -> dict[str, Callable]:
    table: dict[str, Callable] = {"getattr": builtins.getattr}
    for prefix, owner, names in (("torch.nn.functional", F, _FUNCTIONAL), ("torch", torch, _TORCH),
                                 ("operator", operator, _OPERATOR)):
        for name in names.split():
            fn = getattr(owner, name, None)   # a name this torch lacks is simply not allowed
            if callable(fn):
                table[f"{prefix}.{name}"] = fn
    return table


FUNCTIONS: dict[str, Callable] = _table()
_NAMES: dict[int, str] = {}
for _name, _fn in FUNCTIONS.items():
    _NAMES.setdefault(id(_fn), _name)


def name_of(fn: object) -> str | None:
    """The allowlisted name of callable `fn` (the first listed when two names are one function), or None."""
    return _NAMES.get(id(fn))
