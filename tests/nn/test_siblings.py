"""Sibling layers (q/k/v, gate/up) multiplied by one stacked low-bit kernel at batch 1
(`slimkit.nn.siblings`): each member's output is its own kernel's, exactly, whatever the calls."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import slimkit as sk
from slimkit.nn import siblings, torch_pack
from slimkit.nn.kernels import forget_choices
from slimkit.nn.quant_linear import QuantLinear
from slimkit.nn.quant_math import rtn_quantize

pytestmark = pytest.mark.skipif(not torch_pack.available(), reason="no int4pack / int8pack CPU kernels")


class Attention(nn.Module):
    """The calls of a Llama-family attention block's projections: q, k, v on the same input."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], -1)


def _layer(rows: int, bits: int, seed: int) -> QuantLinear:
    torch.manual_seed(seed)
    if bits <= 4:
        qw, symmetric = rtn_quantize(torch.randn(rows, 512), bits, False, "group", 64), False
    else:
        qw, symmetric = rtn_quantize(torch.randn(rows, 512), bits, True, "channel", 0), True
    return QuantLinear.from_quantized(qw, torch.randn(rows), symmetric)


def _model(bits: int) -> Attention:
    """q/k/v of 512 inputs, settled on the packed kernel at batch 1 (as a decoder's choice does)."""
    model = Attention([_layer(rows, bits, i) for i, rows in enumerate((256, 128, 128))]).eval()
    for m in (model.q_proj, model.k_proj, model.v_proj):
        m._new_choice()._settle(1, "pack")
    return model


def _linked(bits: int = 4) -> Attention:
    model = _model(bits)
    siblings.link(model)
    return model


def _own(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer's own packed kernel on `x` (built apart from the layer's caches)."""
    return layer._build_pack()(x.reshape(1, -1))


def _each_own(model: Attention, x: torch.Tensor) -> torch.Tensor:
    """q, k and v each by its own packed kernel, concatenated as the model's forward does."""
    return torch.cat([_own(m, x) for m in (model.q_proj, model.k_proj, model.v_proj)], -1)


@pytest.fixture(autouse=True)
def fresh_choices():
    forget_choices()
    yield
    forget_choices()


@pytest.mark.parametrize("bits", [4, 8])
def test_one_stacked_call_gives_each_member_its_own_output(bits):
    model = _model(bits)
    x = torch.randn(1, 1, 512)
    with torch.no_grad():
        model(x)   # unlinked: each member builds its own packed copy
        assert all(m._pack_cache.value is not None for m in (model.q_proj, model.k_proj, model.v_proj))
        assert siblings.link(model) == {"": ("q_proj", "k_proj", "v_proj")}
        group = model.q_proj.__dict__["_siblings"]
        y = model(x)
    assert group.fused_calls == 1
    assert torch.equal(y.reshape(1, -1), _each_own(model, x)), "stacked rows compute the same dot products"
    assert all(m._pack_cache.value is None for m in (model.q_proj, model.k_proj, model.v_proj)), \
        "the stacked codes replace the members' own packed copies"
    state = model.q_proj.runtime_state()
    assert state["stacked"] == "3 layers, 1 calls" and state["cache_bytes"] == group.cache.value.nbytes
    assert model.k_proj.runtime_state()["cache_bytes"] == 0, "counted once, on the first member"


def test_other_calls_run_the_members_own_kernel():
    model = _linked()
    group = model.q_proj.__dict__["_siblings"]
    x, other = torch.randn(1, 512), torch.randn(1, 512)
    with torch.no_grad():
        model.q_proj(x)
        assert torch.equal(model.k_proj(other), _own(model.k_proj, other)), "another input"
        assert torch.equal(model.v_proj(x), _own(model.v_proj, x)), "the group was left after k's own call"
        model.q_proj(x)
        x.mul_(2.0)   # changed in place between the calls
        assert torch.equal(model.k_proj(x), _own(model.k_proj, x)), "the values changed"
        model.q_proj(x)
        assert torch.equal(model.v_proj(x), _own(model.v_proj, x)), "v before k: out of order"
        model(torch.randn(3, 512))
        assert group.fused_calls == 3, "several rows: no stacking"
        model.k_proj(x)   # a member alone rebuilds its own kernel
    assert model.k_proj._pack_cache.value is not None


def test_changed_codes_rebuild_the_stacked_kernel():
    model = _linked()
    x = torch.randn(1, 512)
    with torch.no_grad():
        before = model(x)
        model.k_proj.scale.mul_(2)
        after = model(x)
    assert torch.equal(after, _each_own(model, x)) and not torch.equal(after[:, 256:384], before[:, 256:384])


def test_copies_and_pickles_stack_their_own_members():
    model = _linked()
    x = torch.randn(1, 512)
    with torch.no_grad():
        expected = model(x)
        for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            group = twin.q_proj.__dict__["_siblings"]
            assert group.members == [twin.q_proj, twin.k_proj, twin.v_proj] and group.cache.value is None
            for m in group.members:
                m._new_choice()._settle(1, "pack")
            assert torch.equal(twin(x), expected) and group.fused_calls == 1


def test_load_links_sibling_layers_of_one_layout(tmp_path):
    def plain() -> Attention:
        return Attention([nn.Linear(512, n) for n in (256, 128, 128)])

    model = plain()
    sk.quantize_(model, sk.WeightOnlyConfig(bits=4, group_size=64, symmetric=False))
    sk.save(model, tmp_path / "attn.slim")
    loaded = sk.load(tmp_path / "attn.slim", model=plain(), runtime="torch")
    assert loaded.q_proj.__dict__["_siblings"] is loaded.v_proj.__dict__["_siblings"]
    mixed = Attention([_layer(256, 4, 0), _layer(128, 8, 1), _layer(128, 4, 2)])
    assert siblings.link(mixed) == {}, "4-bit and 8-bit codes cannot stack"
    siblings.unlink(loaded)
    assert "_siblings" not in loaded.q_proj.__dict__


def test_a_compiled_step_runs_the_stacked_kernel():
    model = _linked()
    x = torch.randn(1, 512)
    with torch.no_grad():
        eager = model(x)   # builds the stacked kernel (nothing is built while tracing)
        try:
            compiled = torch.compile(model, backend="eager", fullgraph=True)
            compiled(x)
        except Exception as exc:  # noqa: BLE001 - dynamo unusable here (no compiler, old Python)
            pytest.skip(f"torch.compile is unavailable: {type(exc).__name__}")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = compiled(x)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert torch.equal(out, eager) and calls.get("aten::_weight_int4pack_mm_for_cpu") == 1
