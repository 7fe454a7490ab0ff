"""Honest numerics (issue 22): NaN/Inf weights are refused naming the tensor unless the config opts
in (then those layers stay float), and fp16 layers of subnormal magnitude keep their values."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import slimkit as sk
from cli_runner import cli
from slimkit.core.methods import apply_, make_config

METHODS = [("int8", {}), ("rtn", {"bits": 4, "granularity": "channel"}), ("kmeans", {"bits": 4}),
           ("gptq", {"bits": 4, "granularity": "channel", "samples": 16})]


def _mlp(bad: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        model[2].weight[3, 5] = bad
    return model


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method, options", METHODS)
def test_nonfinite_weights_are_refused_naming_the_tensor(method, options, bad):
    model = _mlp(bad)
    with pytest.raises(sk.SlimError) as err:
        apply_(model, make_config(method, **options))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{method}: 2.weight has 1 non-finite")
    assert "allow_nonfinite" in message
    assert type(model[2]) is nn.Linear           # nothing was changed


@pytest.mark.parametrize("method, options", METHODS[:3])
def test_allow_nonfinite_keeps_those_layers_float_and_the_rest_compressed(method, options, tmp_path):
    model = _mlp(float("nan"))
    reference = copy.deepcopy(model)
    apply_(model, make_config(method, allow_nonfinite=True, **options))
    first = model[0]                              # compressed: a quantized module, or 16 shared values
    assert type(first) is not nn.Linear or torch.unique(first.weight.detach()).numel() <= 16
    assert torch.unique(model[2].weight.detach()).numel() > 16   # left float, as it was
    assert torch.equal(model[2].weight.isnan(), reference[2].weight.isnan())
    sk.save(model, tmp_path / "m.slim")
    back = sk.load(tmp_path / "m.slim", model=copy.deepcopy(reference))
    assert int(back[2].weight.isnan().sum()) == 1  # the one NaN, not a whole row


def test_layers_outside_the_selection_may_hold_nan():
    model = _mlp(float("nan"))
    apply_(model, make_config("rtn", bits=4, granularity="channel", ignore=["2"]))
    assert type(model[0]) is not nn.Linear


def test_a_bool_is_not_an_opt_in_by_number():
    with pytest.raises(ValueError, match="true or false"):
        make_config("int8", allow_nonfinite=1)


@pytest.mark.parametrize("recipe", ["int8", "int4-rtn", "kmeans-stream"])
def test_the_cli_refuses_a_nonfinite_checkpoint_with_exit_2(monkeypatch, capsys, tmp_path, recipe):
    weight = torch.randn(64, 64)
    weight[7, 7] = float("nan")
    save_file({"layer.weight": weight}, str(tmp_path / "ck.safetensors"))
    if recipe == "kmeans-stream":
        recipe = str(tmp_path / "k.yaml")
        (tmp_path / "k.yaml").write_text("stages:\n  - method: kmeans\n    bits: 4\n    finetune_epochs: 0\n")
    code, out, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "ck.safetensors"), "--recipe", recipe,
                         "--out", str(tmp_path / "o.slim"))
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("slimkit: error: ") and "layer.weight" in lines[-1] and "non-finite" in lines[-1]
    assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "o.slim").exists()


def test_the_cli_copies_nonfinite_tensors_when_allowed(monkeypatch, capsys, tmp_path):
    weight = torch.randn(64, 64)
    weight[7, 7] = float("inf")
    good = torch.randn(64, 64)
    save_file({"bad.weight": weight, "good.weight": good}, str(tmp_path / "ck.safetensors"))
    (tmp_path / "r.yaml").write_text("stages:\n  - method: int8\n    allow_nonfinite: true\n")
    code, out, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "ck.safetensors"), "--recipe",
                         str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o.slim"))
    assert code == 0, err
    state = sk.load_state_dict(tmp_path / "o.slim")
    assert torch.equal(state["bad.weight"], weight)
    assert "copied (NaN/Inf values, allow_nonfinite)" in err and "int8 per-row" in err
    assert 0 < float((state["good.weight"] - good).abs().max()) < 0.05   # int8 codes, decoded


@pytest.mark.parametrize("magnitude", [1e-6, 3e-5])
@pytest.mark.parametrize("options", [{"granularity": "channel"}, {"group_size": 32, "symmetric": False}])
def test_rtn_keeps_fp16_weights_of_subnormal_magnitude(magnitude, options, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32)).half()
    with torch.no_grad():
        model[0].weight.copy_((torch.randn(32, 64) * magnitude).half())
    w0 = model[0].weight.detach().float()
    reference = copy.deepcopy(model)
    apply_(model, make_config("rtn", bits=4, **options))      # float16 scales by default
    sk.save(model, tmp_path / "m.slim")
    back = sk.load(tmp_path / "m.slim", model=reference)
    w = back[0].dequantized_weight().float()
    assert float((w - w0).norm() / w0.norm()) < 0.2            # 4 bits: ~0.1; all zeros would be 1.0
    assert float((w == 0).float().mean()) < 0.3


def test_streamed_rtn_refuses_float16_scales_that_lose_a_tensor(monkeypatch, capsys, tmp_path):
    """A bare fp16 checkpoint of subnormal-magnitude weights: int4-rtn's float16 scales stop at
    float16's smallest normal and every code was 0, written with exit 0 (issue 22). Streamed, the
    header may hold the scales' dtype already: the tensor is refused, and float32 scales keep it."""
    torch.manual_seed(0)
    tiny = (torch.randn(64, 128) * 1e-6).half()
    normal = (torch.randn(64, 128) * 0.02).half()
    normal[5] = 0                                          # a zero row: its scale also stops there
    save_file({"tiny.weight": tiny}, str(tmp_path / "tiny.safetensors"))
    save_file({"normal.weight": normal}, str(tmp_path / "normal.safetensors"))
    code, _, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "tiny.safetensors"), "--recipe", "int4-rtn",
                       "--out", str(tmp_path / "o.slim"))
    last = err.strip().splitlines()[-1]
    assert code == 2 and "'tiny.weight'" in last and "scale_dtype: float32" in last, err
    assert not (tmp_path / "o.slim").exists()
    (tmp_path / "r.yaml").write_text("stages:\n  - method: rtn\n    bits: 4\n    group_size: 64\n"
                                     "    scale_dtype: float32\n")
    code, _, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "tiny.safetensors"), "--recipe",
                       str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o.slim"))
    assert code == 0, err
    back = sk.load_state_dict(tmp_path / "o.slim")["tiny.weight"].float()
    assert float((back - tiny.float()).norm() / tiny.float().norm()) < 0.2
    code, _, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "normal.safetensors"), "--recipe", "int4-rtn",
                       "--out", str(tmp_path / "n.slim"))
    assert code == 0, err                                  # float16 scales, as the recipe asks
    back = sk.load_state_dict(tmp_path / "n.slim")["normal.weight"].float()
    assert float((back - normal.float()).norm() / normal.float().norm()) < 0.2
