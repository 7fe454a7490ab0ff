from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.io.artifact import append_codec, read_raw, set_codec, write_raw
from slimkit.io.layout import PACK_LIMIT, manifest_json
from slimkit.io.safetensors_file import SafetensorsReader
from slimkit.surgery import replace_module


def test_round_trip_is_exact_for_builtin_models(lenet, lenet5_trained, tmp_path):
    for model in (lenet, lenet5_trained):
        path = tmp_path / "m.slim"
        size = sk.save(model, path)
        assert size == path.stat().st_size
        loaded = sk.load(path)
        assert type(loaded) is type(model)
        for key, value in model.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key]), key
        x = torch.rand(16, 64)
        assert torch.equal(model(x), loaded(x))
        decoded = sk.load_state_dict(path)
        assert set(decoded) == set(model.state_dict())


def test_file_is_safetensors_with_a_json_manifest(lenet, tmp_path):
    path = tmp_path / "m.slim"
    sk.save(lenet, path, info={"note": "hello"})
    with SafetensorsReader(path) as reader:
        manifest = json.loads(manifest_json(reader))
    assert manifest["format"] == "slimkit" and manifest["version"] == 1
    assert manifest["base"] == {"kind": "zoo", "name": "lenet-300-100"}
    assert manifest["info"] == {"note": "hello"}
    assert manifest["tensors"]["fc1.weight"]["shape"] == [300, 64]


def test_structural_edits_replay_on_load(lenet, tmp_path):
    replace_module(lenet, "fc2", nn.Sequential(nn.Linear(300, 16, bias=False), nn.Linear(16, 100)))
    replace_module(lenet, "fc2.0", nn.Linear(300, 16, bias=False))  # superseded spec is compacted
    path = tmp_path / "m.slim"
    sk.save(lenet, path)
    edits = sk.read_manifest(path).edits
    assert [e["module"] for e in edits] == ["fc2"]
    loaded = sk.load(path)
    x = torch.rand(4, 64)
    assert torch.equal(lenet(x), loaded(x))
    assert loaded.fc2[0].out_features == 16


def test_codec_chain_shrinks_file_and_survives_resave(lenet, tmp_path):
    with torch.no_grad():
        lenet.fc1.weight.copy_(torch.randint(0, 16, lenet.fc1.weight.shape).float())
    plain = sk.save(lenet, tmp_path / "plain.slim")
    set_codec(lenet.fc1, "weight", [{"codec": "cast", "to": "uint8"}])
    append_codec(lenet.fc1, "weight", {"codec": "bitpack", "bits": 4})
    smaller = sk.save(lenet, tmp_path / "a.slim")
    assert plain - smaller > 0.85 * lenet.fc1.weight.numel() * 4
    loaded = sk.load(tmp_path / "a.slim")
    assert torch.equal(loaded.fc1.weight, lenet.fc1.weight)
    again = sk.save(loaded, tmp_path / "b.slim")
    assert again == smaller, "a loaded model must save with the same encoding"


def test_tied_tensors_are_stored_once(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model[1].weight = model[0].weight
    sk.zoo.tag(model, {"kind": "user"})
    path = tmp_path / "tied.slim"
    sk.save(model, path)
    manifest = sk.read_manifest(path)
    assert manifest.aliases == {"1.weight": "0.weight"}
    loaded = sk.load(path, model=nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))
    assert loaded[1].weight is loaded[0].weight


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot capture it, so the file needs `model=`."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_user_model_needs_architecture_when_it_cannot_be_captured(tmp_path):
    model = _Branchy()
    path = tmp_path / "u.slim"
    sk.save(model, path)
    assert sk.read_manifest(path).base["kind"] == "user"
    with pytest.raises(sk.SlimError, match=r"could not be captured at save time \(torch.fx cannot trace _Branchy: "
                                           r".*\): pass its architecture, load\(path, model=...\)"):
        sk.load(path)
    loaded = sk.load(path, model=_Branchy())
    assert torch.equal(loaded.fc.weight, model.fc.weight)
    arrays, manifest = read_raw(path)           # a file written before graphs: no reason recorded
    manifest["base"] = {"kind": "user"}
    write_raw(path, arrays, manifest)
    with pytest.raises(sk.SlimError, match="holds no architecture: pass its architecture"):
        sk.load(path)


