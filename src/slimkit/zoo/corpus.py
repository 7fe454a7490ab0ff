"""Real English sentences shipped with slimkit, and deterministic calibration / evaluation parts.

Five corpora, one sentence per line (made once by `tools/extract_corpus.py`,
`tools/extract_docstrings.py`, `tools/extract_wordnet.py` and `tools/extract_wiki.py`, whose
docstrings name the sources). "pydoc" and "other" ship in slimkit (`zoo/data/`); the three large
training corpora "libdocs", "wordnet" and "wiki" are in the optional data package `slimkit-corpora`
(`data/slimkit-corpora/` in the repository, installed by `make install`, licenses beside the files):

- ``"pydoc"``: ~2,000 prose sentences from CPython's own documentation (`pydoc_data.topics`);
- ``"libdocs"``: ~19,000 sentences from the docstrings of permissively licensed Python libraries
  (numpy, scipy, sympy, networkx, matplotlib, sqlalchemy, ...), more varied training text;
- ``"wordnet"``: 15,000 WordNet 3.0 entries (headword, definition and example sentences), general
  English of every field, for training students that must follow the teacher outside software text;
- ``"wiki"``: ~15,000 sentences of about 100 English Wikipedia articles (history, science, people,
  places), running encyclopedic prose for the same purpose;
- ``"other"``: ~300 sentences from another domain (scikit-learn's dataset descriptions, the
  MiniLM model card, the torch and sentence-transformers READMEs), for held-out checks only:
  never train or select a model on it.

>>> from slimkit.zoo import corpus
>>> text = corpus.sentences()                    # the pydoc corpus
>>> held_out = corpus.split(text, "eval")        # 512 sentences, never used for calibration
>>> calib = corpus.split(text, "calib")          # everything else
>>> set(held_out).isdisjoint(calib)
True
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path

from slimkit.core.errors import SlimError

DOMAINS: dict[str, str] = {"pydoc": "english.txt", "libdocs": "english-libdocs.txt", "wordnet": "english-wordnet.txt",
                           "wiki": "english-wiki.txt", "other": "english-other.txt"}
EXTERNAL = frozenset({"libdocs", "wordnet", "wiki"})  # in the `slimkit-corpora` data package, not in slimkit
CORPORA_PACKAGE = "slimkit-corpora"
CORPORA_INSTALL = "pip install ./data/slimkit-corpora from a slimkit checkout; `make install` installs it"
PARTS = ("calib", "eval")
N_EVAL = 512


@cache
def _packaged(domain: str) -> tuple[str, ...]:
    if domain not in DOMAINS:
        raise ValueError(f"unknown corpus domain {domain!r} (known: {', '.join(DOMAINS)})")
    if domain in EXTERNAL:
        text = _external(domain)
    else:
        text = resources.files("slimkit.zoo").joinpath("data", DOMAINS[domain]).read_text(encoding="utf-8")
    return tuple(line for line in (ln.strip() for ln in text.splitlines()) if line)


def _external(domain: str) -> str:
    """The text of a large training corpus, from the optional `slimkit-corpora` package."""
    try:
        import slimkit_corpora  # optional data package: imported only here, never at module level
    except ImportError:
        raise SlimError(f"corpus {domain!r} is in the optional data package {CORPORA_PACKAGE}, which is not "
                        f"installed ({CORPORA_INSTALL})") from None
    return slimkit_corpora.read(domain)


def sentences(domain: str = "pydoc") -> list[str]:
    """The sentences of `domain` ("pydoc", "libdocs", "wordnet", "wiki" or "other"), in file order.

    "libdocs", "wordnet" and "wiki" need the `slimkit-corpora` package; without it they raise
    `SlimError` with a one-line message saying how to install it.

    >>> len(sentences()) > 1500, len(sentences("other")) > 200
    (True, True)
    """
    return list(_packaged(domain))


def _key(sentence: str) -> bytes:
    return hashlib.sha256(sentence.encode("utf-8")).digest()


def split(sentences: list[str], part: str, n_eval: int = N_EVAL) -> list[str]:
    """One of two disjoint, deterministic parts of `sentences`: "calib" or "eval".

    Duplicates are dropped first. Sentences are ranked by the SHA-256 of their text (not their
    position), so a sentence keeps its part when others are added or reordered. "eval" holds the
    first `n_eval` in that ranking (at most half of the sentences, for small lists) and "calib"
    the rest. Each part comes back in hash order, a stable shuffle: any prefix is a fair sample.

    >>> a = split(["one two", "three four", "five six"], "eval", n_eval=1)
    >>> b = split(["five six", "three four", "one two"], "eval", n_eval=1)
    >>> a == b and len(a) == 1
    True
    """
    if part not in PARTS:
        raise ValueError(f"unknown corpus part {part!r} (known: {', '.join(PARTS)})")
    if n_eval < 0:
        raise ValueError(f"n_eval must be >= 0, got {n_eval}")
    ranked = sorted(dict.fromkeys(sentences), key=_key)
    cut = min(n_eval, len(ranked) // 2)
    return ranked[:cut] if part == "eval" else ranked[cut:]


def read_sentences(path: str | Path) -> list[str]:
    """Sentences of a user's UTF-8 text file: one per line, blank lines skipped, in file order.

    Raises `SlimError` with a one-line message if the file is missing, unreadable, not UTF-8 text
    or holds no sentence.

    >>> read_sentences("my-text.txt")                                  # doctest: +SKIP
    ['The first sentence.', 'The second one.']
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a text file" if path.is_dir() else "does not exist"
        raise SlimError(f"text file {str(path)!r} {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SlimError(f"text file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SlimError(f"cannot read text file {str(path)!r}: {exc.strerror}") from None
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if line]
    if not found:
        raise SlimError(f"text file {str(path)!r} has no sentences (expected one sentence per line)")
    return found
