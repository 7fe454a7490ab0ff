"""QAT: gradients flow through the fake quantizer, training converts to the packed layer exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.nn.quant_linear import QuantLinear
from slimkit.quantization.qat import FakeQuantLinear, QATConfig, round_ste


def test_ste_passes_gradient_through_round():
    x = torch.tensor([0.2, 1.7, -2.4], requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


@pytest.mark.parametrize("lsq", [True, False])
def test_gradients_reach_weight_and_step(lsq):
    torch.manual_seed(0)
    fake = FakeQuantLinear(nn.Linear(16, 8), bits=4, learn_step=lsq)
    fake(torch.randn(5, 16)).pow(2).sum().backward()
    assert fake.weight.grad is not None and fake.weight.grad.abs().sum() > 0
    if lsq:
        assert fake.step.grad is not None and fake.step.grad.abs().sum() > 0
    else:
        assert fake.step.grad is None


def test_fake_quant_converts_to_identical_packed_layer():
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    fake = FakeQuantLinear(lin, bits=3)
    with torch.no_grad():
        fake.step.mul_(0.8)                                      # as if training moved it
    packed = QuantLinear.from_quantized(fake.to_quantized(), fake.bias, True, "float32")
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.equal(fake(x), packed(x))


def test_qat_on_lenet_4bit(lenet, lenet_trained, digits_task, tmp_path):
    base = digits_task.score(lenet_trained)
    model = sk.quantize_(lenet, QATConfig(bits=4, epochs=1), data=digits_task)
    assert isinstance(model.fc1, QuantLinear) and model.fc1.bits == 4
    assert base - digits_task.score(model) <= 0.005
    path = tmp_path / "qat.slim"
    sk.save(model, path)
    x = digits_task.example_inputs(8)["x"]
    assert torch.equal(sk.load(path)(x), model(x))


def test_qat_needs_labels(lenet):
    from slimkit.core.task import Task

    class Unlabelled(Task):
        def example_inputs(self, batch_size):
            return {"x": torch.zeros(batch_size, 64)}

        def score(self, model):
            return 0.0

        def calibration(self, n=256):
            return [{"x": torch.zeros(4, 64)}]

    with pytest.raises(sk.SlimError, match="labelled"):
        sk.quantize_(lenet, QATConfig(), data=Unlabelled())
    with pytest.raises(ValueError, match="bits"):
        QATConfig(bits=1)


def test_qat_recipe_ships():
    stage = sk.load_recipe("qat-int4").stages[0]
    assert stage.method == "qat" and stage.bits == 4


def test_interrupted_qat_resumes_to_the_uninterrupted_result(lenet_trained, digits_task, tmp_path):
    import copy

    def fresh():
        model = copy.deepcopy(lenet_trained)
        model.__dict__["slimkit_base"] = dict(lenet_trained.__dict__["slimkit_base"])
        return model

    straight = sk.quantize_(fresh(), QATConfig(bits=4, epochs=3), data=digits_task)
    folder = tmp_path / "ckpt"
    calls = {"n": 0}
    forward = type(digits_task).forward

    def dies_in_epoch_two(self, model, batch):
        calls["n"] += 1
        if calls["n"] > len(digits_task.train_batches(64, 0)) + 3:   # a few steps into epoch 2
            raise KeyboardInterrupt
        return forward(self, model, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(digits_task), "forward", dies_in_epoch_two)
        with pytest.raises(KeyboardInterrupt):
            sk.quantize_(fresh(), QATConfig(bits=4, epochs=3, checkpoint=str(folder)), data=digits_task)
    assert (folder / "checkpoint.safetensors").is_file()
    steps = {"n": 0}

    def counted(self, model, batch):
        steps["n"] += 1
        return forward(self, model, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(digits_task), "forward", counted)
        resumed = sk.quantize_(fresh(), QATConfig(bits=4, epochs=3, checkpoint=str(folder)), data=digits_task)
    assert steps["n"] == 2 * len(digits_task.train_batches(64, 0))     # epochs 2 and 3 only
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(getattr(resumed, name).qweight, getattr(straight, name).qweight)
        assert torch.equal(getattr(resumed, name).scale, getattr(straight, name).scale)
    with pytest.raises(sk.SlimError, match="other bits/lsq"):
        sk.quantize_(fresh(), QATConfig(bits=3, epochs=3, checkpoint=str(folder)), data=digits_task)
