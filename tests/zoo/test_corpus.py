"""The embedded English corpora and their deterministic calibration / evaluation parts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slimkit.core.errors import SlimError
from slimkit.zoo import corpus


@pytest.mark.parametrize("domain, low, high", [("pydoc", 1500, 3000), ("libdocs", 15000, 22000),
                                               ("wiki", 12000, 20000), ("other", 250, 600)])
def test_corpus_is_english_prose(domain, low, high):
    text = corpus.sentences(domain)
    assert low <= len(text) <= high
    assert len(set(text)) == len(text), "sentences are deduplicated"
    assert sum(s.endswith(".") for s in text) >= 0.9 * len(text)
    assert all(6 <= len(s.split()) <= 40 for s in text)
    assert all(s[0].isupper() or s[0] == '"' for s in text)
    assert not any(">>>" in s or "\t" in s for s in text)
    prose = [re.sub(r'"[^"]*"', "Q", s) for s in text]       # quoted code such as "x ** y" is fine
    for leftover in ("::", "`", ":func:", "**", ".. ", "://", "www.", "[", "_", "=", "|"):
        assert not any(leftover in s for s in prose), leftover
    assert all(s == s.strip() and "\n" not in s for s in text)


def test_domains_differ_and_data_alias():
    import slimkit.zoo as zoo

    pydoc, other = corpus.sentences("pydoc"), corpus.sentences("other")
    assert not set(pydoc) & set(other)
    assert zoo.data("english") == pydoc
    assert "The famous Iris database, first used by Sir R.A. Fisher." in other
    with pytest.raises(ValueError, match="unknown corpus domain"):
        corpus.sentences("klingon")


def test_libdocs_is_a_third_domain_apart_from_the_held_out_one():
    libdocs = set(corpus.sentences("libdocs"))
    assert not libdocs & set(corpus.sentences("other"))
    assert not libdocs & set(corpus.sentences("pydoc"))
    # none of the held-out sources' words that mark them: the iris data set, the MiniLM model card
    assert not any("Iris" in s or "MiniLM" in s or "sentence-transformers" in s.lower() for s in libdocs)
    held_out = corpus.split(corpus.sentences("libdocs"), "eval")
    assert len(held_out) == 512 and not set(held_out) & set(corpus.split(corpus.sentences("libdocs"), "calib"))


def _notice(domain: str) -> str:
    """The license file beside a large corpus in the slimkit-corpora data package."""
    import slimkit_corpora

    return slimkit_corpora.license_text(domain)


def test_the_large_corpora_live_in_the_data_package_with_their_licenses():
    import slimkit_corpora

    shipped = {p.name for p in (Path(corpus.__file__).parent / "data").iterdir()}
    assert shipped == {"english.txt", "english-other.txt"}, "only the small corpora ship in slimkit"
    assert set(slimkit_corpora.FILES) == set(corpus.EXTERNAL) == set(slimkit_corpora.LICENSES)
    for domain in corpus.EXTERNAL:
        lines = [ln.strip() for ln in slimkit_corpora.read(domain).splitlines() if ln.strip()]
        assert corpus.sentences(domain) == lines
        assert "licen" in _notice(domain).lower()
    with pytest.raises(ValueError, match="unknown corpus 'pydoc'"):
        slimkit_corpora.read("pydoc")


@pytest.mark.parametrize("domain", sorted(corpus.EXTERNAL))
def test_a_large_corpus_without_the_data_package_is_a_one_line_error(monkeypatch, domain):
    import sys

    monkeypatch.setitem(sys.modules, "slimkit_corpora", None)   # `import slimkit_corpora` now fails
    corpus._packaged.cache_clear()
    try:
        with pytest.raises(SlimError) as info:
            corpus.sentences(domain)
        message = str(info.value)
        assert "\n" not in message and repr(domain) in message
        assert "slimkit-corpora" in message and "pip install ./data/slimkit-corpora" in message
        assert corpus.sentences("pydoc") and corpus.sentences("other")   # the shipped ones still load
    finally:
        corpus._packaged.cache_clear()


def test_wordnet_is_general_english_with_its_license():
    wordnet = corpus.sentences("wordnet")
    assert len(wordnet) == 15000 and len(set(wordnet)) == len(wordnet)
    # "headword: definition; "example""; every entry has an example sentence in quotes (a few of
    # WordNet's own quotes are unbalanced)
    assert all(": " in s and '"' in s and s.split(": ")[0].strip() for s in wordnet)
    assert sum(s.count('"') % 2 == 0 for s in wordnet) > 0.99 * len(wordnet)
    assert not set(wordnet) & set(corpus.sentences("other"))
    assert not any("_" in s.split(": ")[0] or "(a)" in s.split(": ")[0] for s in wordnet)
    # every field, not software: nouns, verbs, adjectives and adverbs of everyday and scientific use
    heads = {s.split(": ")[0] for s in wordnet}
    assert len(heads) > 10000
    text = _notice("wordnet")
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in text and "Permission to use" in text
    held_out = corpus.split(wordnet, "eval")
    assert len(held_out) == 512 and not set(held_out) & set(corpus.split(wordnet, "calib"))


def test_wordnet_extractor_parses_data_lines(tmp_path):
    """tools/extract_wordnet.py: entries with examples only, headword cleaned, hash-ranked selection."""
    module = _tool("extract_wordnet")
    data = tmp_path / "data.adj"
    data.write_text(
        "  1 This software and database is being provided to you\n"
        "00001740 00 a 01 able(p) 0 005 | (usually followed by `to') having the necessary means;  "
        "\"she was able to get a grant\"\n"
        "00002098 00 a 01 unable 0 002 | (usually followed by `to') not having the necessary means  \n"
        "00002312 00 a 02 abaxial 0 dorsal 4 002 | facing away from the axis of an organ; \"the abaxial surface\"\n",
        encoding="latin-1")
    found = module.entries(data)
    assert found == ['able: (usually followed by `to\') having the necessary means; "she was able to get a grant"',
                     'abaxial: facing away from the axis of an organ; "the abaxial surface"']
    assert module.select(found + found, keep=1) == module.select(list(reversed(found)), keep=1)
    assert len(module.select(found, keep=5)) == 2
    shipped = set(corpus.sentences("wordnet"))
    assert len(module.select(sorted(shipped), keep=15000)) == 15000


def test_wiki_is_encyclopedic_prose_with_its_license():
    wiki = corpus.sentences("wiki")
    assert not set(wiki) & set(corpus.sentences("other")) and not set(wiki) & set(corpus.sentences("pydoc"))
    # running prose about people, places and history, not software, and no hole where markup was
    assert sum(s.startswith(("The ", "In ", "He ", "She ", "It ")) for s in wiki) > 0.25 * len(wiki)
    assert not any("()" in s or " ," in s or "{{" in s or "]]" in s for s in wiki)
    assert any("Aristotle" in s for s in wiki) and any("Alabama" in s for s in wiki)
    notice = _notice("wiki")
    assert "Creative Commons Attribution-ShareAlike 3.0" in notice and "\nAnarchism\n" in notice
    held_out = corpus.split(wiki, "eval")
    assert len(held_out) == 512 and not set(held_out) & set(corpus.split(wiki, "calib"))


def test_wiki_extractor_removes_markup():
    """tools/extract_wiki.py: articles only (no redirect, no other namespace), markup to plain prose."""
    module = _tool("extract_wiki")
    dump = (
        b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>Albedo</title><ns>0</ns>'
        b"<revision><text>{{Other uses|{{nested|x}}}}\n'''Albedo''' ({{IPA|x}}) is the [[reflection (physics)|"
        b"reflectivity]] of a surface.&lt;ref&gt;A book.&lt;/ref&gt; It is [http://x.org measured] on a scale "
        b"from zero to one."
        b"\n== History ==\n* a list item\n{| class=wikitable\n|-\n| cell\n|}\n[[File:A.png|thumb|A [[b]] c]]"
        b"\nFresh snow has a very high albedo.&lt;!-- note --&gt;\n[[Category:Light]]</text></revision></page>"
        b'<page><title>AccessibleComputing</title><ns>0</ns><redirect title="Computer accessibility" />'
        b"<revision><text>#REDIRECT [[Computer accessibility]]</text></revision></page>"
        b"<page><title>Talk:Albedo</title><ns>1</ns><revision><text>A talk page.</text></revision></page>"
        b"</mediawiki>")
    pages = module.articles(dump)
    assert [title for title, _ in pages] == ["Albedo"]
    text = module.plain_text(pages[0][1])
    first, second = "Albedo () is the reflectivity of a surface.", "It is measured on a scale from zero to one."
    assert [line for line in text.split("\n") if line] == [f"{first} {second}", "Fresh snow has a very high albedo."]
    assert module.sentences_of([(text, False)]) == [first, second, "Fresh snow has a very high albedo."]
    assert module._HOLE.search("Albedo () is the reflectivity of a surface.")
    assert not module._HOLE.search("It is measured from 0 to 1 (in most texts).")


TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _tool(name: str):
    """The module of `tools/NAME.py` (which imports its siblings), or a skip without tools/."""
    import importlib.util
    import sys

    if not (TOOLS / f"{name}.py").is_file():
        pytest.skip("tools/ is not in this checkout")
    sys.path.insert(0, str(TOOLS))
    try:
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(TOOLS))
    return module


def test_docstring_extractor_reproduces_a_package_part():
    """english-libdocs.txt comes from tools/extract_docstrings.py; re-extract one small package and
    find its sentences in the shipped file (when the installed version is the one extracted)."""
    from importlib.metadata import version

    if f"pyparsing {version('pyparsing')} (" not in _notice("libdocs"):
        pytest.skip("another pyparsing version than the one the corpus was extracted from")
    module = _tool("extract_docstrings")
    found = module.package_sentences("pyparsing")
    shipped = set(corpus.sentences("libdocs"))
    assert len(found) > 100 and all(s in shipped for s in found)
    assert all(module.LICENSES.values()) and "sklearn" not in module.LICENSES and "torch" not in module.LICENSES


def test_sentences_returns_a_copy():
    text = corpus.sentences()
    text.clear()
    assert corpus.sentences()


def test_split_is_disjoint_complete_and_sized():
    text = corpus.sentences()
    calib, held_out = corpus.split(text, "calib"), corpus.split(text, "eval")
    assert len(held_out) == 512
    assert not set(calib) & set(held_out)
    assert set(calib) | set(held_out) == set(text)


def test_split_is_by_content_not_position():
    text = corpus.sentences()
    held_out = corpus.split(text, "eval")
    assert corpus.split(list(reversed(text)), "eval") == held_out
    assert held_out != text[:512]
    # dropping some calibration sentences leaves the evaluation part alone
    calib = set(corpus.split(text, "calib"))
    fewer = [s for i, s in enumerate(text) if s not in calib or i % 3]
    assert corpus.split(fewer, "eval") == held_out


def test_split_small_lists_and_bad_arguments():
    small = ["a b c", "d e f", "g h i", "a b c"]
    assert len(corpus.split(small, "eval")) == 1          # at most half of the 3 distinct ones
    assert len(corpus.split(small, "calib")) == 2
    assert corpus.split([], "eval") == []
    with pytest.raises(ValueError, match="unknown corpus part"):
        corpus.split(small, "test")
    with pytest.raises(ValueError, match="n_eval"):
        corpus.split(small, "eval", n_eval=-1)


def test_read_sentences(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("First sentence here.\n\n   \n  Second one.  \n", encoding="utf-8")
    assert corpus.read_sentences(path) == ["First sentence here.", "Second one."]


@pytest.mark.parametrize("case", ["missing", "empty", "blank", "folder", "binary"])
def test_read_sentences_errors_are_one_line(tmp_path, case):
    path = tmp_path / "text.txt"
    if case == "empty":
        path.write_text("", encoding="utf-8")
    elif case == "blank":
        path.write_text("\n  \n\n", encoding="utf-8")
    elif case == "folder":
        path.mkdir()
    elif case == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SlimError) as info:
        corpus.read_sentences(path)
    message = str(info.value)
    assert "\n" not in message and "text.txt" in message


def test_extract_script_reproduces_shipped_files():
    """The shipped files come from tools/extract_corpus.py (same Python and package versions)."""
    import sys

    if sys.version_info[:2] != (3, 11):
        pytest.skip("the corpus was extracted with CPython 3.11's pydoc_data")
    module = _tool("extract_corpus")
    assert module.sentences_of(module.pydoc_texts()) == corpus.sentences("pydoc")
    assert module.split_sentences("See e.g. the docs. Then stop.") == ["See e.g. the docs.", "Then stop."]
    assert not module.is_prose("x = f(a, b) + 1 is code.")
