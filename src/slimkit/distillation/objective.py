"""The distillation objective: run teacher and student on a batch and weigh the losses.

Response: KD on logits (a tensor output), or cosine between mean-pooled embeddings (a model
whose output has `last_hidden_state`). Features: hints between named modules, through a learned
`Projection` where the widths differ. Attention: MiniLM-style attention-distribution and
value-relation transfer between paired transformer layers (captured from their query, key and
value projections by forward hooks, so any attention implementation works).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Batch
from slimkit.distillation.losses import (
    Projection,
    attention_loss,
    feature_loss,
    kd_loss,
    relation,
    value_relation_loss,
)


@dataclass(frozen=True)
class Weights:
    temperature: float = 4.0
    alpha: float = 0.9
    response: float = 1.0
    hidden: float = 0.0
    hidden_kind: str = "mse"
    attention: float = 0.0
    heads: int = 12
    mixup: float = 0.0  # Beta(a, a) mixing of float inputs within a batch; 0 = off
    bf16: bool = False  # run teacher and student forwards under bfloat16 autocast (losses in fp32)
    tokens: float = 0.0  # token-level loss (hidden_kind) between the last-layer states of every real token
    cached: bool = False  # a batch's target holds the teacher's last-layer token states (teacher_cache)


def mix_inputs(inputs: Batch, target: torch.Tensor | None, alpha: float
               ) -> tuple[Batch, torch.Tensor | None, torch.Tensor | None, float]:
    """Mixup (Zhang et al. 2018) of a batch's float inputs with a shuffled copy, drawn from the
    global torch RNG (seeded by the loop): (mixed inputs, target, shuffled target, lambda).
    The teacher labels the mixed point itself; hard labels are mixed with the same lambda."""
    if alpha <= 0:
        return inputs, target, None, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    n = len(next(iter(inputs.values())))
    perm = torch.randperm(n)
    mixed = {k: lam * v + (1 - lam) * v[perm] if v.is_floating_point() else v for k, v in inputs.items()}
    return mixed, target, None if target is None else target[perm], lam


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[return-value]


@contextmanager
def capture(model: nn.Module, names: Sequence[str]):
    """Record the outputs of the named submodules during forward passes in the block."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in dict.fromkeys(names):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SlimError(f"{type(model).__name__} has no module named {name!r} to distill from") from None
        handles.append(module.register_forward_hook(
            lambda _m, _i, out, name=name: store.__setitem__(name, _first(out))))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def response(output: object, inputs: Batch) -> tuple[torch.Tensor, bool]:
    """(tensor to match, is_logits), fp32: logits as they are, token states mean-pooled."""
    if isinstance(output, torch.Tensor):
        return output.float(), True
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, (tuple, list)) and output:
        hidden = output[0]
    if not isinstance(hidden, torch.Tensor):
        raise SlimError(f"cannot distill from a model output of type {type(output).__name__}")
    return pool(hidden, inputs.get("attention_mask")), False


def pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the token states over real tokens, in fp32 (also under bf16 autocast)."""
    hidden = hidden.float()
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


@dataclass
class Objective:
    """Callable `(student, inputs, target) -> loss`; `projections` are trained with the student."""

    teacher: nn.Module
    weights: Weights
    hints: list[tuple[str, str]] = field(default_factory=list)      # (student module, teacher module)
    attention: list[tuple[str, str]] = field(default_factory=list)  # (student attn, teacher attn)
    projections: nn.ModuleDict = field(default_factory=nn.ModuleDict)

    def _names(self, side: int) -> list[str]:
        names = [h[side] for h in self.hints]
        for pair in self.attention:
            names += [f"{pair[side]}.{p}" for p in ("query", "key", "value")]
        return names

    def teacher_outputs(self, inputs: Batch) -> tuple[object, dict[str, torch.Tensor]]:
        with torch.no_grad(), capture(self.teacher, self._names(1)) as store:
            out = self.teacher(**inputs)
        return out, dict(store)

    def prepare(self, student: nn.Module, inputs: Batch) -> None:
        """Check on one batch that student and teacher can be compared; create projections."""
        t_out, t_store = self.teacher_outputs(inputs)
        with torch.no_grad(), capture(student, self._names(0)) as s_store:
            s_out = student(**inputs)
        t_resp, _ = response(t_out, inputs)
        s_resp, _ = response(s_out, inputs)
        if t_resp.shape != s_resp.shape:
            raise SlimError(f"student outputs {tuple(s_resp.shape[1:])} per example but the teacher "
                            f"{tuple(t_resp.shape[1:])}: they cannot be compared without a projection")
        for s_name, t_name in self.hints:
            s_dim, t_dim = s_store[s_name].shape[-1], t_store[t_name].shape[-1]
            if s_dim != t_dim:
                self.projections[_key(s_name)] = Projection(s_dim, t_dim)

    def __call__(self, student: nn.Module, inputs: Batch, target: torch.Tensor | None) -> torch.Tensor:
        w = self.weights
        if w.cached:
            return self._from_states(student, inputs, target)
        inputs, target, other, lam = mix_inputs(inputs, target, w.mixup)
        with _autocast(student, w.bf16):
            t_out, t_store = self.teacher_outputs(inputs)
            with capture(student, self._names(0)) as s_store:
                s_out = student(**inputs)
        t_resp, is_logits = response(t_out, inputs)
        s_resp, _ = response(s_out, inputs)
        if w.bf16:
            t_store = {k: v.float() for k, v in t_store.items()}
            s_store = {k: v.float() for k, v in s_store.items()}
        if is_logits and other is not None:
            loss = w.response * (lam * kd_loss(s_resp, t_resp, target, w.temperature, w.alpha)
                                 + (1 - lam) * kd_loss(s_resp, t_resp, other, w.temperature, w.alpha))
        elif is_logits:
            loss = w.response * kd_loss(s_resp, t_resp, target, w.temperature, w.alpha)
        else:
            loss = w.response * feature_loss(s_resp, t_resp, "cosine")
        mask = inputs.get("attention_mask")
        if w.tokens and not is_logits:
            loss = loss + w.tokens * feature_loss(_states(s_out).float(), _states(t_out).float(),
                                                  w.hidden_kind, None, mask)
        for s_name, t_name in self.hints:
            proj = self.projections[_key(s_name)] if _key(s_name) in self.projections else None
            loss = loss + w.hidden * feature_loss(s_store[s_name], t_store[t_name], w.hidden_kind,
                                                  proj, mask)
        for s_name, t_name in self.attention:
            q_s, k_s, v_s = (s_store[f"{s_name}.{p}"] for p in ("query", "key", "value"))
            q_t, k_t, v_t = (t_store[f"{t_name}.{p}"] for p in ("query", "key", "value"))
            probs_s = _attention_probs(q_s, k_s, w.heads, mask)
            probs_t = _attention_probs(q_t, k_t, w.heads, mask)
            loss = loss + w.attention * (attention_loss(probs_s, probs_t, mask)
                                         + value_relation_loss(v_s, v_t, w.heads, mask))
        return loss

    def _from_states(self, student: nn.Module, inputs: Batch, target: torch.Tensor | None) -> torch.Tensor:
        """The loss against the teacher's cached last-layer token states (`target`, zero-padded):
        cosine of the mean-pooled embeddings plus the token-level term."""
        if target is None or target.ndim != 3:
            raise SlimError("cached teacher outputs are missing from the batch (expected token states)")
        w = self.weights
        with _autocast(student, w.bf16):
            s_out = student(**inputs)
        s_states = _states(s_out).float()
        mask = inputs.get("attention_mask")
        loss = w.response * feature_loss(pool(s_states, mask), pool(target, mask), "cosine")
        if w.tokens:
            loss = loss + w.tokens * feature_loss(s_states, target, w.hidden_kind, None, mask)
        return loss


def _states(output: object) -> torch.Tensor:
    """The token states `(batch, tokens, width)` of an encoder's output."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, (tuple, list)) and output:
        hidden = output[0]
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
        raise SlimError(f"a token-level loss needs token states; the model returned {type(output).__name__}")
    return hidden


def _autocast(model: nn.Module, enabled: bool):
    """bfloat16 autocast on the model's device (matmuls in bf16, fp32 weights and optimizer)."""
    device = next((p.device.type for p in model.parameters()), "cpu")
    return torch.autocast(device, dtype=torch.bfloat16, enabled=enabled)


def _key(name: str) -> str:
    return name.replace(".", "__")


def _attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int,
                     mask: torch.Tensor | None) -> torch.Tensor:
    b, n, dim = q.shape
    qh = q.view(b, n, heads, dim // heads).transpose(1, 2)
    kh = k.view(b, n, heads, dim // heads).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / (dim // heads) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(-1)


__all__ = ["Objective", "Weights", "capture", "relation", "response"]
