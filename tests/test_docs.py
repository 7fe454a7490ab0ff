"""The README is a front door and the docs stay true: size, the two commands, links that resolve,
names that exist, and figures copied from bench/RESULTS.md that still match it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_BYTES = 10_240
REQUIRED_DOCS = ("README", "cli", "python-api", "your-own-model", "methods", "recipes", "format", "safety",
                 "runtime", "streaming", "distributed", "measurement")

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (a `# comment` in a bash block is no heading)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(_prose(path)):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_readme_is_a_front_door_of_at_most_10_kb():
    size = README.stat().st_size
    assert 0 < size <= MAX_README_BYTES, f"README.md is {size:,} bytes; move detail to docs/ (limit 10,240)"


def test_readme_gives_the_two_commands_and_the_makefile_has_them():
    text = README.read_text(encoding="utf-8")
    commands = "\n".join(FENCE.findall(text))
    for target in ("demo", "test"):
        assert re.search(rf"^make {target}\b", commands, re.M), f"README's code blocks lack `make {target}`"
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), f"Makefile has no {target} target"


def test_the_documentation_pages_exist_and_the_index_links_every_page():
    for name in REQUIRED_DOCS:
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    index = {(DOCS / link.split("#")[0]).resolve() for link in LINK.findall(_prose(DOCS / "README.md"))}
    orphans = [p.relative_to(ROOT) for p in DOCS.rglob("*.md") if p.name != "README.md" and p.resolve() not in index]
    assert not orphans, f"docs/README.md does not link {orphans}"
    readme_links = {link.split("#")[0] for link in LINK.findall(_prose(README))}
    assert {"docs/README.md", "bench/RESULTS.md"} <= readme_links


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    bad = []
    links = LINK.findall(_prose(page))
    for link in links:
        if re.match(r"[a-z]+:", link):          # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            bad.append(f"{link}: no such file")
        elif not path.is_relative_to(ROOT):
            bad.append(f"{link}: outside the repository")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            bad.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)
    if page == README:
        assert len(links) >= 5, "the README should link to docs/ and bench/RESULTS.md"


def _resolve(dotted: str) -> object:
    """Follow `dotted` attribute by attribute from its top package, importing a submodule only where
    no attribute of that name exists (importing `slimkit.zoo.data`, the corpus folder, would shadow the
    function `slimkit.zoo.data`)."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, name in enumerate(parts[1:], start=1):
        if hasattr(obj, name):
            obj = getattr(obj, name)
        else:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def test_every_python_name_the_docs_mention_exists():
    import slimkit as sk

    missing = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        dotted = set(re.findall(r"(?<![\w\"'./-])slimkit(?:\.[A-Za-z_]\w*)+", text))
        dotted |= {"slimkit." + m for m in re.findall(r"(?<![\w.])sk\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", text)}
        for name in sorted(dotted):
            try:
                _resolve(name)
            except (ImportError, AttributeError):
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, "names that do not exist: " + ", ".join(missing)
    assert sk.MagnitudePruningConfig and sk.KMeansConfig   # the quick start's configs


def _readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_readme_methods_table_names_every_method_and_shipped_recipe():
    import slimkit as sk
    from slimkit.pipeline.recipes import shipped

    rows = [line for line in _readme_section("Methods").splitlines() if line.startswith("| ") and "---" not in line]
    methods_cells = " ".join(line.split("|")[2] for line in rows[1:])
    recipe_cells = " ".join(line.split("|")[3] for line in rows[1:])
    named_methods = set(re.findall(r"`([a-z0-9-]+)`", methods_cells))
    named_recipes = set(re.findall(r"`([a-z0-9-]+)`", recipe_cells))
    assert named_methods == set(sk.methods()), (named_methods ^ set(sk.methods()))
    assert named_recipes == set(shipped()), (named_recipes ^ set(shipped()))


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("|--")]


def test_readme_results_are_copied_from_bench_results():
    """Numbers live in bench/RESULTS.md; the README's headline table must match it cell for cell.
    After a new `python -m bench`, copy the changed cells again."""
    results = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", results, re.S | re.M))
    rows = _table_rows(_readme_section("Results"))
    header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
    assert header[:2] == ["model", "variant"] and len(body) >= 5
    for model, variant, *cells in body:
        assert model in sections, f"bench/RESULTS.md has no case {model!r}"
        bench_rows = {r[0]: r for r in _table_rows(sections[model])}
        assert variant in bench_rows, f"bench/RESULTS.md, {model}: no row {variant!r}"
        for name, cell in zip(header[2:], cells, strict=True):
            assert cell in bench_rows[variant], f"README {model} / {variant} / {name}: {cell!r} is not in RESULTS.md"


def test_results_end_with_the_long_runs_file():
    results = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    long_runs = (ROOT / "bench" / "long_runs.md").read_text(encoding="utf-8")
    assert long_runs.startswith("## Long runs")
    assert results.rstrip().endswith(long_runs.rstrip()), "bench/RESULTS.md's last section differs from long_runs.md"


RUNS = "<!-- runs in tests/test_docs.py -->"


def _runnable_examples() -> list[tuple[str, str]]:
    """(page, code) of every Python block marked to run: the line before its fence is RUNS."""
    found = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(re.escape(RUNS) + r"\n```python\n(.*?)^```", text, re.S | re.M):
            found.append((str(page.relative_to(ROOT)), match.group(1)))
    return found


@pytest.mark.parametrize(("page", "code"), _runnable_examples(), ids=lambda v: v if v.endswith(".md") else "")
def test_marked_examples_run(page, code, tmp_path, monkeypatch):
    """A complete example the docs promise runs, runs (in a fresh folder, one torch thread)."""
    from slimkit.core.torch_utils import num_threads

    monkeypatch.chdir(tmp_path)
    with num_threads(1):
        exec(compile(code, f"{page} (example)", "exec"), {"__name__": "__example__"})   # noqa: S102
    assert any(tmp_path.iterdir()), f"{page}: the example wrote nothing"


def test_your_own_model_has_a_runnable_example():
    assert any(page == "docs/your-own-model.md" for page, _ in _runnable_examples())