def test_user_model_loads_without_architecture_when_captured(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    path = tmp_path / "u.slim"
    sk.save(model, path)
    assert sk.read_manifest(path).base["kind"] == "graph"
    assert torch.equal(sk.load(path)(torch.ones(1, 3)), model(torch.ones(1, 3)))
    loaded = sk.load(path, model=nn.Sequential(nn.Linear(3, 2)))
    assert type(loaded) is nn.Sequential and torch.equal(loaded[0].weight, model[0].weight)


def test_random_and_truncated_files_get_one_line_errors(lenet, tmp_path):
    good = tmp_path / "good.slim"
    sk.save(lenet, good)
    blob = good.read_bytes()
    cases = {
        "random": os.urandom(4096),
        "truncated": blob[: len(blob) // 2],
        "header-only": blob[:200],
        "empty": b"",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.slim"
        path.write_bytes(data)
        with pytest.raises(sk.SlimFormatError) as err:
            sk.load(path)
        assert "\n" not in str(err.value), name


def test_manifest_lies_are_refused(lenet, tmp_path):
    from slimkit.io.artifact import read_raw, write_raw
    from slimkit.io.safetensors_file import atomic_write, serialize

    path = tmp_path / "m.slim"
    sk.save(lenet, path)
    arrays, manifest = read_raw(path)
    write_raw(path, arrays, manifest)
    assert torch.equal(sk.load(path).fc1.weight, lenet.fc1.weight), "read_raw/write_raw round trip"

    def write(m):
        write_raw(path, arrays, m)

    bad = copy.deepcopy(manifest)
    bad["tensors"]["fc1.weight"]["shape"] = [300, 65]
    write(bad)
    with pytest.raises(sk.SlimFormatError, match="fc1.weight"):
        sk.load(path)
    bad = copy.deepcopy(manifest)
    bad["version"] = 99
    write(bad)
    with pytest.raises(sk.SlimFormatError, match="version 99"):
        sk.load(path)
    bad = copy.deepcopy(manifest)
    bad["edits"] = [{"op": "replace", "module": "fc1", "spec": {"type": "os.system"}}]
    write(bad)
    with pytest.raises(sk.SlimFormatError, match="unknown module type"):
        sk.load(path)
    bad = copy.deepcopy(manifest)
    bad["unexpected"] = 1
    write(bad)
    with pytest.raises(sk.SlimFormatError, match="invalid manifest"):
        sk.load(path)
    atomic_write(path, serialize(arrays, {}))
    with pytest.raises(sk.SlimFormatError, match="not a .slim file"):
        sk.load(path)


def test_small_files_are_packed_and_large_files_keep_named_tensors(lenet, tmp_path):
    small = tmp_path / "small.slim"
    sk.save(lenet, small)
    with SafetensorsReader(small) as reader:
        assert reader.keys() == ["payload"] and "slimkit.zb" in reader.metadata
    big_model = nn.Sequential(nn.Linear(600, 600))
    assert big_model[0].weight.nbytes > PACK_LIMIT
    big = tmp_path / "big.slim"
    sk.save(big_model, big)
    with SafetensorsReader(big) as reader:
        assert sorted(reader.keys()) == ["0.bias", "0.weight"]
        assert json.loads(reader.metadata["slimkit"])["tensors"]["0.weight"]["shape"] == [600, 600]
    loaded = sk.load(big, model=nn.Sequential(nn.Linear(600, 600)))
    assert torch.equal(loaded[0].weight, big_model[0].weight)


def test_packed_index_and_compressed_manifest_are_validated(lenet, tmp_path):
    import base64
    import zlib

    from slimkit.io.safetensors_file import atomic_write, serialize

    path = tmp_path / "m.slim"
    sk.save(lenet, path)
    with SafetensorsReader(path) as reader:
        payload = np.array(reader.get("payload"))
        manifest = json.loads(manifest_json(reader))

    def write(meta):
        atomic_write(path, serialize({"payload": payload}, meta))

    def z(obj):
        return base64.b64encode(zlib.compress(json.dumps(obj).encode())).decode()

    first, second = sorted(manifest["packed"], key=lambda k: manifest["packed"][k][2])[:2]
    bad = copy.deepcopy(manifest)
    bad["packed"][second][2] = bad["packed"][first][2]
    write({"slimkit.z": z(bad)})
    with pytest.raises(sk.SlimFormatError, match="overlap"):
        sk.load(path)
    bad = copy.deepcopy(manifest)
    bad["packed"][first][2] = len(payload) + 8
    write({"slimkit.z": z(bad)})
    with pytest.raises(sk.SlimFormatError, match="outside the file"):
        sk.load(path)
    write({"slimkit.z": "not base64 !!"})
    with pytest.raises(sk.SlimFormatError, match="compressed manifest is corrupt"):
        sk.load(path)
    bomb = base64.b64encode(zlib.compress(b" " * (80 * 1024 * 1024))).decode()
    write({"slimkit.z": bomb})
    with pytest.raises(sk.SlimFormatError, match="truncated or too large"):
        sk.load(path)


def test_tail_manifest_is_validated_and_old_base64_files_still_load(lenet, tmp_path):
    import base64
    import zlib

    from slimkit.io.safetensors_file import atomic_write, serialize

    path = tmp_path / "m.slim"
    sk.save(lenet, path)
    with SafetensorsReader(path) as reader:
        payload = np.array(reader.get("payload"))
        tail = int(reader.metadata["slimkit.zb"])
        manifest = json.loads(manifest_json(reader))
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = lenet(x)

    def write(arr, meta):
        atomic_write(path, serialize({"payload": arr}, meta))

    # the pre-dictionary layout: same arrays, manifest zlib + base64 in the metadata
    legacy = base64.b64encode(zlib.compress(json.dumps(manifest).encode())).decode()
    write(payload[:-tail].copy(), {"slimkit.z": legacy})
    with torch.no_grad():
        assert torch.equal(sk.load(path, runtime="torch")(x), expected)
    for bad_length in ("0", "-3", "x", str(payload.size + 1)):
        write(payload, {"slimkit.zb": bad_length})
        with pytest.raises(sk.SlimFormatError, match="does not fit the payload"):
            sk.load(path)
    write(payload, {"slimkit.zb": str(tail - 1)})       # the stream is cut: not a whole manifest
    with pytest.raises(sk.SlimFormatError, match="compressed manifest"):
        sk.load(path)
    garbled = payload.copy()
    garbled[-tail:] ^= np.uint8(0x5A)
    write(garbled, {"slimkit.zb": str(tail)})
    with pytest.raises(sk.SlimFormatError):
        sk.load(path)
    # an array may not reach into the manifest bytes
    cut = payload[:-1].copy()
    write(cut, {"slimkit.zb": str(tail)})
    with pytest.raises(sk.SlimFormatError):
        sk.load(path)


def test_large_models_are_written_by_the_one_writer(tmp_path, monkeypatch):
    """Above the packed layout's limit, `save` writes through `SlimWriter` (the writer streaming uses):
    same size as the named layout's bytes, same tensors back."""
    from slimkit.io import layout
    from slimkit.io.artifact import encode_model

    model = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.Linear(600, 10))   # ~1.5 MB
    used = []
    real = layout.SlimWriter.finish
    monkeypatch.setattr(layout.SlimWriter, "finish",
                        lambda self, m, *rest: used.append(self.path) or real(self, m, *rest))
    size = sk.save(model, tmp_path / "big.slim")
    assert used == [tmp_path / "big.slim"]
    arrays, manifest = encode_model(model)
    assert size == (tmp_path / "big.slim").stat().st_size == sum(
        len(c) if isinstance(c, bytes) else c.nbytes for c in layout.file_chunks(arrays, manifest))
    loaded = sk.load_state_dict(tmp_path / "big.slim")
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.slim"]   # no temporary file left
