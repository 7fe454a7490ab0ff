"""One self-contained HTML report: text, tables and PNG images embedded as base64, no external
files, scripts or fonts, so it opens in any browser and can be mailed as one file.

>>> page = Report("slimkit search: lenet-300-100")
>>> page.facts("Result", [("best", "4.1 KB, 49.4x smaller"), ("test accuracy", "97.78%")])
>>> page.table("Pareto front", ["trial", "bytes"], [[3, 4109], [7, 5020]])
>>> page.image("Pareto front", "pareto.png")
>>> page.write("report.html")
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from slimkit.io.safetensors_file import atomic_write

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 3px solid #4477aa; padding-bottom: .3em; }
h2 { font-size: 1.2em; margin-top: 1.8em; color: #224466; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #e8eef6; }
tr:nth-child(even) td { background: #f7f9fc; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1.2em; }
dt { font-weight: 600; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #dde; }
figcaption { font-size: .85em; color: #555; }
pre { background: #f4f4f4; padding: .6em; overflow-x: auto; }
p.note { color: #666; font-size: .9em; }
"""


class Report:
    """An HTML page built section by section (`facts`, `table`, `image`, `text`, `code`)."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def facts(self, heading: str, items: list[tuple[str, str]]) -> None:
        """A heading and a two-column list of name / value."""
        self.heading(heading)
        rows = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
        self.parts.append(f"<dl>{rows}</dl>")

    def table(self, heading: str, columns: list[str], rows: list[list[object]]) -> None:
        """A heading and a table; cells are shown with `str`."""
        self.heading(heading)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def code(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def image(self, caption: str, path: str | Path) -> None:
        """Embed a PNG file (base64 data URI) with a caption."""
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        title = html.escape(self.title)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                f"<style>{_CSS}</style></head><body><h1>{title}</h1>\n" + "\n".join(self.parts)
                + "\n</body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the page atomically; returns the path."""

        atomic_write(path, [self.render().encode("utf-8")])
        return Path(path)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
