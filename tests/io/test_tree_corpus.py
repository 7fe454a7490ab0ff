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
    """The fuzzer's worker settings (one thread, warnings and logging off) for this module only: left
    on, they silenced the CLI's warning lines in tests run after it."""
    import logging
    import warnings

    import torch

    threads, disabled = torch.get_num_threads(), logging.root.manager.disable
    tf = sys.modules.get("transformers")
    verbosity = tf.logging.get_verbosity() if tf is not None else logging.WARNING   # transformers' default
    with warnings.catch_warnings():
        setup()
        yield
    logging.disable(disabled)
    torch.set_num_threads(threads)
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity(verbosity)


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


def test_a_case_that_would_write_too_much_is_cut_back_to_its_first_edit():
    """Two edits can nest a 100,000-entry list inside each of 1,000 copies of a stage: a 900 MB recipe
    whose writing alone took longer than the fuzzer's wall limit (run 13, case 89323, seen as a hang)."""
    from fuzz.tree_cases import MAX_BYTES, case_bytes
    from fuzz.tree_docs import larger_than
    from fuzz.tree_seeds import Seed

    stage = {"method": "apoz", "ignore": ["conv1"]}
    recipe = Seed("recipe", "recipe-x", {"stages": [stage], "description": "x"})
    grow = (("stages",), [stage] * 1000)
    nest = (("stages", 0, "ignore"), ["conv1"] * 100_000)
    assert larger_than({"a": [[0] * 100_000] * 1000}, MAX_BYTES)
    assert not larger_than({"a": [0] * 100_000}, MAX_BYTES)
    text = case_bytes(recipe, [grow, nest])
    assert len(text) < MAX_BYTES
    assert text.count(b"apoz") == 1000 and text.count(b"conv1") == 1000   # the first edit, alone
    with pytest.raises(ValueError, match="larger than"):
        case_bytes(recipe, [(("stages",), [{"ignore": ["c"] * 100_000}] * 1000)])
