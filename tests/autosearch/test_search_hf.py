"""slimkit search on user Hugging Face folders (tiny random BERT, GPT-2 and Llama saved offline, no
tokenizer: byte-level ids), and the encoder space's structural choices (FFN + head pruning with
recovery, layer dropping) composed with quantization on a tiny BERT."""

from __future__ import annotations

import json
import time

import pytest
import torch

import slimkit as sk
from slimkit.autosearch import search
from slimkit.autosearch.space_encoder import EmbeddingSpace
from slimkit.autosearch.trial import Budget, TrialRecord, run_candidate
from slimkit.zoo.token_task import token_task

SENTENCES = [f"Sentence number {i} says something about {w} and compression." for i, w in
             enumerate(["tokens", "layers", "heads", "weights", "bits", "models"] * 20)]


def _config(arch: str):
    import transformers as tf

    return {
        "bert": lambda: tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=256, max_position_embeddings=64),
        "gpt2": lambda: tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0),
        "llama": lambda: tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        bos_token_id=0, eos_token_id=0),
    }[arch]()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Make (once per architecture) a randomly initialised tiny model saved with save_pretrained."""
    import transformers as tf

    made = {}

    def make(arch: str):
        if arch not in made:
            path = tmp_path_factory.mktemp(f"hf-{arch}")
            torch.manual_seed(0)
            tf.AutoModel.from_config(_config(arch)).save_pretrained(path, safe_serialization=True)
            made[arch] = path
        return made[arch]

    return make


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("arch", ["bert", pytest.param("gpt2", marks=pytest.mark.slow),
                                  pytest.param("llama", marks=pytest.mark.slow)])
def test_search_on_a_user_folder_writes_every_output(folder, tmp_path, arch):
    out = tmp_path / "s"
    result = search(str(folder(arch)), max_drop=5.0, out=out, budget="5m", max_trials=1)
    for name in ("best.slim", "best.yaml", "pareto.json", "search.json", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["chosen_on"].startswith("256 held-out calibration sentences")
    best = result.best
    assert best is not None and best["drop_pts"] <= 5.0 and best["ratio"] > 3      # int8: ~4x smaller
    assert (out / "best.slim").stat().st_size == best["bytes"]
    model = sk.load(out / "best.slim")
    assert model.slimkit_base["kind"] == "hf" and model.slimkit_base["config"]["model_type"] == arch
    assert result.trials[0].confirm_drop_pts == result.trials[0].drop_pts    # deterministic: its own second run


def _run(folder, params: dict, budget_s: float = 600):
    import optuna

    model = sk.resolve(str(folder))
    work = token_task(folder, sentences=SENTENCES)    # few sentences: a training epoch takes a moment
    score = work.score
    space = EmbeddingSpace(model, 1477, score_s=0.01)
    stages = space.suggest(optuna.trial.FixedTrial(params))
    rec = TrialRecord(0, params, [])
    budget = Budget(score(model), 100.0, time.monotonic() + budget_s, abort_drop=100.0)
    return model, stages, run_candidate(model, stages, work, score, budget, folder.parent / "cand.slim", rec)


def test_head_and_ffn_pruning_with_recovery_then_gptq(folder):
    params = {"structured": True, "ffn_cut": 1, "head_cut": 1, "recover": True, "recover_epochs": 1,
              "quant": "gptq", "gptq_bits": 4, "group_size": 32, "embedding_bits": 8}
    model, stages, rec = _run(folder("bert"), params)
    assert [s.method for s in stages] == ["structured", "recover", "gptq"]
    assert stages[0].head_ratio > 0 and stages[1].time_limit is not None
    assert rec.state == "complete", rec.error
    loaded = sk.load(folder("bert").parent / "cand.slim")
    attn = loaded.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 2 and loaded.encoder.layer[0].intermediate.dense.out_features == 256 - 32
    assert rec.bytes < 0.3 * (folder("bert") / "model.safetensors").stat().st_size


def test_layer_dropping_then_int8(folder):
    params = {"structured": False, "drop_layers": True, "keep_layers": 2, "distill_epochs": 1, "quant": "int8"}
    _, stages, rec = _run(folder("bert"), params)
    assert [s.method for s in stages] == ["distill", "int8"] and stages[0].keep == [1, 2]
    assert rec.state == "complete", rec.error
    loaded = sk.load(folder("bert").parent / "cand.slim")
    assert len(loaded.encoder.layer) == 2


def test_training_choices_wait_for_time(folder):
    import optuna

    model = sk.resolve(str(folder("bert")))
    space = EmbeddingSpace(model, 1477, score_s=1.0)         # one epoch ~ 4 x 1 s x 1221 / 256 ~ 19 s
    space.time_left = 30.0
    stages = space.suggest(optuna.trial.FixedTrial({"structured": False, "quant_only": "int8"}))
    assert [s.method for s in stages] == ["int8"] and not space.can_train()
    space.time_left = 120.0
    assert space.can_train()
    assert space.groups == [32] and space.max_head_cut == 1 and space.depth == [0, 1, 2]
