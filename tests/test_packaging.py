"""The slimkit wheel is the product only: at most 1 MB, no experiments, no large corpora.

Builds the wheel the way a release would (`pip wheel --no-deps --no-build-isolation`, with the
venv's setuptools from the dev extra) from a copy of the source tree, so that the checkout gets no
`build/` folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_WHEEL_BYTES = 1_000_000
SMALL_CORPORA = {"slimkit/zoo/data/english.txt", "slimkit/zoo/data/english-other.txt"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="the dev extra installs setuptools to build the wheel")
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    cmd = [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
           "--disable-pip-version-check", "-q", "-w", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (found,) = out.glob("slimkit-*.whl")
    return found


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_wheel_is_at_most_one_megabyte(wheel):
    size = wheel.stat().st_size
    print(f"{wheel.name}: {size:,} bytes")
    assert size <= MAX_WHEEL_BYTES, f"{wheel.name} is {size:,} bytes (limit {MAX_WHEEL_BYTES:,})"


def test_the_wheel_carries_no_experiments_and_no_large_corpora(wheel):
    names = [n for n in _names(wheel) if ".dist-info/" not in n]
    assert not [n for n in names if "experiment" in n.lower() or not n.startswith("slimkit/")]
    assert not [n for n in names if n.endswith(("/synth.py", "/rss.py"))], "bench helpers stay in bench/"
    assert {n for n in names if n.endswith(".txt")} == SMALL_CORPORA
    assert not [n for n in names if "libdocs" in n or "wordnet" in n or "wiki" in n]


def test_the_wheel_carries_the_shipped_recipes_and_the_typing_marker(wheel):
    from slimkit.pipeline.recipes import shipped

    names = set(_names(wheel))
    assert "slimkit/py.typed" in names
    recipes = {n for n in names if n.startswith("slimkit/pipeline/recipes/") and n.endswith(".yaml")}
    assert recipes == {f"slimkit/pipeline/recipes/{name}.yaml" for name in shipped()}
    assert "slimkit/pipeline/recipes/distill-l3.yaml" in recipes
