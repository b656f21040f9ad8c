"""``kick report`` step 2: summary.csv rows and the leaderboard (markdown; its table also feeds the HTML page)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from kick_analysis.compare import SIGNIFICANCE_LEVEL
from kick_analysis.report.collect import Entry, _num, headline_metric, headline_tasks, is_perplexity
from kick_analysis.results_io import data_differences, data_provenance, format_provenance, run_display_name

DAGGER = "\u2020"


class Cell(str):
    """A leaderboard cell: its text (what markdown shows) plus, for the HTML page, the number it sorts by
    (``value``; None: sort by the text) and, in the header, the task its column belongs to (``task``; None for
    the config's own columns)."""

    value: float | None
    task: str | None

    def __new__(cls, text: str, value: float | None = None, task: str | None = None) -> "Cell":
        cell = super().__new__(cls, text)
        cell.value, cell.task = value, task
        return cell


CSV_COLUMNS = [
    "config", "model", "model_class", "method", "kind", "sparsity", "sparsity_type", "wbits", "groupsize",
    "measured_sparsity", "bits_per_weight", "effective_bits", "compression_seconds", "task", "metric", "filter",
    "value", "stderr", "higher_is_better", "dense_value", "pct_of_dense", "ratio_to_dense", "is_primary",
    "n_paired", "retention", "gain", "flips", "agreement", "difference", "ci_low", "ci_high", "mcnemar_p", "significant",
    "folder",
]


def summary_rows(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        info = e.info
        for task, entry in e.run.results.items():
            primary = headline_metric(e.run, task)
            for (metric, filt), value in e.run.metric_values(task).items():
                v = _num(value)
                if v is None:
                    continue
                hib = e.run.higher_is_better.get(task, {}).get(metric, not is_perplexity(metric))
                dv = _num(e.dense.run.results.get(task, {}).get(f"{metric},{filt}")) if e.dense else None
                dv = v if e.is_dense else dv
                stderr = _num(entry.get(f"{metric}_stderr,{filt}"))
                row = {
                    "config": e.label, "model": run_display_name(e.run), "model_class": e.run.model,
                    "method": info["method"], "kind": info["kind"], "sparsity": info.get("sparsity"),
                    "sparsity_type": info.get("sparsity_type"), "wbits": info.get("wbits"),
                    "groupsize": info.get("groupsize"), "measured_sparsity": info.get("measured_sparsity"),
                    "bits_per_weight": info.get("bits_per_weight"), "effective_bits": e.effective_bits,
                    "compression_seconds": info.get("seconds"), "task": task, "metric": metric, "filter": filt,
                    "value": v, "stderr": stderr, "higher_is_better": hib, "dense_value": dv,
                    "pct_of_dense": 100 * v / dv if dv and hib else None,
                    "ratio_to_dense": v / dv if dv else None,
                    "is_primary": primary == (metric, filt), "folder": str(e.run.folder),
                }
                p = e.paired.get(task)
                if p and p.get("metric") == metric and p.get("filter", filt) == filt:
                    row.update(n_paired=p.get("n_matched"), retention=p.get("retention"), gain=p.get("gain"),
                               flips=p.get("flips"),
                               agreement=p.get("agreement"), difference=p.get("difference"),
                               ci_low=p.get("ci_low"), ci_high=p.get("ci_high"), mcnemar_p=p.get("mcnemar_p"),
                               significant=p.get("significant"))
                rows.append(row)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    os.replace(tmp, path)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _score(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) >= 100 else f"{v:.3f}" if abs(v) >= 1 else f"{100 * v:.1f}"


def leaderboard_table(entries: Sequence[Entry]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard (also used for the HTML page; its cells are :class:`Cell` strings
    where a sort value or a task is known)."""
    tasks = headline_tasks(entries)
    head: list[str] = ["config", "sparsity (measured)", "bits/weight"]
    specs = []  # (task, metric, filter, is_ppl, paired?)
    for task in tasks:
        hm = next((headline_metric(e.run, task) for e in entries if task in e.run.results), None)
        if hm is None:
            continue
        metric, filt = hm
        ppl = is_perplexity(metric)
        paired = any(task in e.paired and e.paired[task].get("metric") for e in entries)
        specs.append((task, metric, filt, ppl, paired))
        names = [f"{task} {metric}", "x dense" if ppl else "% of dense"]
        if ppl and any(divergence_value(e, task, "kld_mean") is not None for e in entries):
            names += ["KLD vs dense", "same top"]
        if paired and not ppl:
            names += ["retention", "flips", "agreement", "McNemar p"]
        head += [Cell(name, task=task) for name in names]
    rows = []
    for e in entries:
        ms = e.info.get("measured_sparsity")
        sp = e.info.get("sparsity")
        if e.info["kind"] == "quant":
            sp_txt = "-" if ms is None else f"({100 * ms:.1f}%)"
        else:
            st = e.info.get("sparsity_type") or ""
            target = st if ":" in st else ("0%" if not sp else f"{100 * sp:.0f}%")
            sp_txt = target + ("" if ms is None else f" ({100 * ms:.1f}%)")
        cov = e.info.get("coverage")
        if cov is not None and cov < 1:  # routers kept dense, or allow_partial: say how much was compressed
            sp_txt += f" [{100 * cov:.1f}% of block weights compressed]"
        bpw = e.info.get("bits_per_weight")
        row = [Cell(e.label), Cell(sp_txt, e.x_sparsity), Cell("-" if bpw is None else f"{bpw:.2f}", bpw)]
        for task, metric, filt, ppl, paired in specs:
            v = _num(e.run.results.get(task, {}).get(f"{metric},{filt}"))
            dv = _num(e.dense.run.results.get(task, {}).get(f"{metric},{filt}")) if e.dense else None
            if e.is_dense:
                dv = v
            ratio = None if v is None or not dv else v / dv
            if ppl:
                row += [Cell("-" if v is None else f"{v:.2f}", v),
                        Cell("-" if ratio is None else f"x{ratio:.2f}", ratio)]
                if any(divergence_value(x, task, "kld_mean") is not None for x in entries):
                    row += divergence_cells(e, task)
                continue
            row += [Cell(_score(v), v), Cell("-" if ratio is None else f"{100 * ratio:.1f}%", ratio)]
            if paired:
                p = e.paired.get(task) or {}
                mark = f" {DAGGER}" if p.get("significant") else ""
                pv = p.get("mcnemar_p")
                row += [Cell(_pct(p.get("retention")), p.get("retention")),
                        Cell(_pct(p.get("flips")), p.get("flips")),
                        Cell(_pct(p.get("agreement")), p.get("agreement")),
                        Cell(("-" if pv is None else f"{pv:.3g}") + mark if p else "-", pv)]
        rows.append(row)
    return head, rows


def divergence_value(e: Entry, task: str, metric: str) -> float | None:
    """A divergence metric (kick_tasks/divergence.py) of a run compared with a dense reference, else None."""
    return _num(e.run.results.get(task, {}).get(f"{metric},none"))


def divergence_cells(e: Entry, task: str) -> list[str]:
    """``KLD vs dense`` (mean +- uncertainty; ">=" when the reference held only the dense top-k) and ``same top``."""
    if e.is_dense:
        return [Cell("0 (reference)", 0.0), Cell("100.0%", 1.0)]
    kld = divergence_value(e, task, "kld_mean")
    if kld is None:
        return [Cell("-"), Cell("-")]
    unc = divergence_value(e, task, "kld_mean_unc")
    bound = ">= " if divergence_value(e, task, "kld_lower_bound") else ""
    same = divergence_value(e, task, "same_top")
    return [Cell(f"{bound}{kld:.4f}" + (f" \u00b1 {unc:.4f}" if unc else ""), kld), Cell(_pct(same), same)]


def leaderboard_markdown(entries: Sequence[Entry]) -> str:
    head, rows = leaderboard_table(entries)
    lines = ["# Leaderboard", ""]
    bases = list(dict.fromkeys(run_display_name(e.run) + (f" ({e.base[1]})" if e.base[1] else "") for e in entries))
    lines.append("Model(s): " + ", ".join(f"`{b}`" for b in bases))
    lines.append("")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += [
        "",
        "Scores are percentages (accuracy-like metrics x 100) unless marked otherwise; `% of dense` = score / dense "
        "score. retention = share of the items the dense model answered correctly that the compressed model still "
        "answers correctly; agreement = share of items with the same (normalized) answer; McNemar p = exact test on "
        f"the paired right/wrong outcomes; {DAGGER} = significant at {int(100 * SIGNIFICANCE_LEVEL)}%; flips = share "
        "of items whose correctness changed, either direction (Dutta et al. 2024). "
        "Perplexity columns: lower is better, `x dense` = perplexity / dense perplexity. KLD vs dense = mean "
        "KL(P_dense || P_compressed) per scored token in nats (+- its uncertainty; `>=` marks a lower bound from a "
        "top-k dense reference), same top = share of tokens whose most likely next token is the dense model's.",
    ]
    data = data_lines(entries)
    if data:
        lines += ["", "## Data", "", *[f"- {line}" for line in data]]
    return "\n".join(lines) + "\n"


def data_lines(entries: Sequence[Entry]) -> list[str]:
    """Each data set the runs used (task data and calibration), with the configs that used it when not all,
    and a warning line wherever a config was scored on other data than its dense baseline."""
    used: dict[tuple[str, str], tuple[dict[str, Any], list[str]]] = {}
    for e in entries:
        for key, record in data_provenance(e.run).items():
            slot = used.setdefault((key, str(record.get("sha256"))), (record, []))
            slot[1].append(e.label)
    everyone = {e.label for e in entries}
    calib_users = {e.label for e in entries if "calibration" in data_provenance(e.run)}
    lines = []
    for (key, _), (record, labels) in sorted(used.items(), key=lambda kv: (kv[0][0] == "calibration", kv[0][0])):
        scope = everyone if key != "calibration" else calib_users
        who = "" if set(labels) >= scope else f" (used by {', '.join(labels)})"
        lines.append(("calibration " if key == "calibration" else "") + format_provenance(record) + who)
    for e in entries:
        if e.dense is not None:
            common = [t for t in e.dense.run.tasks if t in e.run.tasks]
            lines += [f"**Warning**: {e.label}: {p}" for p in data_differences(e.dense.run, e.run, common)]
    return lines
