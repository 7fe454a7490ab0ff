"""Every input the structure-aware fuzzer ever saved (fuzz/corpus/tree/: .slim files, recipes, Hugging
Face folders, each with a .txt saying what once failed) is now accepted or refused with a one-line
SlimError (the CLI's exit 2), through the same entry points the fuzzer drives (`fuzz/tree_target.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fuzz.tree_target import kind_of, run, setup  # noqa: E402

CORPUS = sorted(p for p in (ROOT / "fuzz" / "corpus" / "tree").glob("*") if p.suffix != ".txt")


@pytest.fixture(autouse=True, scope="module")
def _quiet():
    setup()


def test_corpus_is_present():
    assert CORPUS, "fuzz/corpus/tree/ holds the inputs the tree fuzzer found"
    assert {kind_of(p) for p in CORPUS} <= {"slim", "recipe", "hf"}


@pytest.mark.parametrize("entry", CORPUS, ids=[p.name for p in CORPUS])
def test_tree_corpus_entry(entry):
    assert run(kind_of(entry), entry) in ("ok", "forward", "refused")


def test_cases_are_reproducible_from_the_seed():
    """Case i of run s is the same input whoever draws it (the fuzzer's --seed promise)."""
    import random

    from fuzz.tree_cases import case_bytes, mutate, parse_slim, vocabulary
    from fuzz.tree_seeds import Seed

    slim = parse_slim("slim-int8", (ROOT / "fuzz" / "corpus" / "seeds" / "lenet-300-100-int8").read_bytes())
    recipe = Seed("recipe", "recipe-x", {"stages": [{"method": "kmeans", "bits": 4}], "description": "x"})
    vocab = vocabulary([slim, recipe])
    for seed in (slim, recipe):
        drawn = [case_bytes(seed, mutate(seed, random.Random(f"7:{i}"), vocab)) for i in range(20)]
        again = [case_bytes(seed, mutate(seed, random.Random(f"7:{i}"), vocab)) for i in range(20)]
        assert drawn == again
        assert len(set(drawn)) > 10        # and the cases differ from each other
    from fuzz.target import check

    assert check(case_bytes(slim, [])) == "loaded"     # a seed written back with no edit is still valid
