"""Transformer students: keep every k-th layer, hidden-state and attention transfer (tiny BERT)."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.distillation import DistillConfig, distill, keep_layers
from slimkit.distillation.objective import capture

transformers = pytest.importorskip("transformers")


def _tiny_bert(layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32, attn_implementation="eager")
    return transformers.BertModel(config).eval()


def _batches(n: int = 6):
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 50, (8, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[:4, 8:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_kept_layers_are_copies_of_the_teachers():
    teacher = _tiny_bert()
    student = keep_layers(teacher, every=2)
    assert len(student.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 4 and len(teacher.encoder.layer) == 4
    for s, t in ((0, 1), (1, 3)):
        assert student.encoder.layer[s] is not teacher.encoder.layer[t]
        s_state, t_state = student.encoder.layer[s].state_dict(), teacher.encoder.layer[t].state_dict()
        assert all(torch.equal(s_state[k], t_state[k]) for k in t_state)
    batch = _batches(1)[0]
    with torch.no_grad(), capture(student, ["encoder.layer.0", "encoder.layer.1"]) as store:
        out = student(**batch).last_hidden_state
    assert torch.equal(store["encoder.layer.1"], out) and store["encoder.layer.0"].shape == out.shape


@pytest.mark.parametrize("weights", [
    {"hidden_weight": 1.0}, {"attention_weight": 1.0},
    {"hidden_weight": 1.0, "hidden_loss": "cosine", "attention_weight": 0.5}])
def test_feature_and_attention_transfer_train(weights):
    teacher = _tiny_bert()
    student = keep_layers(teacher, [1, 3])
    batches = _batches()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    seen = []
    distill(teacher, student, batches, DistillConfig(epochs=3, lr=1e-3, **weights), on_epoch=seen.append)
    assert len(seen) == 3 and seen[-1].loss < seen[0].loss
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_feature_loss_needs_a_layer_map():
    teacher = _tiny_bert()
    student = keep_layers(teacher, [1, 3])
    student.__dict__["slimkit_edits"] = []
    with pytest.raises(sk.SlimError, match="keep/every"):
        distill(teacher, student, _batches(), DistillConfig(epochs=1, hidden_weight=1.0))


def test_layer_kept_student_saves_and_loads(tmp_path):
    student = keep_layers(_tiny_bert(), [0, 3])
    path = tmp_path / "tiny-l2.slim"
    sk.save(student, path)
    loaded = sk.load(path, model=_tiny_bert(), runtime="torch")
    assert len(loaded.encoder.layer) == 2 and loaded.config.num_hidden_layers == 2
    batch = _batches(1)[0]
    with torch.no_grad():
        assert torch.equal(loaded(**batch).last_hidden_state, student(**batch).last_hidden_state)
