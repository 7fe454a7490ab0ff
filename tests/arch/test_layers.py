"""The house has a floor: the import graph of src/slimkit is acyclic, imports are made at module level,
and `lint-imports` (the layer contract in .importlinter, run by `make lint`) fails on an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from import_graph import import_graph

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "slimkit"
LINT = Path(sys.executable).with_name("lint-imports")


def _package(root: Path, **modules: str) -> Path:
    """A package `pkg` under `root` holding `modules` (name -> source) and an empty __init__."""
    pkg = root / "pkg"
    pkg.mkdir()
    for name, source in {"__init__": "", **modules}.items():
        (pkg / f"{name}.py").write_text(source)
    return pkg


def test_graph_sees_function_level_imports(tmp_path):
    graph = import_graph(_package(tmp_path, a="from pkg import b\n",
                                  b="def f():\n    from pkg.a import x\n    return x\n"))
    assert graph.edges["pkg.a"] == {"pkg.b"} and graph.edges["pkg.b"] == {"pkg.a"}
    assert graph.function_level == [("pkg.b", 2, "pkg.a")]
    assert graph.cycles() == [["pkg.a", "pkg.b"]]


def test_dotted_import_statements_use_the_top_package(tmp_path):
    pkg = _package(tmp_path, a="import pkg.b\nimport pkg.c as c\n", b="", c="")
    assert import_graph(pkg).edges["pkg.a"] == {"pkg", "pkg.b", "pkg.c"}


def test_import_graph_is_acyclic():
    graph = import_graph(SRC)
    assert len(graph.modules) > 100
    assert graph.cycles() == []


def test_no_function_level_imports_of_slimkit():
    """A function-level import is only for an optional heavy dependency, never for slimkit itself."""
    graph = import_graph(SRC)
    assert [f"{m}:{line} imports {t}" for m, line, t in graph.function_level] == []


def test_nothing_imports_the_root_package():
    """`slimkit/__init__.py` is the roof that gathers the public API; no module below may import it."""
    graph = import_graph(SRC)
    assert sorted(m for m, targets in graph.edges.items() if "slimkit" in targets) == []


def _lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache", str(tree / ".importlinter")],
                          cwd=tree, env={"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(SRC, tree / "src" / "slimkit", ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / ".importlinter", tree / ".importlinter")
    return tree


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is installed by `make install`")
def test_lint_imports_passes_on_the_tree(tree_copy):
    result = _lint(tree_copy)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is installed by `make install`")
def test_lint_imports_fails_on_an_upward_import(tree_copy):
    """io (the file format) importing the CLI is an upward import: the contract must catch it."""
    codecs = tree_copy / "src" / "slimkit" / "io" / "codecs.py"
    original = codecs.read_text()
    codecs.write_text(original + "\nfrom slimkit.cli import common as _upward  # noqa: E402\n")
    try:
        result = _lint(tree_copy)
    finally:
        codecs.write_text(original)
    assert result.returncode != 0
    assert "slimkit.io is not allowed to import slimkit.cli" in result.stdout
    assert "slimkit.io.codecs -> slimkit.cli.common" in result.stdout
