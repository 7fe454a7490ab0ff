"""GPTQ block by block from disk (`slimkit.stream.layerwise`) equals the in-memory GPTQ path."""

from __future__ import annotations

import json

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.io.artifact import read_manifest
from slimkit.nn.quant_linear import QuantLinear
from slimkit.pipeline.recipes import Recipe
from slimkit.quantization.api import GPTQConfig
from slimkit.stream.layerwise import compress_layerwise
from slimkit.stream.skeleton import WeightSource, build_skeleton
from slimkit.zoo.token_task import token_task

tf = pytest.importorskip("transformers")

GPTQ_OPTIONS = {"bits": 4, "symmetric": False, "group_size": 32, "act_order": True,
                "samples": 16, "embedding_bits": 4, "embedding_group_size": 32}


def _configs() -> dict:
    return {
        "bert": tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, max_position_embeddings=64),
        "llama": tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                bos_token_id=0, eos_token_id=0),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny random BERT and Llama folders (config.json + model.safetensors, no tokenizer); the Llama
    also sharded (index json) and in bfloat16."""
    out = {}
    for arch, config in _configs().items():
        torch.manual_seed(0)
        model = tf.AutoModel.from_config(config)
        out[arch] = tmp_path_factory.mktemp(f"hf-{arch}")
        model.save_pretrained(out[arch])
        if arch == "llama":
            out["llama-sharded"] = tmp_path_factory.mktemp("hf-llama-sharded")
            model.save_pretrained(out["llama-sharded"], max_shard_size="60KB")
            out["llama-bf16"] = tmp_path_factory.mktemp("hf-llama-bf16")
            model.to(torch.bfloat16).save_pretrained(out["llama-bf16"])
    return out


def _recipe(**options) -> Recipe:
    return Recipe(name="test-gptq", description="", stages=[GPTQConfig(**(GPTQ_OPTIONS | options))])


def _in_memory(folder):
    from slimkit.core.provenance import task_for

    model = sk.resolve(str(folder))
    task = task_for(model)
    return sk.quantize_(model, GPTQConfig(**GPTQ_OPTIONS), data=task), task


def _codes(model) -> dict[str, dict[str, torch.Tensor]]:
    return {n: m.state_dict() for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _hidden(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


@pytest.fixture(scope="module")
def streamed(folders, tmp_path_factory):
    """arch -> (the streamed artifact's path, its report)."""
    out = {}
    for arch in ("bert", "llama"):
        path = tmp_path_factory.mktemp(f"streamed-{arch}") / "streamed.slim"
        out[arch] = path, compress_layerwise(folders[arch], _recipe(), path)
    return out


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_layerwise_equals_in_memory_gptq(folders, streamed, arch):
    """Same layers, same codes up to float noise: float32 matmuls on this CPU are not bit-reproducible
    run to run (MKL's results depend on memory alignment), and GPTQ turns a last-bit difference into a
    neighbouring code now and then, which moves the later layers' Hessians: in memory as well as
    streamed. So: the first stage's codes agree, and both models are as close to the original."""
    path, report = streamed[arch]
    model = sk.load(path)
    memory, task = _in_memory(folders[arch])
    a, b = _codes(model), _codes(memory)
    assert a.keys() == b.keys() and len(a) >= 12
    assert model.state_dict().keys() == memory.state_dict().keys()
    first = next(n for n in a if n.endswith(("q_proj", "query")))
    same = sum(int((v == b[first][k]).sum()) for k, v in a[first].items())
    assert same / sum(v.numel() for v in a[first].values()) > 0.99
    batch = task.example_inputs(8)
    original = _hidden(sk.resolve(str(folders[arch])), batch)
    err_streamed, err_memory = _rel(_hidden(model, batch), original), _rel(_hidden(memory, batch), original)
    assert 0 < err_streamed < 1.3 * err_memory + 1e-3 and err_memory < 1.3 * err_streamed + 1e-3
    # BERT's pooler is after the blocks: round-to-nearest when streaming (GPTQ in memory)
    assert report.stored["gptq w4 g32"] == len(a) - (arch == "bert")
    assert report.bytes == path.stat().st_size < report.input_bytes / 4
    manifest = read_manifest(path)
    assert manifest.base["kind"] == "hf" and manifest.info["streamed"] == "layerwise"


def test_sharded_bf16_and_cli(folders, streamed, tmp_path, monkeypatch, capsys):
    """A sharded checkpoint (index json) through `compress --stream`, a bfloat16 one through the API:
    the same model as the single-file fp32 checkpoint gives."""
    from cli_runner import cli

    assert len(list(folders["llama-sharded"].glob("*.safetensors"))) > 1
    out = tmp_path / "cli.slim"
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(folders["llama-sharded"]), "--recipe", "int4",
                            "--stream", "--out", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["streamed"] == "layerwise" and result["bytes"] == out.stat().st_size
    compress_layerwise(folders["llama-bf16"], _recipe(), tmp_path / "bf16.slim")
    reference = sk.load(streamed["llama"][0])
    batch = token_task(folders["llama"]).example_inputs(4)
    original = _hidden(sk.resolve(str(folders["llama"])), batch)
    err_reference = _rel(_hidden(reference, batch), original)
    for path in (out, tmp_path / "bf16.slim"):
        model = sk.load(path)
        assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 7 * 2
        err = _rel(_hidden(model, batch), original)
        assert err < 1.3 * err_reference + 2e-3, (path.name, err, err_reference)
    code, _, err = cli(monkeypatch, capsys, "compress", "builtin:lenet-300-100", "--recipe", "int4",
                       "--stream", "--out", str(tmp_path / "y.slim"))
    assert code == 2 and "--stream needs" in err


def test_only_what_is_worked_on_is_materialised(folders):
    model, transposed = build_skeleton(folders["llama"])
    assert all(p.is_meta for p in model.parameters())
    assert not model.rotary_emb.inv_freq.is_meta   # computed buffers stay real
    with WeightSource(model, folders["llama"], transposed) as source:
        read = source.load("layers.1")
        real = {n for n, p in model.named_parameters() if not p.is_meta}
        assert real and all(n.startswith("layers.1.") for n in real)
        assert read == sum(p.numel() * 4 for n, p in model.named_parameters() if n in real)
        source.release("layers.1")
    assert all(p.is_meta for p in model.parameters())


def test_refuses_recipes_it_cannot_run_block_by_block(folders, tmp_path):
    with pytest.raises(SlimError, match="one gptq stage"):
        compress_layerwise(folders["llama"], "int8", tmp_path / "x.slim")
    assert not (tmp_path / "x.slim").exists()


def test_lowrank_pca_block_by_block_equals_in_memory(folders, tmp_path):
    from slimkit.core.provenance import task_for
    from slimkit.sharing.api import LowRankConfig

    config = LowRankConfig(energy=0.9, mode="pca", calibration_samples=16)
    report = compress_layerwise(folders["bert"], Recipe(name="lr", description="", stages=[config]),
                                tmp_path / "lr.slim")
    streamed = sk.load(tmp_path / "lr.slim")
    memory = sk.resolve(str(folders["bert"]))
    task = task_for(memory)
    sk.share_(memory, config, data=task)

    def ranks(model):
        return {n: m[0].out_features for n, m in model.named_modules()
                if isinstance(m, torch.nn.Sequential) and n.startswith("encoder.")}

    got, want = ranks(streamed), ranks(memory)
    assert len(want) >= 8 and got.keys() == want.keys()
    assert sum(got[n] == want[n] for n in got) >= 0.9 * len(got)
    assert report.stored["lowrank pca"] == len(got)
    batch = task.example_inputs(8)
    original = _hidden(sk.resolve(str(folders["bert"])), batch)
    err_streamed, err_memory = _rel(_hidden(streamed, batch), original), _rel(_hidden(memory, batch), original)
    assert err_streamed < 1.1 * err_memory + 1e-3 and err_memory < 1.1 * err_streamed + 1e-3
