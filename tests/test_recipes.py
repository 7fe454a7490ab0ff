from __future__ import annotations

import pytest

import slimkit as sk
from slimkit.pipeline.recipes import load_recipe, shipped


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


def test_a_recipe_names_the_distributions_it_requires(tmp_path):
    assert load_recipe("distill-l3").requires == ["slimkit-corpora"]
    assert load_recipe("int8").requires == []
    path = tmp_path / "r.yaml"
    path.write_text("requires: pytest\nstages:\n  - method: magnitude\n    sparsity: 0.5\n")
    assert load_recipe(str(path)).requires == ["pytest"]          # one name or a list; installed here


@pytest.mark.parametrize("requires", ["[1]", "{a: b}", "['not a name!']"])
def test_a_bad_requires_key_is_a_one_line_error(tmp_path, requires):
    path = tmp_path / "r.yaml"
    path.write_text(f"requires: {requires}\nstages:\n  - method: magnitude\n    sparsity: 0.5\n")
    with pytest.raises(sk.SlimError, match="'requires' must be a list of distribution names") as err:
        load_recipe(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_recipe_whose_requirement_is_missing_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text("requires: [slimkit-no-such-package]\nstages:\n  - method: magnitude\n    sparsity: 0.5\n")
    with pytest.raises(sk.SlimError) as err:
        load_recipe(str(path))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: recipe 'r' needs slimkit-no-such-package")
    assert "pip install slimkit-no-such-package" in message
    assert load_recipe(str(path), check_requires=False).requires == ["slimkit-no-such-package"]

    # the shipped distill-l3 recipe without the slimkit-corpora data package
    from importlib import metadata

    real = metadata.distribution

    def distribution(name):
        if name == "slimkit-corpora":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    with pytest.raises(sk.SlimError) as err:
        sk.load_recipe("distill-l3")
    message = str(err.value)
    assert "\n" not in message and "needs slimkit-corpora, which is not installed" in message
    assert "pip install ./data/slimkit-corpora" in message
    assert load_recipe("distill-l3", check_requires=False).stages            # estimates still see it
