"""One-shot APoZ block by block from disk (`slimkit.pruning.apoz_blocks`, driven by
`slimkit.stream.layerwise`) equals the same rule applied block after block to the model in memory."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.io.artifact import read_manifest
from slimkit.pipeline.recipes import Recipe
from slimkit.pruning.api import APoZPruningConfig
from slimkit.pruning.importance import above_mean_std, apoz
from slimkit.pruning.transformer import prune_ffn_
from slimkit.stream.layerwise import compress_layerwise
from slimkit.surgery.edits import replace_module
from slimkit.surgery.shrink import shrink_linear

tf = pytest.importorskip("transformers")

DEAD = {0: [3, 10, 50, 77], 1: [1, 2, 90]}   # block -> FFN neurons made mostly zero before the ReLU
CFG = APoZPruningConfig(rounds=1, epochs=0, std=1.0, samples=16, min_channels=2)
# arch -> (FFN modules, up projection, down projection)
FFNS = {"bert": (["encoder.layer.0", "encoder.layer.1"], "intermediate.dense", "output.dense"),
        "opt": (["decoder.layers.0", "decoder.layers.1"], "fc1", "fc2")}


def _config(arch: str, act: str = "relu"):
    if arch == "opt":
        return tf.OPTConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                            max_position_embeddings=64, word_embed_proj_dim=64, activation_function=act)
    return tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64, hidden_act=act)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny random ReLU BERT and OPT (some FFN neurons given a large negative bias: APoZ near 1), and
    a GELU BERT. Block 0's FFN output is scaled up so that trimming it moves block 1's inputs enough to
    change which of BERT's block 1 neurons are cut (the test then tells measuring on the trimmed model
    from measuring on the original)."""
    out = {}
    for arch, act in (("bert", "relu"), ("opt", "relu"), ("bert", "gelu")):
        torch.manual_seed(0)
        model = tf.AutoModel.from_config(_config(arch, act))
        blocks, up, down = FFNS[arch]
        with torch.no_grad():
            for i, neurons in DEAD.items():
                model.get_submodule(f"{blocks[i]}.{up}").bias[neurons] = -5.0
            model.get_submodule(f"{blocks[0]}.{down}").weight.mul_(20.0)
        out[arch if act == "relu" else act] = tmp_path_factory.mktemp(f"hf-{arch}-{act}")
        model.save_pretrained(out[arch if act == "relu" else act])
    out["llama"] = tmp_path_factory.mktemp("hf-llama")   # SiLU-gated MLP: no ReLU FFN to trim
    tf.AutoModel.from_config(tf.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64)
                             ).save_pretrained(out["llama"])
    return out


def _recipe(cfg=CFG) -> Recipe:
    return Recipe(name="apoz-oneshot", description="", stages=[cfg])


def _reference(folder, arch: str):
    """The rule in memory on the whole model: FFN by FFN, APoZ measured on the model whose earlier
    FFNs are already trimmed, neurons above mean + 1 std cut (rows of up, columns of down)."""
    from slimkit.core.provenance import task_for

    blocks, up, down = FFNS[arch]
    model = sk.resolve(str(folder))
    task = task_for(model)
    batches = list(task.calibration(CFG.samples))
    original = apoz(model, batches, {b: f"{b}.{up}" for b in blocks}, task.forward)
    kept = {"original": {b: torch.nonzero(~above_mean_std(original[b], CFG.std)).flatten() for b in blocks}}
    for block in blocks:
        scores = apoz(model, batches, {block: f"{block}.{up}"}, task.forward)[block]
        kept[block] = torch.nonzero(~above_mean_std(scores, CFG.std)).flatten()
        if arch == "bert":
            prune_ffn_(model, block, kept[block])
        else:
            ffn = model.get_submodule(block)
            replace_module(model, f"{block}.{up}", shrink_linear(ffn.get_submodule(up), kept[block]))
            replace_module(model, f"{block}.{down}", shrink_linear(ffn.get_submodule(down), None, kept[block]))
    return model, task, kept


