"""The fuzz harness itself: the mutator is deterministic and reaches inside the manifest, the target
lets only one-line SlimFormatErrors through and enforces the decoded-size budget, and a short
pure-Python run over the seeds finds nothing (the long run is `make fuzz`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import fuzz.target as target  # noqa: E402
from fuzz.fuzz_load import run_pure  # noqa: E402
from fuzz.mutate import get_manifest, join_file, mutate, put_manifest, split_file  # noqa: E402

from slimkit.core.errors import SlimError, SlimFormatError  # noqa: E402

SEEDS = ROOT / "fuzz" / "corpus" / "seeds"


def _seed(name: str) -> bytes:
    return (SEEDS / name).read_bytes()


@pytest.mark.parametrize("name", ["lenet-300-100-deep-compression", "lenet-300-100-deep-compression-named",
                                  "user-bitpack-legacy", "user-bitpack"])
def test_manifest_round_trip_every_layout(name):
    data = _seed(name)
    header, body = split_file(data)
    manifest, key = get_manifest(header, body)
    assert manifest["format"] == "slimkit" and key.startswith("slimkit")
    body = put_manifest(header, manifest, key, body)
    assert join_file(header, body) == data


def test_mutator_is_deterministic_and_changes_the_input():
    data = _seed("user-bitpack")
    children = [mutate(data, seed=s) for s in range(50)]
    assert children == [mutate(data, seed=s) for s in range(50)]
    assert sum(c != data for c in children) >= 45
    assert len(set(children)) >= 40


def test_target_outcomes():
    target.setup()
    assert target.check(_seed("user-bitpack")) == "loaded"
    assert target.check(b"\x00" * 3) == "rejected"
    assert target.check(_seed("user-bitpack")[:-5]) == "rejected"


def test_target_reports_foreign_exceptions(monkeypatch):
    def broken(path):
        raise ValueError("deep inside")

    monkeypatch.setattr(target, "read_manifest", broken)
    with pytest.raises(ValueError):
        target.check(_seed("user-bitpack"))

    def usage_error(path):
        raise SlimError("not a format error")

    monkeypatch.setattr(target, "read_manifest", usage_error)
    with pytest.raises(SlimError):
        target.check(_seed("user-bitpack"))

    def two_lines(path):
        raise SlimFormatError("first\nsecond")

    monkeypatch.setattr(target, "read_manifest", two_lines)
    with pytest.raises(AssertionError, match="one line"):
        target.check(_seed("user-bitpack"))


def test_target_enforces_the_decoded_budget(monkeypatch):
    monkeypatch.setattr(target, "decoded_budget", lambda size: 16)
    with pytest.raises(AssertionError, match="decoded"):
        target.check(_seed("user-bitpack"))


def test_short_pure_run_finds_nothing(tmp_path):
    report = run_pure(300, seed=7, quiet=True, regression=tmp_path)
    assert report["runs"] == 300 and report["findings"] == 0, report["finding_files"]
    assert report["loaded"] + report["rejected"] == 300
    assert report["rejected"] > 100 and report["loaded"] > 10, "mutants reach both outcomes"
    assert not list(tmp_path.iterdir())


def test_check_safety_pickle_check(tmp_path):
    """tools/check_safety.py's pickle check: its payload is live, and slimkit never runs it."""
    from tools.check_safety import check_pickles

    ok, detail = check_pickles(tmp_path)
    assert ok, detail
    assert detail.startswith("0 pickles executed; 6/6") and (tmp_path / "CONTROL").exists()
    assert not (tmp_path / "PICKLE-CODE-RAN").exists()
