"""English training corpora for slimkit, one sentence (or WordNet entry) per line.

They are a separate distribution so that the slimkit wheel stays small and Apache-2.0 only: the
recipes that train on them (`distill-l3`) name this package in their `requires:` key, and
`slimkit.zoo.corpus.sentences("libdocs")` reads them through `read`. Each corpus's license sits
beside it (`english-<name>-license*.txt`); the files are made by the slimkit repository's
`tools/extract_docstrings.py`, `tools/extract_wordnet.py` and `tools/extract_wiki.py`.

>>> import slimkit_corpora
>>> text = slimkit_corpora.read("wordnet")
>>> len(text.splitlines())
15000
"""

from __future__ import annotations

from importlib import resources

__all__ = ["FILES", "LICENSES", "license_text", "read"]

FILES: dict[str, str] = {"libdocs": "english-libdocs.txt", "wordnet": "english-wordnet.txt",
                         "wiki": "english-wiki.txt"}
LICENSES: dict[str, str] = {"libdocs": "english-libdocs-licenses.txt", "wordnet": "english-wordnet-license.txt",
                            "wiki": "english-wiki-license.txt"}


def _text(table: dict[str, str], name: str) -> str:
    if name not in table:
        raise ValueError(f"unknown corpus {name!r} (known: {', '.join(table)})")
    return resources.files(__name__).joinpath(table[name]).read_text(encoding="utf-8")


def read(name: str) -> str:
    """The whole text of corpus `name` ("libdocs", "wordnet" or "wiki"), UTF-8 decoded."""
    return _text(FILES, name)


def license_text(name: str) -> str:
    """The license notice that covers corpus `name`."""
    return _text(LICENSES, name)
