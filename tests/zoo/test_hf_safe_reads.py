"""A Hugging Face folder loaded in memory is read by slimkit's own pread reader, not through
transformers' memory map (issue 22): a shard truncated while it is read is a one-line error with
exit 2, never SIGBUS, and no file is left behind; the model is the one from_pretrained gave."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.io import shards
from slimkit.io.safetensors_file import SafetensorsReader


def _bert_config():
    import transformers as tf

    return tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny random BERT saved by save_pretrained, once whole and once in 64 KB shards."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.AutoModel.from_config(_bert_config())
    whole, sharded = tmp_path_factory.mktemp("bert"), tmp_path_factory.mktemp("bert-sharded")
    model.save_pretrained(whole, safe_serialization=True)
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="64KB")
    return {"model": model, "whole": whole, "sharded": sharded}


@pytest.mark.parametrize("layout", ["whole", "sharded"])
def test_folder_loads_the_same_weights_through_slimkits_reader(bert, layout, monkeypatch):
    reads = []
    real = SafetensorsReader.get

    def counting(self, key):
        reads.append(key)
        return real(self, key)

    monkeypatch.setattr(SafetensorsReader, "get", counting)
    if layout == "sharded":
        assert shards.is_sharded(bert[layout]) and len(list(bert[layout].glob("*.safetensors"))) > 2
    model = sk.resolve(str(bert[layout]))
    want = bert["model"].state_dict()
    assert len(reads) >= len(want) - 1, "weights were not read by SafetensorsReader"
    got = model.state_dict()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    assert model.config.name_or_path == str(bert[layout].resolve())


def test_folder_truncated_while_read_is_a_format_error(bert, tmp_path, monkeypatch):
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in bert["whole"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    weights = folder / "model.safetensors"
    real = SafetensorsReader.get

    def truncate_after_first(self, key):
        out = real(self, key)
        os.truncate(weights, 4096)   # the rest of the file is gone after the header was checked
        return out

    monkeypatch.setattr(SafetensorsReader, "get", truncate_after_first)
    with pytest.raises(SlimFormatError, match="truncated or changed while being read"):
        sk.resolve(str(folder))


def test_index_naming_a_missing_tensor_or_no_weights_file(bert, tmp_path):
    folder = tmp_path / "renamed"
    folder.mkdir()
    (folder / "config.json").write_bytes((bert["whole"] / "config.json").read_bytes())
    (folder / "weights.safetensors").write_bytes((bert["whole"] / "model.safetensors").read_bytes())
    with pytest.raises(SlimError, match="no model.safetensors.index.json or model.safetensors"):
        sk.resolve(str(folder))
    index = bert["sharded"] / "model.safetensors.index.json"
    lying = tmp_path / "lying"
    lying.mkdir()
    for f in bert["sharded"].iterdir():
        (lying / f.name).write_bytes(f.read_bytes())
    text = index.read_text().replace('"weight_map": {', '"weight_map": {"not.there": "model-00001-of-' +
                                      f'{len(list(bert["sharded"].glob("*.safetensors"))):05d}.safetensors", ', 1)
    (lying / index.name).write_text(text)
    with pytest.raises(SlimFormatError, match="'not.there' is not in its shard"):
        sk.resolve(str(lying))


CLI_TRUNCATING = textwrap.dedent("""
    import os, sys
    from slimkit.io.safetensors_file import SafetensorsReader
    real = SafetensorsReader.get
    def get(self, key):
        out = real(self, key)
        if self.path.name == "model.safetensors":
            os.truncate(self.path, 4096)
        return out
    SafetensorsReader.get = get
    from slimkit.cli.main import run
    sys.argv = ["slimkit", *sys.argv[1:]]
    run()
""")


def test_cli_on_a_folder_truncated_while_read_exits_2_without_sigbus(bert, tmp_path):
    folder, out = tmp_path / "hf", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for f in bert["whole"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    proc = subprocess.run([sys.executable, "-c", CLI_TRUNCATING, "compress", str(folder), "--recipe", "int8",
                           "--out", str(out / "bert.slim")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])   # SIGBUS would be -7
    errors = [line for line in proc.stderr.splitlines() if line.startswith("slimkit: error")]
    assert len(errors) == 1 and "truncated or changed while being read" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert list(out.iterdir()) == [], "files left in the output folder"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in bert["whole"].iterdir())
