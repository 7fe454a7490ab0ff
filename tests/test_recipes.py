from __future__ import annotations

import pytest

import slimkit as sk
from slimkit.recipes import load_recipe, shipped


def test_unknown_recipe_and_missing_file(tmp_path):
    with pytest.raises(sk.SlimError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(sk.SlimError, match="recipe file not found"):
        load_recipe(str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize("text, message", [
    ("stages: [\n  - method: x\n  bad", "line"),
    ("description: x\n", "non-empty 'stages'"),
    ("stages: []\n", "non-empty 'stages'"),
    ("stagez: [1]\nstages: [{method: a}]\n", "unknown recipe key 'stagez'"),
    ("stages:\n  - sparsity: 0.5\n", "stage 1 needs a 'method'"),
    ("stages:\n  - method: teleport\n", "method 'teleport' is not implemented"),
])
def test_bad_yaml_recipes_get_one_line_errors(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(sk.SlimError, match=message) as err:
        load_recipe(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_every_shipped_recipe_parses_or_names_its_missing_method():
    for name in shipped():
        try:
            recipe = load_recipe(name)
        except sk.SlimError as exc:
            assert "is not implemented" in str(exc), exc
            continue
        assert recipe.stages and recipe.description


def test_unknown_option_in_a_stage_is_rejected(tmp_path):
    methods = sk.methods()
    if not methods:
        pytest.skip("no method registered yet")
    name = next(iter(methods))
    path = tmp_path / "r.yaml"
    path.write_text(f"stages:\n  - method: {name}\n    no_such_option: 1\n")
    with pytest.raises(sk.SlimError, match="no_such_option"):
        load_recipe(str(path))


def test_errors_point_at_the_yaml_line_of_the_bad_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("description: x\nstages:\n  - method: magnitude\n    sparsity: 0.5\n"
                    "  - method: kmeans\n    bits: 4\n    colour: red\n")
    with pytest.raises(sk.SlimError) as err:
        load_recipe(str(path))
    assert str(err.value).startswith(f"{path}:7: stage 2 (kmeans): colour")
    path.write_text("stages:\n  - method: magnitude\n    sparsity: 1.5\n")
    with pytest.raises(sk.SlimError) as err:
        load_recipe(str(path))
    assert str(err.value).startswith(f"{path}:3: stage 1 (magnitude)") and "sparsity" in str(err.value)
