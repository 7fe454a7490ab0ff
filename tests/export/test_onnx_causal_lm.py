"""ONNX export of causal LMs (issue 21): the graph maps token ids to logits (dynamic batch and
sequence), ONNX Runtime agrees with slimkit, and a .slim made from a Hugging Face folder exports
without a task (its tokenizer is not stored: example ids come from the vocabulary)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slimkit as sk
from cli_runner import cli
from slimkit.export.onnx import export
from slimkit.zoo.hf import load_hf_folder
from tiny_lm import save_causal_lm

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logits_in_onnx_runtime_equal_slimkit(arch, tmp_path):
    folder = save_causal_lm(arch, tmp_path / arch)
    model = load_hf_folder(folder)
    sk.quantize_(model, sk.WeightOnlyConfig(bits=4, group_size=32))
    path = tmp_path / "x.slim"
    sk.save(model, path)
    loaded = sk.load(path, runtime="torch")
    report = export(loaded, tmp_path / "x.onnx")
    assert report["max_abs_diff"] < 1e-3 and report["coded_weights"] > 0

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    ids = torch.randint(0, 128, (3, 11), generator=torch.Generator().manual_seed(1))   # other batch and length
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones((3, 11), dtype=np.int64)}
    theirs = session.run(None, {k: v for k, v in feed.items() if k in {i.name for i in session.get_inputs()}})[0]
    with torch.no_grad():
        ours = loaded(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    assert theirs.shape == (3, 11, 128)
    assert np.abs(theirs - ours.numpy()).max() < 1e-3


def test_cli_exports_a_streamed_causal_lm_without_data(monkeypatch, capsys, tmp_path):
    folder = save_causal_lm("llama", tmp_path / "llama")
    code, _, err = cli(monkeypatch, capsys, "-q", "compress", str(folder), "--stream", "--recipe", "int8",
                       "--out", str(tmp_path / "s.slim"))
    assert code == 0, err
    code, out, err = cli(monkeypatch, capsys, "export", str(tmp_path / "s.slim"), "--onnx", str(tmp_path / "s.onnx"),
                         "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["max_abs_diff"] < 1e-3 and (tmp_path / "s.onnx").is_file()


def test_a_tied_head_is_one_weight_in_the_graph(tmp_path):
    import onnx
    from onnx import numpy_helper

    model = load_hf_folder(save_causal_lm("qwen2", tmp_path / "qwen2"))
    export(model, tmp_path / "q.onnx", integer=False)
    table = model.get_input_embeddings().weight.detach().numpy()
    copies = [t for t in (numpy_helper.to_array(i) for i in onnx.load(tmp_path / "q.onnx").graph.initializer)
              if t.shape in (table.shape, table.T.shape) and (np.array_equal(t, table) or np.array_equal(t, table.T))]
    assert len(copies) == 1
