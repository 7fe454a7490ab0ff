"""AWQ, SmoothQuant, Wanda and SparseGPT block by block from disk equal their in-memory runs."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from llm_models import one_thread  # noqa: F401  (fixture)
from slimkit.core.provenance import task_for
from slimkit.pipeline.recipes import Recipe
from slimkit.stream.layerwise import compress_layerwise

tf = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "awq": sk.AWQConfig(bits=4, group_size=32, samples=16),
    "smoothquant": sk.SmoothQuantConfig(samples=16),
    "wanda": sk.WandaConfig(n=2, m=4, samples=16),
    "sparsegpt": sk.SparseGPTConfig(sparsity=0.5, samples=16),
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    config = tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf-llama")
    tf.AutoModel.from_config(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", list(CONFIGS))
def test_streamed_equals_in_memory(llama, method, tmp_path):
    config = CONFIGS[method]
    path = tmp_path / f"{method}.slim"
    report = compress_layerwise(llama, Recipe(name=method, description="", stages=[config]), path)
    assert sum(report.stored.values()) == 14 and report.bytes == path.stat().st_size < report.input_bytes / 2
    streamed = sk.load(path)
    memory = sk.resolve(str(llama))
    task = task_for(memory)
    sk.apply_(memory, config, data=task)
    assert streamed.state_dict().keys() == memory.state_dict().keys()
    batch = task.example_inputs(4)
    with torch.no_grad():
        torch.testing.assert_close(streamed(**batch).last_hidden_state, memory(**batch).last_hidden_state,
                                   rtol=1e-4, atol=1e-5)