def _hidden(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("arch", ["bert", "opt"])
def test_streamed_apoz_equals_in_memory_rule(folders, tmp_path, arch):
    path = tmp_path / "apoz.slim"
    report = compress_layerwise(folders[arch], _recipe(), path)
    streamed = sk.load(path)
    memory, task, kept = _reference(folders[arch], arch)
    blocks, up, down = FFNS[arch]
    for i, block in enumerate(blocks):
        got, want = streamed.get_submodule(block), memory.get_submodule(block)
        n = len(kept[block])
        assert got.get_submodule(up).out_features == got.get_submodule(down).in_features == n < 128
        assert not set(DEAD[i]) & set(kept[block].tolist())   # the mostly-zero neurons are gone
        for layer in (up, down):   # same neurons kept
            assert torch.equal(got.get_submodule(layer).weight, want.get_submodule(layer).weight)
    if arch == "bert":   # block 1 measured after block 0's trim, not on the original model
        assert not torch.equal(kept["original"][blocks[1]], kept[blocks[1]])
        # block 0 sees the same inputs either way: the same cut as the in-memory method's one round
        one_round = sk.resolve(str(folders[arch]))
        sk.prune_(one_round, CFG.model_copy(update={"max_drop": 100.0, "targets": rf"re:.*\.{up}"}), data=task)
        assert torch.equal(one_round.get_submodule(f"{blocks[0]}.{up}").weight,
                           streamed.get_submodule(f"{blocks[0]}.{up}").weight)
    removed = sum(128 - len(kept[b]) for b in blocks)
    assert report.stored == {"apoz-trimmed (FFN neurons above APoZ mean + 1 std)": 4}
    batch = task.example_inputs(4)
    torch.testing.assert_close(_hidden(streamed, batch), _hidden(memory, batch), rtol=1e-4, atol=1e-5)
    manifest = read_manifest(path)
    replaced = {e["module"] for e in manifest.edits if e["op"] == "replace"}
    assert {f"{b}.{m}" for b in blocks for m in (up, down)} <= replaced
    assert manifest.info["streamed"] == "layerwise"
    assert manifest.info["apoz_ffn_neurons"] == {"before": 256, "after": 256 - removed}
    assert report.bytes == path.stat().st_size < report.input_bytes


def test_gelu_and_multi_round_refused(folders, tmp_path):
    with pytest.raises(SlimError, match="APoZ needs a ReLU after encoder.layer.0.intermediate.dense") as err:
        compress_layerwise(folders["gelu"], _recipe(), tmp_path / "g.slim")
    assert "\n" not in str(err.value) and "gelu" in str(err.value)
    with pytest.raises(SlimError, match="the model has none selected \\(its activation: 'silu'\\)"):
        compress_layerwise(folders["llama"], _recipe(), tmp_path / "l.slim")
    with pytest.raises(SlimError, match="rounds: 1 and epochs: 0"):
        compress_layerwise(folders["bert"], "apoz", tmp_path / "r.slim")
    assert not (tmp_path / "g.slim").exists() and not (tmp_path / "r.slim").exists()


def test_keep_by_apoz_never_empties_a_layer():
    from slimkit.pruning.apoz_blocks import keep_by_apoz

    scores = torch.tensor([0.1, 0.2, 0.05, 0.9, 0.15], dtype=torch.float64)
    assert keep_by_apoz(scores, 1.0, 2).tolist() == [0, 1, 2, 4]       # 0.9 > mean + 1 std
    assert keep_by_apoz(scores, -10.0, 2).tolist() == [0, 2]          # all above: the 2 lowest stay


def test_cli_stream_with_a_one_shot_apoz_recipe(folders, tmp_path, monkeypatch, capsys):
    import json

    from cli_runner import cli

    recipe = tmp_path / "apoz-oneshot.yaml"
    recipe.write_text("description: one-shot APoZ\nstages:\n  - method: apoz\n    rounds: 1\n    epochs: 0\n"
                      "    samples: 16\n")
    out = tmp_path / "cli.slim"
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(folders["opt"]), "--recipe", str(recipe),
                            "--stream", "--out", str(out), "--json", "--max-drop", "5")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["scored"] and 0 < result["drop"] <= 5   # measured on the written file (over the default 1 pt)
    assert result["streamed"] == "layerwise" and result["bytes"] == out.stat().st_size
    assert result["stored"] == {"apoz-trimmed (FFN neurons above APoZ mean + 1 std)": 4}
    assert sk.load(out).get_submodule("decoder.layers.1.fc1").out_features < 128
    code, _, err = cli(monkeypatch, capsys, "compress", str(folders["gelu"]), "--recipe", str(recipe),
                       "--stream", "--out", str(tmp_path / "g.slim"))
    assert code == 2 and err.count("\n") == 1 and "APoZ needs a ReLU" in err


def test_cli_stream_with_the_shipped_multi_round_apoz_says_how_to_stream_it(folders, tmp_path, monkeypatch, capsys):
    from cli_runner import cli

    code, _, err = cli(monkeypatch, capsys, "compress", str(folders["opt"]), "--recipe", "apoz",
                       "--stream", "--out", str(tmp_path / "a.slim"))
    assert code == 2 and err.count("\n") == 1
    assert "rounds: 1" in err and "epochs: 0" in err and not (tmp_path / "a.slim").exists()
