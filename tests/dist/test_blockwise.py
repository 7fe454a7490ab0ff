"""Layer-sequential (block by block) GPTQ equals the full-forward driver on a tiny BERT."""

from __future__ import annotations

import torch

import slimkit as sk
from slimkit.dist import calibration
from slimkit.dist.blocks import BlockChain, find_blocks
from slimkit.nn.quant_linear import QuantLinear
from slimkit.quantization.api import GPTQConfig


def _codes(model):
    return {n: m.state_dict() for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def test_finds_the_encoder_blocks_and_checks_they_chain(make_bert, tokens_task):
    model, task = make_bert(), tokens_task
    assert find_blocks(model) == [f"encoder.layer.{i}" for i in range(3)]
    chain = BlockChain.trace(model, task, task.calibration())
    assert chain is not None and len(chain.calls) == 4
    # running the cached inputs through every block gives the model's last hidden states
    for _name, block in chain.blocks():
        chain.advance(block)
    with torch.no_grad():
        want = model(**task.calibration()[1]).last_hidden_state
    torch.testing.assert_close(chain.calls[1].hidden, want)


def test_no_chain_without_repeated_blocks():
    from torch import nn

    assert find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) == []


def test_blockwise_gptq_equals_full_forward_driver(monkeypatch, make_bert, tokens_task):
    task, config = tokens_task, GPTQConfig(bits=4, group_size=16, samples=32)

    def quantize(model):
        calls = []
        model.embeddings.register_forward_hook(lambda *_: calls.append(1))
        return sk.quantize_(model, config, data=task), len(calls)

    blockwise, prefix_runs = quantize(make_bert())
    monkeypatch.setattr(calibration, "find_blocks", lambda _model: [])
    full, full_prefix_runs = quantize(make_bert())
    assert prefix_runs * 4 < full_prefix_runs  # the model's prefix ran once per batch, not once per stage
    a, b = _codes(blockwise), _codes(full)
    assert a.keys() == b.keys() and len(a) == 6 * 3 + 1
    for name in a:
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], msg=f"{name}.{key}")


def test_blockwise_lowrank_pca_equals_one_pass(monkeypatch, make_bert, tokens_task):
    from slimkit.sharing import apply_lowrank
    from slimkit.sharing.api import LowRankConfig

    config = LowRankConfig(energy=0.9, mode="pca", calibration_samples=32)
    bert = make_bert()
    linears = [(n, m) for n, m in bert.named_modules() if isinstance(m, torch.nn.Linear)]
    groups = list(apply_lowrank.second_moments_by_block(bert, tokens_task, linears, 32))
    assert [len(g) for g in groups] == [6, 6, 6, 1]  # one group per block, then the pooler
    query = "encoder.layer.0.attention.self.query"
    one_pass = apply_lowrank.input_second_moments(bert, tokens_task, linears, 32)
    torch.testing.assert_close(groups[0][query], one_pass[query])
    blockwise = sk.share_(make_bert(), config, data=tokens_task)
    monkeypatch.setattr(apply_lowrank, "find_blocks", lambda _model: [])
    one_pass = sk.share_(make_bert(), config, data=tokens_task)
    assert blockwise.slimkit_ranks == one_pass.slimkit_ranks and len(one_pass.slimkit_ranks) > 10
    a, b = blockwise.state_dict(), one_pass.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


class _Residual(torch.nn.Module):
    """Blocks whose outputs are added outside them: not a chain, so the full forward is used."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())
                                          for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


def test_blocks_that_do_not_chain_fall_back_to_the_full_forward():
    from slimkit.core.task import Task

    class _Task(Task):
        def example_inputs(self, batch_size):
            return {"x": torch.randn(batch_size, 8)}

        def score(self, model):
            return 1.0

        def calibration(self, n=256):
            return [{"x": torch.randn(16, 8, generator=torch.Generator().manual_seed(i))} for i in range(2)]

    model, task = _Residual(), _Task()
    assert find_blocks(model) == ["layers.0", "layers.1"]
    assert BlockChain.trace(model, task, task.calibration()) is None
    quantized = sk.quantize_(model, GPTQConfig(bits=4, group_size=8), data=task)
    assert all(isinstance(quantized.layers[i][0], QuantLinear) for i in range(2))


def test_a_kv_cache_passed_positionally_is_not_replayed(tmp_path):
    """GPT-2 blocks get their cache as a positional argument: replaying it would append keys on every
    pass (attention over 2x, 3x the tokens). The cached calls drop it, so blockwise GPTQ runs."""
    tf = __import__("pytest").importorskip("transformers")
    from slimkit.zoo.token_task import token_task

    torch.manual_seed(0)
    tf.GPT2Model(tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(tmp_path)
    model, task = sk.resolve(str(tmp_path)), token_task(tmp_path)
    chain = BlockChain.trace(model, task, task.calibration(8))
    assert chain is not None and all(a is None or isinstance(a, torch.Tensor) for a in chain.calls[0].args)
    sk.quantize_(model, GPTQConfig(bits=4, group_size=16, samples=8), data=task)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 4 * 2
