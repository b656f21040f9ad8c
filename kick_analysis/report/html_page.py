"""``kick report``'s ``report.html``: one self-contained interactive page (no network, no server; opens from
``file://``).

The page is data-driven: this module inlines the report as JSON (leaderboard columns and cells with their sort
values, each config's compression, the plots as PNG data URIs, the lost/gained items of every config against its
dense baseline) together with ``static/report.css`` and ``static/report.js``, which render the sortable,
filterable leaderboard, the plots and the per-item view. Nothing in it names a task or a metric.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from kick_analysis.compare import SIGNIFICANCE_LEVEL
from kick_analysis.report.collect import Entry, headline_tasks
from kick_analysis.report.tables import DAGGER, data_lines, leaderboard_table
from kick_analysis.results_io import run_display_name

LEGEND = (f"Scores are percentages (accuracy-like metrics x 100) unless marked otherwise; % of dense = score / dense "
          "score; retention = share of the items the dense model answered correctly that the compressed model still "
          "answers correctly; agreement = share of items with the same (normalized) answer; McNemar p = exact test on "
          f"the paired right/wrong outcomes; {DAGGER} = significant at {int(100 * SIGNIFICANCE_LEVEL)}%. Perplexity "
          "columns: lower is better, x dense = perplexity / dense perplexity.")


def static_text(name: str) -> str:
    """A file of ``kick_analysis/report/static`` (shipped in the wheel)."""
    return resources.files("kick_analysis.report").joinpath("static", name).read_text(encoding="utf-8")


def _sparsity_label(info: dict[str, Any]) -> str:
    if info["kind"] == "dense":
        return "0%"
    if info["kind"] != "prune":
        return "-"
    st = info.get("sparsity_type") or ""
    return st if ":" in st else f"{round(100 * (info.get('sparsity') or 0))}%"


def _bits_label(info: dict[str, Any]) -> str:
    return f"{info['wbits']}" if info["kind"] == "quant" and info.get("wbits") is not None else (
        "-" if info["kind"] == "quant" else "16")


def _model_label(e: Entry) -> str:
    return run_display_name(e.run) + (f" ({e.base[1]})" if e.base[1] else "")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _plot_task(stem: str, tasks: Sequence[str]) -> str | None:
    ends = [t for t in tasks if stem.endswith(t)]
    return max(ends, key=len) if ends else None


def page_data(entries: Sequence[Entry], images: Sequence[Path]) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data."""
    head, rows = leaderboard_table(entries)
    tasks = headline_tasks(entries)
    items: list[list[Any]] = []  # [task, doc_id, question, references, dense output], shared by configs
    item_index: dict[tuple[str, str, Any], int] = {}
    configs = []
    for e, row in zip(entries, rows):
        flips = []
        for task, found in e.changed_items.items():
            for it in found:
                key = (e.dense.label if e.dense else "", task, it["doc_id"])
                if key not in item_index:
                    item_index[key] = len(items)
                    items.append([task, it["doc_id"], it["question"], it["references"], it["dense_output"]])
                flips.append([item_index[key], it["change"], it["compressed_output"]])
        paired = {t: {k: p.get(k) for k in ("metric", "kind", "n_matched", "lost", "gained")}
                  for t, p in e.paired.items() if t in e.run.tasks and p.get("metric")}
        configs.append({
            "label": e.label,
            "model": _model_label(e),
            "is_dense": e.is_dense,
            "dense": e.dense.label if e.dense else None,
            "filters": {"method": e.info["method"], "model": _model_label(e), "sparsity": _sparsity_label(e.info),
                        "bits": _bits_label(e.info)},
            "cells": [[str(c), _finite(getattr(c, "value", None))] for c in row],
            "paired": paired,
            "flips": flips,
            "notes": list(e.item_notes),
        })
    missing = sorted({n for e in entries for n in e.item_notes if n.startswith("no dense baseline")})
    plots = []
    for img in images:
        src = "data:image/png;base64," + base64.b64encode(img.read_bytes()).decode("ascii")
        plots.append({"name": img.stem, "task": _plot_task(img.stem, tasks), "src": src})
    return {
        "columns": [{"name": str(h), "task": getattr(h, "task", None)} for h in head],
        "tasks": tasks,
        "configs": configs,
        "items": items,
        "plots": plots,
        "legend": LEGEND,
        "data_lines": data_lines(entries),
        "warnings": missing,
        "models": list(dict.fromkeys(_model_label(e) for e in entries)),
    }


def _inline_json(data: Any) -> str:
    # "<" escaped so that no "</script>" (or "<!--") inside the data can end the script element.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render_page(data: dict[str, Any]) -> str:
    title = "kick report: " + ", ".join(data["models"])
    script = static_text("report.js")
    if "</script" in script.lower():
        raise AssertionError("static/report.js must not contain '</script'")
    return "\n".join([
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title>",
        "<style>", static_text("report.css"), "</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<noscript><p class='note'>This page needs JavaScript to show the report; the same leaderboard is in "
        "leaderboard.md and summary.csv next to it.</p></noscript>",
        "<div id='app'></div>",
        f"<script id='kick-data' type='application/json'>{_inline_json(data)}</script>",
        "<script>", script, "</script>",
        "</body></html>",
    ])


def write_html(entries: Sequence[Entry], images: Sequence[Path], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_page(page_data(entries, images)), encoding="utf-8")
    os.replace(tmp, path)
