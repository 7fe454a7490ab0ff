"""Quantization configs and their handlers (the math is in `math.py` and `gptq.py`).

>>> import slimkit as sk
>>> from slimkit.quantization.api import Int8, WeightOnly
>>> sk.quantize_(model, Int8Config())                                   # int8 linears + embeddings
>>> sk.quantize_(model, WeightOnlyConfig(bits=4, group_size=32), data=task)
>>> sk.quantize_(model, GPTQConfig(bits=4, group_size=128), data=task)  # needs calibration data

Mixed precision: every config takes `targets` / `ignore` (exact names or `"re:"` regexes) and
`filter_fn`; list several configs in a recipe, each with its own targets.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn
from slimkit.core.task import Task
from slimkit.dist.calibration import hessian_stages
from slimkit.nn.bert_fast import install_fast_layers
from slimkit.nn.quant_embedding import QuantEmbedding
from slimkit.nn.quant_linear import SCALE_DTYPES, Int8Linear
from slimkit.nn.quant_math import Granularity, check_bits, check_calibration, float16_scales_lose, rtn_quantize
from slimkit.quantization.conv import int8_conv, quantized_layer, weight_matrix
from slimkit.quantization.convert import convert, log, low_precision_blockers, note_skipped, select_targets
from slimkit.quantization.gptq import gptq_quantize, hessian_value
from slimkit.quantization.groups import fallback, layout, warn_fallbacks


class ScaleDtype(str, Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"


class ComputeDtype(str, Enum):
    """The dtype an int8 model computes its activations in (see `Int8.compute_dtype`)."""

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


INT8_CONV = "int8 per-channel weights (conv: weight-only, fp32 activations)"


def _int8_linear(_name: str, linear: nn.Module) -> nn.Module:
    return Int8Linear.from_linear(linear)


@register_method
class Int8Config(MethodConfig):
    """Per-channel symmetric int8 weights, dynamic per-token int8 activations (`torch._int_mm`),
    and row-wise int8 embeddings. No calibration needed.

    Conv2d layers (`conv`, default on) get int8 per-output-channel weights too, run weight-only:
    decoded once to a cached float weight, fp32 convolution (`slimkit.nn.quant_conv` says why).

    `compute_dtype` chooses the runtime, never the file (same codes and scales either way):
    "float32" runs the integer path above with fp32 activations; "bfloat16" runs LayerNorm,
    attention and GELU in bf16 and each int8 Linear as a bf16 matmul on its weight dequantized
    once (W8A16, bf16 outputs); "auto" (default) is bfloat16 on CPUs with AMX / AVX-512 BF16 and
    float32 elsewhere, decided when the model runs (so also at load), and stays float32 when a
    module that cannot take bf16 inputs remains (or, with `data`, a trial forward fails).
    """

    method: ClassVar[str] = "int8"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "int8 weights + dynamic int8 activations (integer matmul), int8 embeddings"
    linear: bool = True
    embeddings: bool = True
    conv: bool = True
    compute_dtype: ComputeDtype = ComputeDtype.AUTO
    encodes: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Embedding, nn.Conv2d)
    allow_nonfinite: bool = False   # keep layers holding NaN/Inf float (default: refuse, naming the tensor)

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> Int8Config:
        """No options to draw: int8 weights and activations as they are."""
        return cls()

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        handled = ((nn.Linear,) if self.linear else ()) + ((nn.Embedding,) if self.embeddings else ()) \
            + ((nn.Conv2d,) if self.conv else ())
        picked, skipped = select_targets(model, self.targets, self.ignore, filter_fn, handled)
        linears = [(n, m) for n, m in picked if type(m) is nn.Linear]
        embeddings = [(n, m) for n, m in picked if type(m) is nn.Embedding]
        convs = [(n, m) for n, m in picked if type(m) is nn.Conv2d]
        convert(model, linears, _int8_linear, "int8 (w8a8 dynamic)", skipped)
        convert(model, convs, lambda _n, m: int8_conv(m), INT8_CONV)
        convert(model, embeddings, _embedding_factory(8, True, None, False), "int8 embedding")
        set_compute_dtype(model, [model.get_submodule(n) for n, _ in embeddings], self.compute_dtype, task)
        return model


def set_compute_dtype(model: nn.Module, entries: list[nn.Module], mode: ComputeDtype,
                      task: Task | None = None) -> str:
    """Give the quantized embeddings in `entries` (where activations start) the compute dtype
    `mode`; "auto" falls back to "float32" when `low_precision_blockers` finds a module that
    cannot take bf16 inputs, or when a bf16 trial forward on `task`'s example inputs fails.
    Returns the mode set.

    >>> set_compute_dtype(model, [model.embeddings.word_embeddings], ComputeDtype.AUTO, task)
    'auto'
    """

    install_fast_layers(model)  # bf16 runtime of int8 BERT-style layers (same state dict), before the trial
    mode = ComputeDtype(mode).value
    if not entries:
        if mode == "bfloat16":
            log.warning("compute_dtype=bfloat16 acts through quantized embeddings and there are none: "
                        "the model computes in its input dtype")
        return mode
    if mode == "auto":
        blockers = low_precision_blockers(model)
        if blockers:
            log.info("compute_dtype auto -> float32: %s take no bf16 inputs",
                     ", ".join(f"{n} ({t})" for n, t in list(blockers.items())[:3]))
            mode = "float32"
        elif task is not None and not _bf16_trial(model, entries, task):
            mode = "float32"
    for module in entries:
        module.compute_dtype = mode
    return mode


def _bf16_trial(model: nn.Module, entries: list[nn.Module], task: Task) -> bool:
    """Whether one forward pass on 2 example inputs runs with bf16 activations."""
    import torch

    flags = {m: m.training for m in model.modules()}
    for module in entries:
        module.compute_dtype = "bfloat16"
    try:
        with torch.inference_mode():
            task.forward(model.eval(), task.example_inputs(2))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means: keep the fp32 runtime
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        log.warning("compute_dtype auto -> float32: a bf16 forward failed (%s)", first)
        return False
    finally:
        for module, training in flags.items():
            module.training = training
        for module in model.modules():
            module.__dict__.pop("_low_cache", None)  # the trial's bf16 weights: built again when used


def _embedding_factory(bits: int, symmetric: bool, group_size: int | None, mse: bool,
                       scale_dtype: str = "float32"):
    """Embeddings at `bits`, per row or in groups of `group_size` (each table's own fallback:
    `slimkit.quantization.groups`)."""

    def make(name: str, emb: nn.Module) -> nn.Module:
        gran, size = layout(emb.embedding_dim, Granularity.GROUP, group_size)
        return QuantEmbedding.from_embedding(emb, bits, symmetric, gran, size, mse, scale_dtype)

    return make


class _WeightQuant(MethodConfig):
    """Options shared by the weight-only methods (round-to-nearest and GPTQ)."""

    bits: int = 4
    symmetric: bool = True
    granularity: Granularity = Granularity.GROUP
    group_size: int = 128
    scale_dtype: ScaleDtype = ScaleDtype.FLOAT16
    embedding_bits: int | None = None
    embedding_group_size: int | None = None
    encodes: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear, nn.Conv2d, nn.Embedding)
    allow_nonfinite: bool = False   # keep layers holding NaN/Inf float (default: refuse, naming the tensor)

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        return check_bits(v)

    @field_validator("embedding_bits")
    @classmethod
    def _embedding_bits(cls, v: int | None) -> int | None:
        return None if v is None else check_bits(v, "embedding_bits")

    @field_validator("group_size", "embedding_group_size")
    @classmethod
    def _group(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be a positive integer, got {v}")
        return v

    @model_validator(mode="after")
    def _symmetric_bits(self):
        if self.symmetric and self.bits < 2:
            raise ValueError("bits=1 needs symmetric=False")
        return self

    def _select(self, model: nn.Module, filter_fn: FilterFn | None):
        """(Linear and Conv2d layers, embeddings, skipped) this config quantizes."""
        handled = (nn.Linear, nn.Conv2d) + ((nn.Embedding,) if self.embedding_bits else ())
        picked, skipped = select_targets(model, self.targets, self.ignore, filter_fn, handled)
        linears = [(n, m) for n, m in picked if type(m) in (nn.Linear, nn.Conv2d)]
        embeddings = [(n, m) for n, m in picked if type(m) is nn.Embedding]
        return linears, embeddings, skipped

    def _warn_fallbacks(self, linears: list, embeddings: list) -> None:
        """One warning line each for the layers and the embeddings whose group falls back (see
        `slimkit.quantization.groups`), said before any work."""
        if self.granularity is Granularity.GROUP:
            warn_fallbacks(self.method, self.group_size, [(n, weight_matrix(m).shape[1]) for n, m in linears])
        if self.embedding_bits:
            warn_fallbacks(self.method, self.embedding_group_size, [(n, m.embedding_dim) for n, m in embeddings],
                           "embedding_group_size")

    def _quantize_embeddings(self, model: nn.Module, embeddings: list) -> None:
        if self.embedding_bits:
            make = _embedding_factory(self.embedding_bits, True, self.embedding_group_size, True,
                                      self.scale_dtype.value)
            for name, m in embeddings:
                note = fallback(m.embedding_dim, Granularity.GROUP, self.embedding_group_size)
                convert(model, [(name, m)], make, f"{self.embedding_bits}-bit embedding{note}")

    def _label(self, name: str) -> str:
        where = self.granularity.value if self.granularity is not Granularity.GROUP else f"g{self.group_size}"
        return f"{name} w{self.bits} {where}"

    def _layout(self, layer: nn.Module) -> tuple[Granularity, int]:
        """(granularity, group size) for `layer`: the config's, or, where its groups do not divide
        the layer's inputs (a conv's in*kh*kw), the fallback of `slimkit.quantization.groups`."""

        return layout(weight_matrix(layer).shape[1], self.granularity, self.group_size)

    def _convert(self, model: nn.Module, layers: list, make, how: str) -> None:
        """`convert` the layers, each labelled with its own group where it fell back
        (e.g. 'rtn w4 g128 (g125: groups of 128 do not divide 1000 inputs)')."""

        for name, m in layers:
            note = fallback(weight_matrix(m).shape[1], self.granularity, self.group_size)
            convert(model, [(name, m)], make, how + (" (conv)" if type(m) is nn.Conv2d else "") + note)

    def _scale_dtype(self, layer: nn.Module) -> str:
        """The scale dtype for `layer`: the config's, or float32 where float16 scales would lose
        the layer (weights of subnormal magnitude decoding as zeros, or scales overflowing): when
        the decoded weight's error with float16 scales exceeds 1.5x its error with float32 ones."""

        if self.scale_dtype is not ScaleDtype.FLOAT16:
            return self.scale_dtype.value
        gran, size = self._layout(layer)
        mse = getattr(self, "mse", False)
        if float16_scales_lose(weight_matrix(layer), self.bits, self.symmetric, gran, size, mse):
            log.info("float32 scales for a %s: float16 ones would under- or overflow", type(layer).__name__)
            return ScaleDtype.FLOAT32.value
        return self.scale_dtype.value

    def _rtn(self, layer: nn.Module) -> nn.Module:
        """`layer` (Linear or Conv2d) round-to-nearest quantized and packed."""

        gran, size = self._layout(layer)
        dtype = self._scale_dtype(layer)
        qw = rtn_quantize(weight_matrix(layer), self.bits, self.symmetric, gran, size,
                          getattr(self, "mse", False), SCALE_DTYPES[dtype])
        return quantized_layer(layer, qw, self.symmetric, dtype)


