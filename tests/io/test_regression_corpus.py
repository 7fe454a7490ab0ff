"""Every input that ever broke the loader (fuzz/corpus/regression/) is now refused with a one-line
SlimFormatError (files named `ok-*` must load instead), and every seed artifact loads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fuzz.target import check, setup  # noqa: E402

REGRESSION = sorted(p for p in (ROOT / "fuzz" / "corpus" / "regression").glob("*") if p.is_file())
SEEDS = sorted(p for p in (ROOT / "fuzz" / "corpus" / "seeds").glob("*") if p.is_file())


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    setup()


def test_corpus_is_present():
    assert len(SEEDS) >= 10, "run fuzz/make_seeds.py"
    assert REGRESSION, "the regression corpus holds the inputs that once failed"


@pytest.mark.parametrize("path", REGRESSION, ids=[p.name for p in REGRESSION])
def test_regression_input(path):
    expected = "loaded" if path.name.startswith("ok-") else "rejected"
    assert check(path.read_bytes()) == expected


@pytest.mark.parametrize("path", SEEDS, ids=[p.name for p in SEEDS])
def test_seed_loads(path):
    assert check(path.read_bytes()) == "loaded"
