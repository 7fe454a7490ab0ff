"""Extract the third English corpus, `english-libdocs.txt` of the slimkit-corpora data package
(`data/slimkit-corpora/slimkit_corpora/`; run once, the output is committed).

Prose sentences from the docstrings of permissively licensed scientific and general-purpose Python
libraries (numpy, scipy, sympy, networkx, matplotlib, ...), a domain apart from both the training
text of `english.txt` (CPython's `pydoc_data.topics`) and the held-out text of `english-other.txt`
(scikit-learn's dataset descriptions, the MiniLM model card, the torch and sentence-transformers
READMEs): distillation learns from more varied English without ever seeing the held-out sources.
Each package's license allows redistribution with its notice: `LICENSES` below names them, and
`english-libdocs-licenses.txt`, written next to the corpus, holds each package's license text.

Docstrings are read with `ast` (nothing is imported), in sorted file order; test suites and
vendored code (other authors, other licenses) are skipped; sentences are cleaned and filtered by
the same rules as `tools/extract_corpus.py` (6-40 words, no code or markup), deduplicated, and at
most `PER_PACKAGE` are kept per package, spread evenly over its files, so that no library dominates.
The shipped file was made with the package versions pinned in `constraints.txt`.

    .venv/bin/python tools/extract_docstrings.py            # rewrite the file
    .venv/bin/python tools/extract_docstrings.py --check    # exit 1 if the shipped file differs
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_corpus import CORPORA_DIR, _package_dir, sentences_of, write_or_check  # noqa: E402

OUT_NAME = "english-libdocs.txt"
NOTICE_NAME = "english-libdocs-licenses.txt"
PER_PACKAGE = 1500
# import name -> license (all allow redistribution with the copyright notice)
LICENSES: dict[str, str] = {
    "numpy": "BSD-3-Clause", "scipy": "BSD-3-Clause", "sympy": "BSD-3-Clause",
    "networkx": "BSD-3-Clause", "matplotlib": "Matplotlib license (PSF-based, BSD-compatible)",
    "mpmath": "BSD-3-Clause", "sqlalchemy": "MIT", "alembic": "MIT", "pydantic": "MIT",
    "rich": "MIT", "click": "BSD-3-Clause", "jinja2": "BSD-3-Clause", "pygments": "BSD-2-Clause",
    "optuna": "MIT", "fontTools": "MIT", "joblib": "BSD-3-Clause",
    "pyparsing": "MIT",
}
SKIP_DIRS = {"tests", "test", "testing", "_vendor", "vendor", "vendored", "externals", "_lib",
             "array_api_compat", "array_api_extra", "benchmarks", "_build_utils"}


def _files(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*.py"))
            if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]) and not p.name.startswith("test_")]


def docstrings(path: Path) -> list[str]:
    """The module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    return [d for d in (ast.get_docstring(n, clean=True) for n in nodes) if d]


def package_sentences(name: str, limit: int = PER_PACKAGE) -> list[str]:
    """Prose sentences of one package's docstrings, at most `limit`, spread evenly over the files."""
    found = sentences_of((doc, False) for path in _files(_package_dir(name)) for doc in docstrings(path))
    if len(found) <= limit:
        return found
    step = len(found) / limit
    return [found[int(i * step)] for i in range(limit)]


def build() -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for name in sorted(LICENSES, key=str.lower):
        for sentence in package_sentences(name):
            if sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
    return out


def notices() -> str:
    """Each source package's name, version, license and license file text, for the notice file."""
    from importlib.metadata import distribution, packages_distributions

    dists = packages_distributions()
    parts = [f"Licenses of the sources of {OUT_NAME}: prose sentences extracted from the docstrings of "
             "these packages by tools/extract_docstrings.py.\n"]
    for name in sorted(LICENSES, key=str.lower):
        dist = distribution(dists[name][0])
        own = [f for f in dist.files or [] if ".dist-info/" in str(f) and "licen" in str(f).lower()
               and str(f).count("/") <= 2 and "third" not in str(f).lower() and "external" not in str(f).lower()]
        text = "\n".join(dist.locate_file(f).read_text(encoding="utf-8").strip() for f in own)
        parts.append(f"{'=' * 72}\n{dist.metadata['Name']} {dist.version} ({LICENSES[name]})\n{'=' * 72}\n{text}\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file, write nothing")
    args = parser.parse_args(argv)
    status = 0
    for name, body in ((OUT_NAME, "".join(f"{s}\n" for s in build())), (NOTICE_NAME, notices())):
        status |= write_or_check(name, body, args.check, out_dir=CORPORA_DIR)
    return status


if __name__ == "__main__":
    sys.exit(main())
