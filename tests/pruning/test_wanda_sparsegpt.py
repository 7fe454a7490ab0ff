"""Wanda and SparseGPT, 50% unstructured and 2:4, on models with activation outliers: closer to the
float model than magnitude pruning at the same sparsity, exactly the stated pattern, saved smaller,
loaded to identical outputs, estimated to the real file's size."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from llm_models import (
    CASES,
    case,
    one_thread,  # noqa: F401  (fixture)
    output_mse,
)
from slimkit.io.sizing import Plan, estimate_stage, file_size
from slimkit.pruning.sparsegpt import sparsegpt_prune, wanda_mask

pytestmark = pytest.mark.usefixtures("one_thread")
PATTERNS = {"50%": {"sparsity": 0.5}, "2:4": {"n": 2, "m": 4}}


def _magnitude(pattern: str):
    if pattern == "2:4":
        return sk.NMPruningConfig(n=2, m=4)
    return sk.MagnitudePruningConfig(sparsity=0.5, epochs=0)


def _check_pattern(model, pattern: str) -> int:
    checked = 0
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear:
            continue
        w = module.weight.detach()
        zeros = w == 0
        if pattern == "2:4":
            assert (zeros.reshape(-1, 4).sum(1) == 2).all(), name
        else:
            assert int(zeros.sum()) == w.numel() // 2, name
        checked += 1
    return checked


@pytest.mark.parametrize("name", ["mlp", "llama"])
@pytest.mark.parametrize("pattern", ["50%", "2:4"])
def test_calibrated_pruning_beats_magnitude_with_the_exact_pattern(name, pattern):
    errors = {}
    for config in (_magnitude(pattern), sk.WandaConfig(samples=32, **PATTERNS[pattern]),
                   sk.SparseGPTConfig(samples=32, **PATTERNS[pattern])):
        model, reference, task = case(name)
        sk.prune_(model, config, data=task)
        errors[config.method] = output_mse(model, reference, task)
        if config.method in ("wanda", "sparsegpt"):
            assert _check_pattern(model, pattern) >= 3
    baseline = errors["nm" if pattern == "2:4" else "magnitude"]
    assert errors["wanda"] < 0.8 * baseline and errors["sparsegpt"] < 0.8 * baseline, errors


@pytest.mark.parametrize("name", ["mlp", "llama"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_saves_smaller_loads_identical_and_estimates_match(name, method, tmp_path):
    model, reference, task = case(name)
    config = sk.make_config(method, n=2, m=4, samples=32)
    plan = Plan.of(reference)
    estimate_stage(plan, config, task)
    sk.prune_(model, config, data=task)
    path = tmp_path / f"{name}.slim"
    size = sk.save(model, path)
    loaded = sk.load(path, model=CASES[name][0](), runtime="torch")
    with torch.no_grad():
        for batch in task.held_out()[:2]:
            assert torch.equal(task.forward(model, batch), task.forward(loaded, batch))
    # half the weights as float16 values plus 2.6 bits of N:M index per 4 weights: ~0.27x of fp32
    assert size < 0.33 * file_size(reference)
    assert abs(plan.total() - size) <= 0.05 * size, (plan.total(), size)


def test_math_keeps_exact_counts_and_compensates():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    x = torch.randn(512, 32)
    x[:, :3] *= 20
    norms = x.norm(dim=0)
    keep = wanda_mask(w, norms, 0.5)
    assert (keep.sum(1) == 16).all() and keep[:, :3].float().mean() > 0.8   # loud channels survive
    h = 2 * x.T @ x / x.shape[0]
    pruned, keep = sparsegpt_prune(w, h, n=2, m=4, block_size=8)
    assert (keep.reshape(-1, 4).sum(1) == 2).all() and torch.equal(pruned == 0, ~keep)
    masked = w * wanda_mask(w, norms, n=2, m=4)
    assert (x @ (pruned - w).T).square().mean() < (x @ (masked - w).T).square().mean()


def test_options_are_checked_in_one_line():
    with pytest.raises(ValueError, match="either sparsity or n and m"):
        sk.WandaConfig(sparsity=0.3, n=2, m=4)
    with pytest.raises(ValueError, match="1 <= n < m"):
        sk.SparseGPTConfig(n=4, m=4)
    with pytest.raises(sk.SlimError, match="wanda needs calibration data"):
        sk.prune_(case("mlp")[0], sk.WandaConfig())
