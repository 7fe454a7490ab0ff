"""Mutated artifacts: loading either works or raises SlimFormatError / SlimError, never anything else."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit as sk
from slimkit.io.artifact import read_raw, write_raw


def _artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mut")
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    sk.zoo.tag(model, {"kind": "user"})
    from slimkit.io.artifact import set_codec

    with torch.no_grad():
        model[0].weight.copy_(torch.randint(0, 4, (8, 16)).float())
    set_codec(model[0], "weight", [{"codec": "cast", "to": "uint8"}, {"codec": "bitpack", "bits": 2}])
    packed = folder / "packed.slim"
    sk.save(model, packed)
    arrays, manifest = read_raw(packed)
    named = folder / "named.slim"
    write_raw(named, arrays, manifest)
    return [packed.read_bytes(), named.read_bytes()]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return _artifacts(tmp_path_factory)


def _arch():
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 1), edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1,
                                               max_size=6), cut=st.one_of(st.none(), st.floats(0, 1)))
def test_mutated_files_fail_cleanly(blobs, tmp_path_factory, which, edits, cut):
    blob = bytearray(blobs[which])
    for where, value in edits:
        blob[int(where * (len(blob) - 1))] = value
    if cut is not None:
        blob = blob[: int(cut * len(blob))]
    path = tmp_path_factory.mktemp("m") / "x.slim"
    path.write_bytes(bytes(blob))
    try:
        sk.load(path, model=_arch())
    except sk.SlimError as exc:
        assert "\n" not in str(exc)
