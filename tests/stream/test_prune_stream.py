"""Streaming global magnitude pruning (one exact threshold over all tensors) and N:M pruning."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.io.artifact import read_manifest
from slimkit.pipeline.recipes import Recipe
from slimkit.pruning.api import MagnitudePruningConfig, NMPruningConfig
from slimkit.pruning.masks import _keep_top, nm_mask
from slimkit.stream import StreamPlan, compress_checkpoint
from slimkit.stream.checkpoint import open_checkpoint
from slimkit.stream.global_cut import GlobalCut
from slimkit.stream.plan import plan_from_recipe


def _selected(tensors: dict, plan: StreamPlan, path) -> list[str]:
    """The pruned tensors, in checkpoint (file) order."""
    with open_checkpoint(path) as ck:
        return [it.name for it in ck.items() if plan.selected(it.name, it.shape, it.is_float)]


@pytest.mark.parametrize("grid", [None, 0.01])   # 0.01: values on a coarse grid, ties across tensors
def test_global_pruning_equals_the_in_memory_masks(tmp_path, tensors, grid):
    tensors = dict(tensors, **{"model.layers.0.mlp.up_proj.weight": tensors["model.layers.0.mlp.up_proj.weight"] * 3})
    if grid is not None:
        tensors = {k: (v.float() / grid).round().mul(grid).to(v.dtype) if v.is_floating_point() else v
                   for k, v in tensors.items()}
    path = tmp_path / "ck.safetensors"
    save_file(tensors, str(path))
    plan = StreamPlan(sparsity=0.7, scope="global")
    report = compress_checkpoint(path, plan, tmp_path / "g.slim", block_bytes=4096)
    back = sk.load_state_dict(tmp_path / "g.slim")
    names = _selected(tensors, plan, path)
    assert len(names) >= 5
    flat = torch.cat([tensors[n].float().abs().reshape(-1) for n in names])
    keep = _keep_top(flat, round(0.7 * flat.numel()))
    got = torch.cat([back[n].reshape(-1) != 0 for n in names])
    assert torch.equal(got, keep & (flat != 0))
    assert int((~got).sum()) >= round(0.7 * flat.numel())
    per_tensor = [float((back[n] == 0).float().mean()) for n in names]
    assert max(per_tensor) - min(per_tensor) > 0.05   # one threshold, not the same fraction per tensor
    for n in names:   # kept weights are stored exactly
        assert torch.equal(back[n][back[n] != 0], tensors[n][back[n] != 0])
    assert report.stored["magnitude 0.7 global"] == len(names)


def test_the_threshold_is_the_exact_kth_value(tmp_path):
    g = torch.Generator().manual_seed(1)
    parts = {f"w{i}": torch.randn(37 + i, 50, generator=g) * (i + 1) for i in range(4)}
    parts["h"] = torch.randn(64, 32, generator=g).to(torch.bfloat16)
    save_file(parts, str(tmp_path / "r.safetensors"))
    flat = torch.cat([t.float().abs().reshape(-1) for t in parts.values()])
    with open_checkpoint(tmp_path / "r.safetensors") as ck:
        for sparsity in (0.013, 0.5, 0.99):
            cut = GlobalCut.fit(ck, ck.items(), sparsity, block_bytes=1000)
            k = round(sparsity * flat.numel())
            assert cut.threshold == float(flat.kthvalue(k).values)
            assert cut.prune == k and cut.ties_left == k - int((flat < cut.threshold).sum())


def test_nm_streams_with_the_compact_index(tmp_path, ckpt, tensors):
    plan = StreamPlan(sparsity=0.5, nm=(2, 4))
    report = compress_checkpoint(ckpt, plan, tmp_path / "nm.slim")
    back = sk.load_state_dict(tmp_path / "nm.slim")
    manifest = read_manifest(tmp_path / "nm.slim")
    names = _selected(tensors, plan, ckpt)
    for n in names:
        w = tensors[n]
        rows = w.reshape(w.shape[0], -1)
        if rows.shape[1] % 4:
            assert torch.equal(back[n], w)
            continue
        keep = nm_mask(rows, 2, 4).reshape(w.shape)
        assert torch.equal(back[n], torch.where(keep, w, torch.zeros((), dtype=w.dtype))), n
        assert int((back[n].reshape(-1, 4) != 0).sum(1).max()) <= 2
        assert manifest.tensors[n].chain[0]["index"] == "nm", n
    assert report.stored["nm 2:4"] >= 5


def test_recipes_map_onto_the_streaming_plan():
    stages = [MagnitudePruningConfig(sparsity=0.8, scope="global")]
    plan = plan_from_recipe(Recipe(name="g", description="", stages=stages))
    assert plan.sparsity == 0.8 and plan.scope == "global"
    plan = plan_from_recipe(Recipe(name="nm", description="", stages=[NMPruningConfig(n=2, m=4)]))
    assert plan.nm == (2, 4) and plan.sparsity == 0.5
    with pytest.raises(SlimError, match="epochs 20; use epochs: 0"):
        plan_from_recipe(Recipe(name="nm", description="", stages=[NMPruningConfig(n=2, m=4, epochs=20)]))
