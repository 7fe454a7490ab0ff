"""Extract the encyclopedic corpus, `english-wiki.txt` of the slimkit-corpora data package
(`data/slimkit-corpora/slimkit_corpora/`; run once, the output is committed).

General English prose for distillation: the sentences of the ~100 English Wikipedia articles
among the dump's first ~200 page ids (the rest are redirects; April 2016 revisions: anarchism,
autism, albedo, Albania, Aristotle, ...), as shipped by gensim in its test data
(`gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`).
The other training corpora are software documentation and dictionary entries; this one is running
prose about history, science, people and places, the kind of sentence a student meets in text of
a domain it was not trained on.

Wikitext markup is removed (templates, tables, references, files, categories, link targets), the
article bodies are split into sentences with `extract_corpus.sentences_of` (6-40 words, no code or
markup left), deduplicated, in page order; a sentence with a hole where a template stood
("Alabama () is a state", "At , Alabama has") is dropped. The source is the gensim wheel named by
`--wheel`, or downloaded with `pip download --no-deps gensim==4.4.0`. The text is licensed
CC BY-SA 3.0 (and GFDL) by Wikipedia's contributors; the notice, with the list of articles, is
written next to the corpus in `english-wiki-license.txt`.

    .venv/bin/python tools/extract_wiki.py                        # download gensim, rewrite the file
    .venv/bin/python tools/extract_wiki.py --wheel gensim.whl     # from a downloaded wheel
    .venv/bin/python tools/extract_wiki.py --check                # exit 1 if the shipped file differs
"""

from __future__ import annotations

import argparse
import bz2
import html
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from xml.etree import ElementTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_corpus import CORPORA_DIR, sentences_of, write_or_check  # noqa: E402

OUT_NAME = "english-wiki.txt"
NOTICE_NAME = "english-wiki-license.txt"
GENSIM = "gensim==4.4.0"
MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_BLOCK_TAGS = re.compile(r"<(math|gallery|timeline|score|syntaxhighlight|source|pre|code|table|imagemap)"
                         r"\b[^>]*>.*?</\1>", re.S | re.I)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|[^{}]*?\|\}", re.S)
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|Media|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?|ftp)://\S+\s*([^\]]*)\]")
_EMPHASIS = re.compile(r"'{2,}")
_HOLE = re.compile(r"\(\s*[,;]?\s*\)|\s[,.;:]|^[,.;]")   # what a removed template leaves: "Alabama () is"


def _strip_nested(text: str, pattern: re.Pattern[str]) -> str:
    """Remove innermost matches of `pattern` until none is left (nested templates and tables)."""
    while True:
        text, n = pattern.subn("", text)
        if not n:
            return text


def plain_text(wikitext: str) -> str:
    """The prose of one article's wikitext: paragraphs separated by blank lines, markup removed;
    headings, lists, indented lines and tables dropped.

    >>> plain_text("'''Albedo''' is the [[reflection|reflectivity]] of a surface.{{cite|x}}<ref>a</ref>")
    'Albedo is the reflectivity of a surface.'
    """
    text = html.unescape(wikitext)
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _BLOCK_TAGS.sub("", text)
    text = _strip_nested(text, _TEMPLATE)
    text = _strip_nested(text, _TABLE)
    text = _strip_nested(text, _FILE_LINK)
    text = _LINK.sub(r"\1", text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _EMPHASIS.sub("", text)
    keep = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("=", "*", "#", ":", ";", "|", "{", "!", "[[", "}")):
            line = ""
        keep.append(" ".join(line.split()))
    return "\n".join(keep).strip()


def articles(dump: bytes) -> list[tuple[str, str]]:
    """(title, wikitext) of every article (namespace 0, not a redirect) of a MediaWiki XML dump."""
    out = []
    root = ElementTree.fromstring(dump)
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    for page in root.iter(f"{ns}page"):
        if page.findtext(f"{ns}ns") != "0" or page.find(f"{ns}redirect") is not None:
            continue
        text = page.findtext(f"{ns}revision/{ns}text") or ""
        if text.lstrip().upper().startswith("#REDIRECT"):
            continue
        out.append((page.findtext(f"{ns}title") or "", text))
    return out


def _dump(wheel: Path | None, into: Path) -> bytes:
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", GENSIM, "-d", str(into)],
                       check=True)
        found = sorted(into.glob("gensim-*.whl"))
        if not found:
            raise SystemExit(f"extract_wiki: pip download {GENSIM} produced no wheel")
        wheel = found[-1]
    with zipfile.ZipFile(wheel) as whl:
        return bz2.decompress(whl.read(MEMBER))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a downloaded gensim wheel (default: pip download)")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pages = articles(_dump(args.wheel, Path(tmp)))
    found = sentences_of((plain_text(text), False) for _, text in pages)
    body = "".join(f"{s}\n" for s in found if not _HOLE.search(s))
    notice = ("License of english-wiki.txt: sentences of the English Wikipedia articles listed below "
              "(revisions of April 2016), selected by tools/extract_wiki.py from the test data of the "
              f"gensim package ({MEMBER}).\n\n"
              "Text by Wikipedia's contributors (see each article's history at "
              "https://en.wikipedia.org/wiki/TITLE?action=history), licensed under the Creative Commons "
              "Attribution-ShareAlike 3.0 Unported License (https://creativecommons.org/licenses/by-sa/3.0/) "
              "and the GNU Free Documentation License. The extraction removed markup and kept "
              "complete sentences only.\n\nArticles:\n" + "".join(f"{title}\n" for title, _ in pages))
    status = write_or_check(OUT_NAME, body, args.check, "sentences", out_dir=CORPORA_DIR)
    return status | write_or_check(NOTICE_NAME, notice, args.check, out_dir=CORPORA_DIR)


if __name__ == "__main__":
    sys.exit(main())
