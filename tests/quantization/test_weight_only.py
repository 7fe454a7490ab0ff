"""Weight-only round-to-nearest: packed on disk, identical after loading, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.nn.kernels import kernel_mode
from slimkit.nn.quant_embedding import QuantEmbedding
from slimkit.nn.quant_linear import QuantLinear
from slimkit.nn.quant_math import rtn_quantize
from slimkit.quantization.api import WeightOnlyConfig


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 64)
        self.fc = nn.Linear(64, 32)
        self.conv = nn.Conv1d(4, 4, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [True, False])
def test_save_load_identical_and_packed(bits, symmetric, tmp_path):
    torch.manual_seed(bits)
    model = _Tiny()
    cfg = WeightOnlyConfig(bits=bits, symmetric=symmetric, group_size=32, embedding_bits=bits)
    sk.quantize_(model, cfg, data=None)
    assert isinstance(model.fc, QuantLinear) and isinstance(model.emb, QuantEmbedding)
    path = tmp_path / "m.slim"
    sk.save(model, path)
    loaded = sk.load(path, model=_Tiny())
    ids = torch.randint(0, 40, (3, 5))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    stored = sk.load_state_dict(path)
    assert torch.equal(stored["fc.qweight"], model.fc.qweight)
    # on disk: bits/8 bytes per weight
    from slimkit.io.artifact import read_raw

    assert read_raw(path)[0]["fc.qweight"].nbytes == 64 * 32 * bits // 8


def test_four_bit_file_is_about_an_eighth_of_fp32(tmp_path):
    model = nn.Sequential(nn.Linear(512, 512, bias=False))
    fp32 = sk.save(model, tmp_path / "f.slim")
    sk.quantize_(model, WeightOnlyConfig(bits=4, group_size=128), data=None)
    q4 = sk.save(model, tmp_path / "q.slim")
    assert q4 < fp32 / 7.5                     # 0.5 B/weight + fp16 scale per 128 weights


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_quant_linear_matches_its_dequantized_weight(granularity):
    lin = nn.Linear(64, 16)
    qw = rtn_quantize(lin.weight, 4, True, granularity, 32, scale_dtype=torch.float16)
    q = QuantLinear.from_quantized(qw, lin.bias, True)
    x = torch.randn(3, 64)
    assert torch.allclose(q(x), x @ qw.dequantize().t() + lin.bias, atol=1e-5)
    assert "bits=4" in repr(q)


def test_cached_weight_follows_buffer_changes():
    q = QuantLinear.from_quantized(rtn_quantize(torch.randn(8, 32), 4, True, "channel"), None, True)
    x = torch.randn(2, 32)
    before = q(x)
    q.scale.mul_(2)
    assert torch.allclose(q(x), 2 * before, atol=1e-5)


def test_decoded_layer_decodes_once_and_then_runs_as_fp32(monkeypatch):
    """A weight-only layer decodes its codes on the first call and reuses that fp32 weight, so it
    runs at fp32 speed (measured in `python -m bench`; tests never assert wall-clock times)."""
    import slimkit.nn.codes as ql

    torch.manual_seed(0)
    lin = nn.Linear(384, 1536)
    q = QuantLinear.from_quantized(rtn_quantize(lin.weight, 4, True, "group", 128), lin.bias, True)
    x = torch.randn(40, 384)
    decodes = []
    real = ql.dequantize_groups
    monkeypatch.setattr(ql, "dequantize_groups", lambda *a: (decodes.append(1), real(*a))[1])
    with torch.inference_mode(), kernel_mode("dense"):
        first = q(x)
        weight = q._cache.value
        for _ in range(3):
            assert torch.equal(q(x), first)
    assert len(decodes) == 1 and q._cache.value is weight and weight.dtype is torch.float32
    assert q.runtime_state() == {"choices": {"all": "dense"}, "cache_bytes": 384 * 1536 * 4}
    assert torch.allclose(first, torch.nn.functional.linear(x, weight, lin.bias), atol=1e-6)


def test_lenet_4bit_per_channel(lenet, digits_task):
    base = digits_task.score(lenet)
    sk.quantize_(lenet, WeightOnlyConfig(bits=4, granularity="channel"), data=digits_task)
    assert base - digits_task.score(lenet) <= 0.01


def test_group_size_not_dividing_falls_back_per_layer(lenet):
    """64, 300 and 100 inputs with groups of 128 / 32 (the rule: tests/quantization/test_group_fallback.py)."""
    sk.quantize_(lenet, WeightOnlyConfig(bits=4, group_size=32), data=None)
    assert [(m.granularity.value, m.group_size) for m in (lenet.fc1, lenet.fc2, lenet.fc3)] == \
        [("group", 32), ("group", 30), ("group", 25)]


@pytest.mark.parametrize("options", [{"bits": 0}, {"bits": 9}, {"embedding_bits": 12}, {"group_size": 0},
                                     {"bits": 1}])
def test_bad_options_name_the_parameter(options):
    key = next(iter(options))
    with pytest.raises(ValueError, match=key.split("_")[0]):
        WeightOnlyConfig(**options)


def test_bad_options_in_a_recipe_are_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - method: rtn\n    bits: 12\n")
    with pytest.raises(SlimError, match=r"stage 1 \(rtn\): bits: .*1\.\.8") as info:
        sk.load_recipe(str(path))
    assert "\n" not in str(info.value)


def test_unsupported_modules_listed():
    from slimkit.quantization.convert import quant_report

    model = sk.quantize_(_Tiny(), WeightOnlyConfig(bits=4, group_size=32), data=None)
    assert quant_report(model)["skipped"] == {"conv": "Conv1d is not supported"}
    assert type(model.emb) is nn.Embedding               # embedding_bits not set: stays float


@pytest.mark.parametrize("spec", [
    {"type": "QuantLinear", "in": 64, "out": 8, "bias": True, "bits": 12, "symmetric": True,
     "granularity": "group", "group_size": 32, "scale_dtype": "float16"},
    {"type": "QuantLinear", "in": 64, "out": 8, "bias": True, "bits": 4, "symmetric": True,
     "granularity": "group", "group_size": 48, "scale_dtype": "float16"},
    {"type": "QuantLinear", "in": 64, "out": 8, "bias": True, "bits": 4, "symmetric": "yes",
     "granularity": "group", "group_size": 32, "scale_dtype": "float16"},
    {"type": "QuantEmbedding", "num": 10, "dim": 8, "padding_idx": None, "bits": 4, "symmetric": True,
     "granularity": "blocks", "group_size": 8, "scale_dtype": "float16"},
    {"type": "Int8Linear", "in": -1, "out": 8, "bias": True},
])
def test_bad_runtime_specs_are_format_errors(spec):
    from slimkit.core.errors import SlimFormatError
    from slimkit.surgery.specs import from_spec

    with pytest.raises(SlimFormatError):
        from_spec(spec)
