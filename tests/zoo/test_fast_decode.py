"""Fast batch-1 decoding of a quantized causal LM (issue #21 part 4): the layers run torch's low-bit
kernels on their codes where those win and pass the reference check (tests/nn/test_torch_pack.py forces
them layer by layer), the logits stay within a tight bound of the same artifact's exact path (the
decoded weights, kernel mode "dense"), greedy generate() picks the same tokens wherever the exact
path is not a near tie, and a compiled decode step gives the eager one's tokens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.nn import kernels, nbits, quant_linear, torch_pack
from slimkit.nn.kernels import forget_choices, kernel_mode, rel_err, runtime_report

pytestmark = pytest.mark.skipif(not torch_pack.available(), reason="no int4pack / int8pack CPU kernels")
VOCAB, PROMPT, NEW = 512, 12, 10
CONFIGS = {"int4 g64": {"method": "rtn", "bits": 4, "symmetric": False, "group_size": 64, "embedding_bits": 8},
           "int8": {"method": "int8", "embeddings": True}}


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         tie_word_embeddings=True, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.fixture
def fast_only(monkeypatch):
    """The kernel choice of every quantized layer sees torch's kernels and the decoded weight (MatMulNBits
    is left out); a kernel is used only where it passes the layer's reference check."""
    forget_choices()
    monkeypatch.setattr(nbits, "supports", lambda *a: False)
    monkeypatch.setattr(quant_linear, "fast_int_mm", lambda: False)   # the same candidates on every CPU class
    monkeypatch.setattr(quant_linear, "has_fbgemm", lambda: False)
    yield
    forget_choices()


def _quantized(name: str) -> nn.Module:
    return sk.apply_(_llama(), sk.make_config(**CONFIGS[name]), None)


def _greedy(model, ids, **options) -> torch.Tensor:
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0, **options)
    return out[0, ids.shape[1]:]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_path_logits_and_greedy_tokens_match_the_exact_path(fast_only, name):
    model = _quantized(name)
    ids = torch.randint(1, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        fast_tokens = _greedy(model, ids)   # the first calls settle the kernels
    choices = {n: s["choices"].get("rows<=1") for n, s in runtime_report(model)["layers"].items()}
    assert set(choices.values()) <= {"pack", "dense", None}, choices
    with kernel_mode("dense"):
        exact_tokens = _greedy(model, ids)
    sequence = torch.cat([ids[0], exact_tokens])[None]
    with torch.inference_mode():
        with kernel_mode("dense"):
            exact = model(sequence).logits[0, PROMPT - 1:-1]
        out = model(ids, use_cache=True)
        fast = [out.logits[0, -1]]
        for i in range(NEW - 1):   # one-token steps with the KV cache: the rows<=1 kernels
            out = model(sequence[:, PROMPT + i:PROMPT + i + 1], past_key_values=out.past_key_values, use_cache=True)
            fast.append(out.logits[0, -1])
    fast = torch.stack(fast)
    assert rel_err(fast, exact) < 1e-2   # bf16 activations and scales: ~3e-3 here
    top2 = exact.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02 * exact.std(-1)
    agree = fast_tokens == exact_tokens
    first_tie = int((~clear).nonzero()[0]) if (~clear).any() else NEW
    assert agree[:first_tie].all(), "greedy tokens differ before any near tie of the exact path"


@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_tokens(fast_only, monkeypatch):
    import time

    from slimkit.nn.weight_only import QuantLinear
    from slimkit.zoo.generate import _compiled, check_compiler

    check_compiler()
    dense = QuantLinear._dense
    # the decoded copy made slow, so batch 1 settles on torch's int4pack kernel whatever the timing noise
    monkeypatch.setattr(QuantLinear, "_dense", lambda self, x: (time.sleep(0.002), dense(self, x))[1])
    model = _quantized("int4 g64")
    ids = torch.randint(1, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        _greedy(model, ids)
    eager = _greedy(model, ids, cache_implementation="static")
    assert kernels.settled_kernel(model.model.layers[0].mlp.up_proj, 1) is not None
    assert torch.equal(_greedy(model, ids, **_compiled(True)), eager)
