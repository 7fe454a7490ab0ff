"""The HTML report: one file, images embedded, text escaped."""

from __future__ import annotations

import base64

from slimkit.eval.report import Report

PNG_1x1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmM"
                           "IQAAAABJRU5ErkJggg==")


def test_report_embeds_images_and_escapes_text(tmp_path):
    png = tmp_path / "dot.png"
    png.write_bytes(PNG_1x1)
    page = Report("search <lenet>")
    page.facts("Result", [("best", "4 KB & 50x")])
    page.table("Front", ["trial", "bytes"], [[1, 4000], [2, None], [3, 0.123456]])
    page.image("a dot", png)
    path = page.write(tmp_path / "r.html")
    text = path.read_text()
    assert "search &lt;lenet&gt;" in text and "4 KB &amp; 50x" in text
    assert "<td>-</td>" in text and "<td>0.1235</td>" in text
    embedded = text.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(embedded) == PNG_1x1
    assert "dot.png" not in text
