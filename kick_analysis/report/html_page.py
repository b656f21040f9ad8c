"""``kick report --html``: the leaderboard, the data lines and the plots in one self-contained page."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Sequence

from kick_analysis.compare import SIGNIFICANCE_LEVEL
from kick_analysis.report.collect import Entry
from kick_analysis.report.tables import DAGGER, data_lines, leaderboard_table


def write_html(entries: Sequence[Entry], images: Sequence[Path], path: Path) -> None:
    head, rows = leaderboard_table(entries)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>kick report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:720px;display:block;margin:1em 0}</style></head><body>",
             "<h1>kick report</h1>", "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    parts.append("</table>")
    parts.append(f"<p>{DAGGER} significant at {int(100 * SIGNIFICANCE_LEVEL)}% (McNemar exact test on paired "
                 "outcomes). Retention = share of dense-correct items still correct.</p>")
    data = data_lines(entries)
    if data:
        parts.append("<h2>Data</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in data) + "</ul>")
    for img in images:
        data = base64.b64encode(img.read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(img.stem)}</h3><img alt='{html.escape(img.stem)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