@register_method
class WeightOnlyConfig(_WeightQuant):
    """Round-to-nearest weight-only quantization, 1-8 bits, stored bit-packed.

    `mse=True` picks each group's clipping range by minimizing the rounding error."""

    method: ClassVar[str] = "rtn"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "weight-only round-to-nearest 1-8 bits, bit-packed (group-wise scales)"
    mse: bool = False

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        linears, embeddings, skipped = self._select(model, filter_fn)
        self._warn_fallbacks(linears, embeddings)
        self._convert(model, linears, lambda _n, layer: self._rtn(layer), self._label("rtn"))
        note_skipped(model, skipped)
        self._quantize_embeddings(model, embeddings)
        return model

    @classmethod
    def example(cls) -> WeightOnlyConfig:
        return cls(bits=4, granularity=Granularity.CHANNEL)

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> WeightOnlyConfig:
        """3-8 bits, one scale per output channel (fits any layer width)."""
        return cls(bits=trial.suggest_int("rtn.bits", 3, 8), granularity=Granularity.CHANNEL)


@register_method
class GPTQConfig(_WeightQuant):
    """GPTQ weight-only quantization (arXiv 2210.17323), layer by layer on calibration data.

    Layers the calibration forward never reaches fall back to round-to-nearest (reported)."""

    method: ClassVar[str] = "gptq"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "GPTQ weight-only 1-8 bits with error compensation (needs calibration data)"
    act_order: bool = True
    damp: float = 0.01
    block_size: int = Field(128, ge=1)
    samples: int = Field(128, ge=1)

    @field_validator("damp")
    @classmethod
    def _damp(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"damp must lie in (0, 1), got {v}")
        return v

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        linears, embeddings, skipped = self._select(model, filter_fn)
        if task is None:
            raise SlimError("gptq needs calibration data: pass data=<task> (e.g. the model's zoo task)")
        self._warn_fallbacks(linears, embeddings)
        batches = check_calibration(task.calibration(self.samples), "gptq calibration data")
        # a grouped conv's inputs do not form one Hessian over its weight rows: round-to-nearest
        grouped = [(n, m) for n, m in linears if getattr(m, "groups", 1) > 1]
        by_name = {n: m for n, m in linears if getattr(m, "groups", 1) == 1}
        was_training = model.training
        model.eval()

        def rtn(_name: str, layer: nn.Module) -> nn.Module:
            return self._rtn(layer)

        for stage, hessians in hessian_stages(model, task, batches, list(by_name)):
            def make(name: str, layer: nn.Module, hessians=hessians) -> nn.Module:
                gran, size = self._layout(layer)
                scale_dtype = self._scale_dtype(layer)
                qw = gptq_quantize(weight_matrix(layer), hessian_value(hessians[name]), self.bits, self.symmetric,
                                   gran, size, self.act_order, self.damp, self.block_size, SCALE_DTYPES[scale_dtype])
                return quantized_layer(layer, qw, self.symmetric, scale_dtype)

            self._convert(model, [(n, by_name.pop(n)) for n in stage if n in hessians], make, self._label("gptq"))
        # layers the calibration forward never reached: round-to-nearest, and say so
        self._convert(model, list(by_name.items()), rtn, self._label("rtn") + " (not reached by calibration)")
        self._convert(model, grouped, rtn, self._label("rtn") + " (grouped conv)")
        note_skipped(model, skipped)
        self._quantize_embeddings(model, embeddings)
        model.train(was_training)
        return model

    @classmethod
    def example(cls) -> GPTQConfig:
        return cls(bits=4, granularity=Granularity.CHANNEL, samples=64)

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> GPTQConfig | None:
        """3 or 4 bits, groups of 32-128 (each layer falls back to a group dividing its inputs); needs data."""
        if task is None or not any(type(m) is nn.Linear for m in model.modules()):
            return None
        return cls(bits=trial.suggest_int("gptq.bits", 3, 4), granularity=Granularity.GROUP,
                   group_size=trial.suggest_categorical("gptq.group_size", [32, 64, 128]), samples=64)


# Names before the `<Method>Config` scheme (CHANGELOG.md), kept so existing code runs unchanged.
GPTQ = GPTQConfig
Int8 = Int8Config
WeightOnly = WeightOnlyConfig
