"""Pure mask math, schedules, and masks held during training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.pruning.masks import MaskSet, magnitude_masks, nm_mask, sparsity_of
from slimkit.pruning.schedules import event_iterations, polynomial_schedule


def test_layer_masks_prune_exact_fraction_of_smallest():
    w = torch.arange(1.0, 101.0).reshape(10, 10)
    keep = magnitude_masks({"a": w}, 0.3)["a"]
    assert int((~keep).sum()) == 30
    assert bool((w[~keep] < w[keep].min()).all())


def test_global_masks_rank_across_layers():
    small, large = torch.full((10,), 0.1), torch.full((10,), 5.0)
    masks = magnitude_masks({"s": small, "l": large}, 0.5, scope="global")
    assert not masks["s"].any() and masks["l"].all()
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks({"s": small}, 0.5, scope="row")


def test_nm_mask_keeps_n_of_every_m():
    w = torch.randn(8, 16)
    keep = nm_mask(w, 2, 4)
    assert keep.reshape(-1, 4).sum(1).eq(2).all()
    kept = (w.abs() * keep).reshape(-1, 4)
    dropped = (w.abs() * ~keep).reshape(-1, 4)
    assert (kept.max(1).values >= dropped.max(1).values).all()
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.randn(3, 6))


def test_polynomial_schedule_is_increasing_to_target():
    s = polynomial_schedule(0.92, 10)
    assert s[-1] == pytest.approx(0.92) and all(a < b for a, b in zip(s, s[1:], strict=False))
    assert s[0] > 0.92 / 10  # prunes fast at first (cubic)
    assert event_iterations(1000, 5, 0.7) == [0, 175, 350, 524, 699]


def test_maskset_keeps_pruned_weights_zero_while_training():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    held = MaskSet()
    held.update(magnitude_masks({"l": lin.weight}, 0.5), {"l": lin})
    pruned = lin.weight == 0
    opt = torch.optim.Adam(lin.parameters(), lr=0.1, weight_decay=0.1)
    with held:
        for _ in range(5):
            opt.zero_grad()
            lin(torch.randn(16, 8)).pow(2).sum().backward()
            assert lin.weight.grad[pruned].abs().sum() == 0
            opt.step()
            held.apply()
    assert (lin.weight[pruned] == 0).all() and sparsity_of(lin.weight) == 0.5
    assert held.sparsity() == {"l": 0.5}
