"""A causal LM folder compressed from disk (`--stream`) loads back as its `*ForCausalLM`, head
included, and generates: tensor by tensor (int8) for Llama and Qwen2 (tied head stored once), block
by block (GPTQ) for Llama, Qwen2 and GPT-2. GPT-2's transposed `Conv1D` checkpoint streamed tensor by
tensor stays a weights-only file, as documented (slimkit.stream.hf_base)."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.pipeline.recipes import Recipe
from slimkit.stream import compress_checkpoint
from slimkit.stream.layerwise import compress_layerwise
from slimkit.zoo.hf import load_hf_folder
from tiny_lm import TIED, save_causal_lm

pytest.importorskip("transformers")
IDS = torch.tensor([[2, 5, 7, 9, 11, 3]])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {arch: save_causal_lm(arch, tmp_path_factory.mktemp(f"hf-{arch}")) for arch in ("llama", "qwen2", "gpt2")}


def _close_and_generates(path, folder):
    model = sk.load(path, runtime="torch")
    original = load_hf_folder(folder)
    assert type(model) is type(original)
    assert sk.read_manifest(path).base["head"] == "causal-lm"
    with torch.no_grad():
        got, want = model(IDS).logits, original(IDS).logits
    assert (got - want).abs().max().item() <= 0.05 * want.abs().max().item()
    out = model.generate(IDS, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, IDS.shape[1] + 4) and torch.equal(out[:, :IDS.shape[1]], IDS)
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_int8_tensor_by_tensor_loads_as_the_causal_lm(folders, arch, tmp_path):
    path = tmp_path / f"{arch}.slim"
    report = compress_checkpoint(folders[arch], "int8", path, threads=1)
    assert report.ratio > 3
    model = _close_and_generates(path, folders[arch])
    names = set(sk.read_manifest(path).tensors)
    assert ("lm_head.weight" in names) != TIED[arch]   # a tied head is the embedding, stored once
    assert (type(model.lm_head).__name__ == "TiedLMHead") == TIED[arch]   # reads the embedding's weight


def test_gpt2_conv1d_checkpoint_streamed_tensor_by_tensor_stays_weights_only(folders, tmp_path):
    path = tmp_path / "gpt2.slim"
    compress_checkpoint(folders["gpt2"], "int8", path, threads=1)
    assert sk.read_manifest(path).base["kind"] == "weights"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_gptq_block_by_block_keeps_the_head(folders, arch, tmp_path):
    path = tmp_path / f"{arch}-gptq.slim"
    recipe = Recipe(name="gptq", description="", stages=[sk.GPTQConfig(bits=8, group_size=32, samples=8)])
    compress_layerwise(folders[arch], recipe, path)
    _close_and_generates(path, folders[arch])
