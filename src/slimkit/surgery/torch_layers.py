"""The plain torch layers a .slim file can describe: constructor arguments as JSON, and back.

`slimkit.surgery.specs` uses this table for `to_spec` / `from_spec`; a captured user model
(`slimkit.surgery.graph`) keeps these layers as whole modules. A layer is recorded only when its
spec holds everything that changes its outputs: options the table does not know (an Embedding's
`max_norm`, a custom `padding_mode` on a layer type that has none here) make `describe` raise, so an
architecture is never saved wrong. Values come from files when loading: builders get them as they
are, and `from_spec` turns any constructor error into a `SlimFormatError`.

>>> describe, build = PLAIN["GRU"][1:]
>>> build(describe(nn.GRU(4, 8, batch_first=True)))
GRU(4, 8, batch_first=True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from slimkit.core.errors import SlimError, SlimFormatError

MAX_RNN_LAYERS = 64
# a spec from a file may not make every forward allocate far more than its input: an adaptive pool's
# output size is the output's size whatever the input (convolution padding: `slimkit.surgery.specs`)
MAX_POOL_OUT = 1024


def _linear(m: nn.Linear) -> dict:
    return {"in": m.in_features, "out": m.out_features, "bias": m.bias is not None}


def _conv(m: nn.Conv1d | nn.Conv2d) -> dict:
    spec = {"in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str)
            else m.padding, "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}
    if m.padding_mode != "zeros":   # older files have no key: zeros
        spec["padding_mode"] = m.padding_mode
    return spec


def _build_conv(cls: type[nn.Module]) -> Callable[[dict], nn.Module]:
    return lambda s: cls(s["in"], s["out"], s["kernel"], s["stride"], s["padding"], s["dilation"], s["groups"],
                         s["bias"], padding_mode=s.get("padding_mode", "zeros"))


def _bn(m: nn.modules.batchnorm._BatchNorm) -> dict:
    return {"features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track": m.track_running_stats}


def _build_bn(cls: type[nn.Module]) -> Callable[[dict], nn.Module]:
    return lambda s: cls(s["features"], s["eps"], s["momentum"], s["affine"], s["track"])


def _embedding(m: nn.Embedding) -> dict:
    if m.max_norm is not None or m.sparse or m.scale_grad_by_freq:
        raise SlimError("cannot record an Embedding with max_norm, sparse or scale_grad_by_freq")
    return {"num": m.num_embeddings, "dim": m.embedding_dim, "padding_idx": m.padding_idx}


def _rnn(m: nn.RNNBase) -> dict:
    spec = {"input": m.input_size, "hidden": m.hidden_size, "layers": m.num_layers, "bias": m.bias,
            "batch_first": m.batch_first, "dropout": m.dropout, "bidirectional": m.bidirectional}
    if isinstance(m, nn.LSTM) and m.proj_size:
        spec["proj"] = m.proj_size
    if type(m) is nn.RNN:
        spec["nonlinearity"] = m.nonlinearity
    return spec


def _build_rnn(cls: type[nn.RNNBase]) -> Callable[[dict], nn.Module]:
    def build(s: dict) -> nn.Module:
        layers = s["layers"]
        if type(layers) is not int or not 1 <= layers <= MAX_RNN_LAYERS:
            raise SlimFormatError(f"{cls.__name__} spec: 'layers' must be an integer in 1..{MAX_RNN_LAYERS}")
        extra: dict[str, Any] = {}
        if cls is nn.LSTM and s.get("proj"):
            extra["proj_size"] = s["proj"]
        if cls is nn.RNN:
            extra["nonlinearity"] = s.get("nonlinearity", "tanh")
        return cls(s["input"], s["hidden"], layers, bias=s["bias"], batch_first=s["batch_first"],
                   dropout=s["dropout"], bidirectional=s["bidirectional"], **extra)
    return build


def _js(value: Any) -> Any:
    """Tuples as lists, as they come back from JSON."""
    return [_js(v) for v in value] if isinstance(value, tuple | list) else value


def _tup(value: Any) -> Any:
    """Lists from JSON as the tuples torch layers hold."""
    return tuple(_tup(v) for v in value) if isinstance(value, list) else value


def _pool(m: nn.Module) -> dict:
    spec = {"kernel": _js(m.kernel_size), "stride": _js(m.stride), "padding": _js(m.padding), "ceil": m.ceil_mode}
    if isinstance(m, nn.MaxPool1d | nn.MaxPool2d):
        spec.update(dilation=_js(m.dilation), indices=m.return_indices)
    else:
        spec["count_pad"] = m.count_include_pad
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
            spec["divisor"] = m.divisor_override
    return spec


def _build_pool(cls: type[nn.Module]) -> Callable[[dict], nn.Module]:
    def build(s: dict) -> nn.Module:
        kernel, stride, padding = _tup(s["kernel"]), _tup(s["stride"]), _tup(s["padding"])
        if cls in (nn.MaxPool1d, nn.MaxPool2d):
            return cls(kernel, stride, padding, _tup(s["dilation"]), s["indices"], s["ceil"])
        extra = {"divisor_override": s["divisor"]} if "divisor" in s else {}
        return cls(kernel, stride, padding, s["ceil"], s["count_pad"], **extra)
    return build


def _adaptive(cls: type[nn.Module]) -> tuple:
    def describe(m: nn.Module) -> dict:
        if getattr(m, "return_indices", False):
            raise SlimError(f"cannot record a {cls.__name__} with return_indices")
        return {"size": _js(m.output_size)}

    def build(s: dict) -> nn.Module:
        size = _tup(s["size"])
        sizes = size if isinstance(size, tuple) else (size,)
        if not sizes or any(v is not None and (type(v) is not int or not 1 <= v <= MAX_POOL_OUT) for v in sizes):
            raise SlimFormatError(f"{cls.__name__} spec: output size {str(size)[:40]} must be ints in "
                                  f"1..{MAX_POOL_OUT} (or null)")
        return cls(size)
    return cls, describe, build


def _no_args(cls: type[nn.Module]) -> tuple[type[nn.Module], Callable[[Any], dict], Callable[[dict], nn.Module]]:
    return cls, lambda m: {}, lambda s: cls()


def _one(cls: type[nn.Module], attr: str, key: str) -> tuple:
    return cls, lambda m: {key: getattr(m, attr)}, lambda s: cls(s[key])


def _dropout(cls: type[nn.Module]) -> tuple:
    return cls, lambda m: {"p": m.p}, lambda s: cls(s["p"])


Entry = tuple[type[nn.Module], Callable[[Any], dict], Callable[[dict], nn.Module]]

# spec "type" -> (class, describe(module) -> dict, build(dict) -> module); classes match exactly
PLAIN: dict[str, Entry] = {
    "Linear": (nn.Linear, _linear, lambda s: nn.Linear(s["in"], s["out"], bias=s["bias"])),
    "Conv1d": (nn.Conv1d, _conv, _build_conv(nn.Conv1d)),
    "Conv2d": (nn.Conv2d, _conv, _build_conv(nn.Conv2d)),
    "BatchNorm1d": (nn.BatchNorm1d, _bn, _build_bn(nn.BatchNorm1d)),
    "BatchNorm2d": (nn.BatchNorm2d, _bn, _build_bn(nn.BatchNorm2d)),
    "LayerNorm": (nn.LayerNorm, lambda m: {"shape": list(m.normalized_shape), "eps": m.eps,
                                           "affine": m.elementwise_affine, "bias": m.bias is not None},
                  lambda s: nn.LayerNorm(s["shape"], s["eps"], s["affine"], bias=s["bias"])),
    "GroupNorm": (nn.GroupNorm, lambda m: {"groups": m.num_groups, "channels": m.num_channels, "eps": m.eps,
                                           "affine": m.affine},
                  lambda s: nn.GroupNorm(s["groups"], s["channels"], s["eps"], s["affine"])),
    "Embedding": (nn.Embedding, _embedding,
                  lambda s: nn.Embedding(s["num"], s["dim"], padding_idx=s["padding_idx"])),
    "GRU": (nn.GRU, _rnn, _build_rnn(nn.GRU)),
    "LSTM": (nn.LSTM, _rnn, _build_rnn(nn.LSTM)),
    "RNN": (nn.RNN, _rnn, _build_rnn(nn.RNN)),
    "Identity": _no_args(nn.Identity),
    "ReLU": _no_args(nn.ReLU),
    "ReLU6": _no_args(nn.ReLU6),
    "SiLU": _no_args(nn.SiLU),
    "Mish": _no_args(nn.Mish),
    "Tanh": _no_args(nn.Tanh),
    "Sigmoid": _no_args(nn.Sigmoid),
    "Hardswish": _no_args(nn.Hardswish),
    "Hardsigmoid": _no_args(nn.Hardsigmoid),
    "Softsign": _no_args(nn.Softsign),
    "GELU": _one(nn.GELU, "approximate", "approximate"),
    "LeakyReLU": _one(nn.LeakyReLU, "negative_slope", "slope"),
    "ELU": _one(nn.ELU, "alpha", "alpha"),
    "Softmax": _one(nn.Softmax, "dim", "dim"),
    "LogSoftmax": _one(nn.LogSoftmax, "dim", "dim"),
    "Softplus": (nn.Softplus, lambda m: {"beta": m.beta, "threshold": m.threshold},
                 lambda s: nn.Softplus(s["beta"], s["threshold"])),
    "Hardtanh": (nn.Hardtanh, lambda m: {"min": m.min_val, "max": m.max_val},
                 lambda s: nn.Hardtanh(s["min"], s["max"])),
    "PReLU": (nn.PReLU, lambda m: {"num": m.num_parameters}, lambda s: nn.PReLU(s["num"])),
    "Dropout": _dropout(nn.Dropout),
    "Dropout1d": _dropout(nn.Dropout1d),
    "Dropout2d": _dropout(nn.Dropout2d),
    "MaxPool1d": (nn.MaxPool1d, _pool, _build_pool(nn.MaxPool1d)),
    "MaxPool2d": (nn.MaxPool2d, _pool, _build_pool(nn.MaxPool2d)),
    "AvgPool1d": (nn.AvgPool1d, _pool, _build_pool(nn.AvgPool1d)),
    "AvgPool2d": (nn.AvgPool2d, _pool, _build_pool(nn.AvgPool2d)),
    "AdaptiveAvgPool1d": _adaptive(nn.AdaptiveAvgPool1d),
    "AdaptiveAvgPool2d": _adaptive(nn.AdaptiveAvgPool2d),
    "AdaptiveMaxPool1d": _adaptive(nn.AdaptiveMaxPool1d),
    "AdaptiveMaxPool2d": _adaptive(nn.AdaptiveMaxPool2d),
    "Flatten": (nn.Flatten, lambda m: {"start": m.start_dim, "end": m.end_dim},
                lambda s: nn.Flatten(s["start"], s["end"])),
    "Unflatten": (nn.Unflatten, lambda m: {"dim": m.dim, "sizes": list(m.unflattened_size)},
                  lambda s: nn.Unflatten(s["dim"], _tup(s["sizes"]))),
}
