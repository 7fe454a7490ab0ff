"""Distillation losses: pure tensor math, no module walking.

- `kd_loss`: response-based KD (Hinton et al. 2015), temperature-softened KL x T^2 plus
  hard-label cross-entropy, mixed by `alpha`;
- `feature_loss`: FitNets-style hints, MSE or cosine between hidden states, through a learned
  `Projection` where the widths differ;
- `attention_loss` / `value_relation_loss`: MiniLM-style transfer of self-attention
  distributions and value-value relations.

>>> loss = kd_loss(student(x), teacher(x), y, temperature=4.0, alpha=0.9)
>>> hint = feature_loss(s_hidden, t_hidden, kind="cosine", projection=proj)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.train.supervised import class_loss


def _check_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"student and teacher {what} have different shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}; give the student matching outputs or a projection")


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2, batch mean.

    >>> soft_kl(torch.zeros(2, 3), torch.zeros(2, 3)).item()
    0.0
    """
    _check_same(student_logits, teacher_logits, "logits")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """`alpha * T^2 * KL(soft teacher || soft student) + (1 - alpha) * CE(student, target)`.

    With no `target` (unlabelled data) only the soft term is used, whatever `alpha`.

    >>> kd_loss(torch.randn(8, 10), torch.randn(8, 10), torch.randint(10, (8,))).ndim
    0
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = soft_kl(student_logits, teacher_logits, temperature)
    if target is None or alpha == 1.0:
        return soft
    hard = class_loss(student_logits, target)
    return alpha * soft + (1.0 - alpha) * hard


class Projection(nn.Linear):
    """Learned map from the student's width to the teacher's (FitNets regressor); trained with
    the student, dropped afterwards."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__(student_dim, teacher_dim, bias=False)
        nn.init.normal_(self.weight, std=student_dim ** -0.5)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse",
                 projection: nn.Module | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hint loss between hidden states `(..., dim)`: "mse" or "cosine" (1 - cos, mean).

    `projection` maps the student's last dimension to the teacher's; `mask` `(...)` (1 keep,
    0 ignore, e.g. padding tokens) restricts the mean.
    """
    if projection is not None:
        student = projection(student)
    _check_same(student, teacher, "features")
    teacher = teacher.detach()
    if kind == "mse":
        per = (student - teacher).pow(2).mean(-1)
    elif kind == "cosine":
        per = 1.0 - F.cosine_similarity(student, teacher, dim=-1)
    else:
        raise ValueError(f"unknown feature loss {kind!r} (known: mse, cosine)")
    return _masked_mean(per, mask)


def _masked_mean(per: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per.mean()
    mask = mask.to(per.dtype).expand_as(per)
    return (per * mask).sum() / mask.sum().clamp_min(1.0)


def attention_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                   mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """KL(teacher || student) between attention distributions `(batch, heads, q, k)`, averaged
    over heads and (unmasked) query positions (MiniLM, Wang et al. 2020).

    `mask` `(batch, q)` marks real query tokens; padded keys already have zero probability.
    """
    _check_same(student_probs, teacher_probs, "attention maps")
    t = teacher_probs.detach()
    per = (t * (torch.log(t + eps) - torch.log(student_probs + eps))).sum(-1).mean(1)  # (batch, q)
    return _masked_mean(per, mask)


def relation(x: torch.Tensor, heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product self-relation softmax(x x^T / sqrt(d)) per head: `(batch, heads, q, q)`
    from `(batch, q, dim)`; masked keys (mask 0) get zero probability."""
    b, q, dim = x.shape
    if dim % heads:
        raise ValueError(f"width {dim} is not divisible by {heads} relation heads")
    xh = x.view(b, q, heads, dim // heads).transpose(1, 2)
    scores = xh @ xh.transpose(-1, -2) / (dim // heads) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(-1)


def value_relation_loss(student_values: torch.Tensor, teacher_values: torch.Tensor, heads: int,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM's value-relation transfer: KL between the teachers' and the student's
    value-value relations (`relation`), which need not share the value width."""
    t = relation(teacher_values.detach(), heads, mask)
    s = relation(student_values, heads, mask)
    return attention_loss(s, t, mask)
