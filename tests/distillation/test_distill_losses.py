"""The loss math: KD, hints with a projection, attention transfer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimkit.distillation.losses import (
    Projection,
    attention_loss,
    feature_loss,
    kd_loss,
    relation,
    soft_kl,
    value_relation_loss,
)


def test_soft_kl_is_zero_for_equal_logits_and_scales_with_t_squared():
    logits = torch.randn(16, 10)
    assert soft_kl(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(16, 10), torch.randn(16, 10)
    manual = F.kl_div(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1), reduction="batchmean") * 9
    assert soft_kl(s, t, 3.0).item() == pytest.approx(manual.item(), rel=1e-5)


def test_kd_loss_mixes_soft_and_hard_terms():
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(10, (8,))
    ce = F.cross_entropy(s, y)
    assert kd_loss(s, t, y, 4.0, alpha=0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    assert kd_loss(s, t, y, 4.0, alpha=1.0).item() == pytest.approx(soft_kl(s, t, 4.0).item(), rel=1e-6)
    mixed = 0.7 * soft_kl(s, t, 4.0) + 0.3 * ce
    assert kd_loss(s, t, y, 4.0, alpha=0.7).item() == pytest.approx(mixed.item(), rel=1e-6)
    assert kd_loss(s, t, None, 4.0, alpha=0.2).item() == pytest.approx(soft_kl(s, t, 4.0).item())


def test_kd_gradient_reaches_only_the_student():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10, requires_grad=True)
    kd_loss(s, t, torch.randint(10, (4,))).backward()
    assert s.grad is not None and t.grad is None


def test_incompatible_logits_give_a_one_line_error():
    with pytest.raises(ValueError, match="different shapes") as err:
        kd_loss(torch.randn(4, 5), torch.randn(4, 10), None)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(torch.randn(4, 10), torch.randn(4, 10), None, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        soft_kl(torch.randn(4, 10), torch.randn(4, 10), 0.0)


def test_feature_loss_kinds_projection_and_mask():
    t = torch.randn(2, 5, 8)
    assert feature_loss(t.clone(), t, "mse").item() == pytest.approx(0.0)
    assert feature_loss(2 * t, t, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="projection"):
        feature_loss(torch.randn(2, 5, 4), t)
    proj = Projection(4, 8)
    loss = feature_loss(torch.randn(2, 5, 4), t, "mse", proj)
    loss.backward()
    assert proj.weight.grad is not None
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    s = t.clone()
    s[:, 2:] += 5.0  # differences only where masked out ...
    s[1, 1] += 5.0
    assert feature_loss(s, t, "mse", mask=mask).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown feature loss"):
        feature_loss(t, t, "l1")


def test_attention_and_value_relation_losses():
    probs = torch.softmax(torch.randn(2, 4, 6, 6), -1)
    assert attention_loss(probs, probs.clone()).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.softmax(torch.randn(2, 4, 6, 6), -1)
    assert attention_loss(other, probs).item() > 0
    v_t, v_s = torch.randn(2, 6, 16), torch.randn(2, 6, 8, requires_grad=True)  # widths may differ
    loss = value_relation_loss(v_s, v_t, heads=4)
    loss.backward()
    assert loss.item() > 0 and v_s.grad is not None
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    rel = relation(v_t, 4, mask)
    assert torch.allclose(rel.sum(-1), torch.ones(2, 4, 6))
    assert rel[0, :, :, 3:].abs().max().item() == 0.0
    with pytest.raises(ValueError, match="divisible"):
        relation(torch.randn(2, 6, 10), 4)


def test_mixup_mixes_float_inputs_only():
    from slimkit.distillation.objective import mix_inputs

    inputs = {"x": torch.arange(12.0).view(4, 3), "ids": torch.arange(4)}
    y = torch.tensor([0, 1, 2, 3])
    same = mix_inputs(inputs, y, 0.0)
    assert same[0] is inputs and same[2] is None and same[3] == 1.0
    torch.manual_seed(0)
    mixed, target, other, lam = mix_inputs(inputs, y, 0.4)
    assert torch.equal(mixed["ids"], inputs["ids"]) and torch.equal(target, y)
    assert 0.0 <= lam <= 1.0 and sorted(other.tolist()) == [0, 1, 2, 3]
    perm = other  # the labels were permuted like the rows
    assert torch.allclose(mixed["x"], lam * inputs["x"] + (1 - lam) * inputs["x"][perm])
