"""Hostile YAML recipes (issue 22): refused fast, in one line naming the file, line and key."""

from __future__ import annotations

import time

import pytest
import yaml

from cli_runner import cli
from slimkit.core.errors import ConfigError
from slimkit.pipeline.recipe_yaml import MAX_BYTES, dump_yaml, load_yaml
from slimkit.pipeline.recipes import load_recipe

BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + BOMB + "stages: [{method: int8}]\n"


def _recipe(tmp_path, text: str | bytes):
    path = tmp_path / "r.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _refused(path, *needles: str) -> str:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_recipe(str(path))
    assert time.perf_counter() - start < 10  # a hang guard (issue #22's 10 s bound), not a speed check
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    assert len(BOMB) < 700     # nine levels of nine: 9**9 strings if expanded
    _refused(_recipe(tmp_path, BOMB), "r.yaml:2:", "aliases")


def test_any_alias_is_refused_but_a_lone_anchor_is_fine(tmp_path):
    _refused(_recipe(tmp_path, "stages:\n  - &s {method: magnitude, sparsity: 0.5}\n  - *s\n"), ":3:", "*s")
    recipe = load_recipe(str(_recipe(tmp_path, "stages:\n  - &s {method: magnitude, sparsity: 0.5}\n")))
    assert recipe.stages[0].sparsity == 0.5


def test_deep_nesting_and_too_many_nodes_are_refused(tmp_path):
    _refused(_recipe(tmp_path, "a: " + "[" * 200 + "]" * 200 + "\nstages: [{method: int8}]\n"), "nested deeper")
    _refused(_recipe(tmp_path, "a: [" + "1, " * 200_000 + "]\nstages: [{method: int8}]\n"), "YAML nodes")
    _refused(_recipe(tmp_path, "#" * (MAX_BYTES + 1)), "at most")


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path):
    _refused(_recipe(tmp_path, "stages:\n  - method: kmeans\n    bits: 4\n    bits: 8\n"),
             "r.yaml:4:", "duplicate key 'bits'", "line 3")
    _refused(_recipe(tmp_path, "stages: [{method: int8}]\nstages: [{method: rtn}]\n"), "duplicate key 'stages'")


@pytest.mark.parametrize("line, needle", [
    ("bits: true", "bits: must be an integer, got the bool True"),
    ("bits: 4.0", "bits: must be an integer, got 4.0"),
    ("bits: '4'", "bits: must be an integer, got the string '4'"),
    ("mse: 1", "mse: must be true or false"),
    ("bits: " + "9" * 5001, "an integer of 5001 digits"),
    ("targets: [[fc1]]", "targets"),
])
def test_values_of_the_wrong_type_are_refused_not_coerced(tmp_path, line, needle):
    message = _refused(_recipe(tmp_path, f"stages:\n  - method: rtn\n    {line}\n"), needle)
    assert "r.yaml:3:" in message and len(message) < 300


@pytest.mark.parametrize("line", ["batch_size: 100000000000000000000", "epochs: -9223372036854775809",
                                  "student: {widths: [100000000000000000000, 8]}"])
def test_integers_beyond_64_bits_are_refused(tmp_path, line):
    """torch takes no larger int: a distill batch_size of 10**20 was 'internal error' in a DataLoader
    (found by the tree fuzzer, 100,000 cases at seed 13)."""
    message = _refused(_recipe(tmp_path, f"stages:\n  - method: distill\n    {line}\n"),
                       "integers must lie between -2**63 and 2**63 - 1")
    assert "r.yaml:3:" in message


@pytest.mark.parametrize("text, needle", [
    ("stages:\n  - method: [rtn]\n", "'method' must be a method name, got a list"),
    ("description: [a, b]\nstages: [{method: int8}]\n", "'description' must be a string, got a list"),
    ("stages:\n  - method: int8\n    1: 2\n", "option names must be words"),
    ("1: x\nstages: [{method: int8}]\n", "unknown recipe key 1"),
])
def test_lists_and_numbers_where_words_belong_are_refused(tmp_path, text, needle):
    _refused(_recipe(tmp_path, text), needle)


def test_binary_and_control_characters_are_refused(tmp_path):
    _refused(_recipe(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\xff"), "not UTF-8")
    _refused(_recipe(tmp_path, "stages:\n  - method: int8\x1b[2J\n"), "r.yaml:2:", "control character")


def test_dump_yaml_never_writes_an_alias_and_reads_back():
    shared = ["fc1"]
    doc = {"stages": [{"method": "rtn", "targets": shared}, {"method": "kmeans", "targets": shared}]}
    text = dump_yaml(doc)
    assert "*" not in text and "&" not in text
    assert load_yaml(text, "x") == doc
    assert "&" in yaml.safe_dump(doc)       # what the plain dumper would have written


@pytest.mark.parametrize("text", [BOMB, "stages:\n  - method: rtn\n    bits: true\n", b"\xff\xfe\x00garbage",
                                  "stages:\n  - method: kmeans\n    bits: 4\n    bits: 5\n",
                                  "stages:\n  - method: kmeans\n    bits: " + "7" * 5001 + "\n"])
def test_the_cli_exits_2_with_one_line(tmp_path, monkeypatch, capsys, text):
    path = _recipe(tmp_path, text)
    start = time.perf_counter()
    code, out, err = cli(monkeypatch, capsys, "compress", "builtin:lenet-300-100", "--recipe", str(path),
                         "--out", str(tmp_path / "o.slim"))
    assert time.perf_counter() - start < 10
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("slimkit: error: ") and str(path) in lines[-1]
    assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "o.slim").exists()


def test_a_recipe_of_a_thousand_stages_is_refused_before_it_is_checked(tmp_path):
    """Found by the tree fuzzer: 1,000 stages took more than 10 s of CPU to check before any work."""
    from slimkit.core.errors import ConfigError
    from slimkit.pipeline.recipes import MAX_STAGES, load_recipe

    path = tmp_path / "many.yaml"
    path.write_text("stages:\n" + "  - method: int8\n" * 1000)
    with pytest.raises(ConfigError, match=f"at most {MAX_STAGES} stages"):
        load_recipe(str(path))
    path.write_text("stages:\n" + "  - method: int8\n" * MAX_STAGES)
    assert len(load_recipe(str(path)).stages) == MAX_STAGES
