"""Extract the fourth English corpus, `english-wordnet.txt` of the slimkit-corpora data package
(`data/slimkit-corpora/slimkit_corpora/`; run once, the output is committed).

General English for distillation: WordNet 3.0 (Princeton University) entries, each a headword, its
definition and the example sentences WordNet gives for it, e.g.

    desperate: showing extreme urgency or intensity especially because of great need or desire;
    "felt a desperate urge to confess"; "a desperate need for recognition"

(one line each). The other training corpora are software documentation (`english.txt`, CPython's
pydoc; `english-libdocs.txt`, library docstrings); WordNet covers everyday and scientific
vocabulary of every field, which is what a student needs to follow its teacher on text of a domain
it was not trained on. Only entries with at least one example sentence are kept, ranked by the
SHA-256 of their text (a stable shuffle over nouns, verbs, adjectives and adverbs), the first
`KEEP` of them. The source is Debian's `wordnet-base` package (bookworm, 1:3.0-37), downloaded
with `apt-get download` unless `--deb` names the file; its license (WordNet 3.0 license:
redistribution with the copyright notice) is written next to the corpus in
`english-wordnet-license.txt`.

    .venv/bin/python tools/extract_wordnet.py                         # download, rewrite the file
    .venv/bin/python tools/extract_wordnet.py --deb wordnet-base.deb  # from a downloaded package
    .venv/bin/python tools/extract_wordnet.py --check                 # exit 1 if the shipped file differs
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_corpus import CORPORA_DIR, write_or_check  # noqa: E402

OUT_NAME = "english-wordnet.txt"
NOTICE_NAME = "english-wordnet-license.txt"
PACKAGE = "wordnet-base"
KEEP = 15000
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")


def entries(data_file: Path) -> list[str]:
    """The "headword: definition; "example"" lines of one WordNet `data.POS` file, for every synset
    with at least one example sentence, in file order."""
    out = []
    for line in data_file.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # the license header
            continue
        head, _, gloss = line.partition("| ")
        fields, gloss = head.split(), " ".join(gloss.split())
        if len(fields) < 5 or '"' not in gloss:
            continue
        word = fields[4].replace("_", " ")
        word = word.split("(")[0]  # adjective markers: "(a)", "(p)", "(ip)"
        out.append(f"{word}: {gloss}")
    return out


def select(lines: list[str], keep: int = KEEP) -> list[str]:
    """Deduplicated `lines` ranked by the SHA-256 of their text, the first `keep`."""
    ranked = sorted(dict.fromkeys(lines), key=lambda s: hashlib.sha256(s.encode("utf-8")).digest())
    return ranked[:keep]


def _license(copyright_file: Path) -> str:
    """The upstream (Princeton) paragraph of Debian's copyright file, without the packaging's own."""
    text = copyright_file.read_text(encoding="utf-8")
    upstream = text.split("\nFiles: debian/*")[0]
    body = upstream.split("License: WordNet3.0\n", 1)[1]
    lines = [ln[1:] if ln.startswith(" ") else ln for ln in body.splitlines()]
    return "\n".join("" if ln == "." else ln for ln in lines).strip() + "\n"


def _unpack(deb: Path | None, into: Path) -> Path:
    if deb is None:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=into, check=True)
        found = sorted(into.glob(f"{PACKAGE}_*.deb"))
        if not found:
            raise SystemExit(f"extract_wordnet: apt-get download {PACKAGE} produced no .deb file")
        deb = found[-1]
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into / "root")], check=True)
    return into / "root"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=Path, help=f"a downloaded {PACKAGE} .deb (default: apt-get download)")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = _unpack(args.deb, Path(tmp))
        lines = [e for pos in PARTS_OF_SPEECH for e in entries(root / "usr/share/wordnet" / f"data.{pos}")]
        notice = ("License of english-wordnet.txt: WordNet 3.0 entries (headword, definition, examples) "
                  f"selected by tools/extract_wordnet.py from Debian's {PACKAGE} package.\n\n"
                  + _license(root / "usr/share/doc" / PACKAGE / "copyright"))
    body = "".join(f"{s}\n" for s in select(lines))
    status = write_or_check(OUT_NAME, body, args.check, out_dir=CORPORA_DIR)
    return status | write_or_check(NOTICE_NAME, notice, args.check, out_dir=CORPORA_DIR)


if __name__ == "__main__":
    sys.exit(main())
