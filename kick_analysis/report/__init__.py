"""``kick report``: summary.csv, leaderboard.md and plots over any set of lm-eval results folders.

    kick report DIR [DIR ...] --out OUTDIR [--html] [--no-plots] [--resamples 2000] [--seed 0]

DIRs are walked recursively for lm-eval ``results_*.json`` (``kick sweep`` folders, plain
``lm_eval --output_path`` folders, any mix); a DIR without lm-eval output is skipped with a
warning naming it. Runs are grouped by base model (``pretrained`` + ``gguf_file`` + ``revision``);
in each group the uncompressed run (``--model hf``, or a kick class at sparsity 0) is the dense
baseline every other run is scored against.

Outputs in OUTDIR:

* ``summary.csv``: one row per config x task x metric (x filter): compression (method, target and
  measured sparsity, bits per weight, effective bits), value, stderr, dense value, percent of the
  dense score, and for each task's primary metric the paired columns of ``kick compare``
  (retention, gain, agreement, difference with bootstrap CI, McNemar p) when both runs logged samples.
* ``leaderboard.md``: one row per config: measured sparsity / bits per weight, each task's primary
  score with the percent of dense retained, perplexities (x dense), and retention / agreement /
  McNemar p; ``\u2020`` marks a difference significant at 5 %.
* PNG plots (needs matplotlib: ``pip install 'kick-eval[report]'``): per task score vs sparsity per
  pruning method (dense as a horizontal line); perplexity vs knowledge-task score; quantization vs
  pruning at equal compression (score vs effective bits per weight); retention vs sparsity.
* ``report.html`` with ``--html``: the leaderboard and the plots in one self-contained page.

Effective bits per weight (the x axis of the quantization-vs-pruning plot): dense = 16 (fp16
storage); pruning at sparsity s = 16 * (1 - s) + 1 (fp16 values of the kept weights plus a
1-bit-per-weight presence mask; the same for N:M); quantization = the ``bits_per_weight`` measured by
the compression report (weights plus group scales/zeros), else ``wbits + 32 / groupsize``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kick_analysis.compare import METRIC_PREFERENCE, SIGNIFICANCE_LEVEL, compare_runs, table_metric
from kick_analysis.results_io import (Run, compression_info, config_label, data_differences, data_provenance,
                                   display_name, format_provenance, load_runs, run_display_name)

DAGGER = "\u2020"
MASK_BITS = 1.0  # presence-mask overhead per weight for pruned models (see module docstring)
DENSE_BITS = 16.0
PPL_PREFERENCE = ("token_perplexity", "word_perplexity", "perplexity", "byte_perplexity")


class ReportError(ValueError):
    """Nothing to report, or an output problem (message says what to do)."""


# --------------------------------------------------------------------------- model


@dataclass
class Entry:
    """One run in the report with its label, compression info, dense baseline and paired stats."""

    run: Run
    label: str
    info: dict[str, Any]
    base: tuple[str, str, str]
    dense: "Entry | None" = None
    paired: dict[str, Any] = field(default_factory=dict)  # task/group -> compare result
    paired_errors: dict[str, str] = field(default_factory=dict)

    @property
    def is_dense(self) -> bool:
        return self.info["kind"] == "dense"

    @property
    def x_sparsity(self) -> float | None:
        ms = self.info.get("measured_sparsity")
        return ms if ms is not None else self.info.get("sparsity")

    @property
    def effective_bits(self) -> float | None:
        return effective_bits(self.info)


def effective_bits(info: dict[str, Any]) -> float | None:
    """Storage bits per weight under the convention of the module docstring."""
    if info["kind"] == "dense":
        return DENSE_BITS
    if info["kind"] == "prune":
        s = info.get("measured_sparsity")
        s = info.get("sparsity") if s is None else s
        return None if s is None else DENSE_BITS * (1 - s) + MASK_BITS
    if info.get("bits_per_weight") is not None:
        return float(info["bits_per_weight"])
    if info.get("wbits") is not None:
        g = info.get("groupsize")
        return info["wbits"] + (32.0 / g if g and g > 0 else 0.0)
    return None


def is_perplexity(metric: str) -> bool:
    return "perplexity" in metric


def _sort_key(e: Entry) -> tuple:
    kind = {"dense": 0, "prune": 1, "quant": 2}.get(e.info["kind"], 3)
    nm = 1 if (e.info.get("sparsity_type") or "unstructured") != "unstructured" else 0
    return (e.base, kind, e.info["method"], nm, e.info.get("sparsity") or 0, -(e.info.get("wbits") or 0), e.label)


def _sweep_slug(folder: Path) -> str | None:
    """Config slug when ``folder`` lies inside a ``kick sweep`` output (``<sweep>/<slug>/...``)."""
    for parent in [folder, *folder.parents]:
        if (parent / "sweep.json").is_file() and parent != folder:
            return folder.relative_to(parent).parts[0]
    return None


def _base_key(run: Run) -> tuple[str, str, str]:
    a = run.model_args
    return (str(a.get("pretrained", run.pretrained)), str(a.get("gguf_file", "")), str(a.get("revision", "")))


def headline_metric(run: Run, task: str) -> tuple[str, str] | None:
    """(metric, filter) shown for a task: perplexity for perplexity tasks, else the primary metric."""
    values = run.metric_values(task)
    if not values:
        return None
    metrics = list(dict.fromkeys(m for m, _ in values))
    chosen = next((m for m in PPL_PREFERENCE if m in metrics), None)
    if chosen is None:
        wanted = table_metric(task)
        chosen = next((m for m in ([wanted] if wanted else []) + list(METRIC_PREFERENCE) if m in metrics), None)
    if chosen is None:
        hib = run.higher_is_better.get(task, {})
        chosen = next((m for m in metrics if hib.get(m, True)), metrics[0])
    filters = [f for m, f in values if m == chosen]
    return chosen, ("none" if "none" in filters else filters[0])


def headline_tasks(entries: Sequence[Entry]) -> list[str]:
    """Tasks shown in the leaderboard and plots (first-seen order): the lowest-level groups that have a
    score (e.g. ``kick_mcr_qa``) and the tasks outside them; groups of groups without their own score
    (e.g. ``kick``) are replaced by their members."""
    out: dict[str, None] = {}
    for e in entries:
        gs = e.run.group_subtasks
        scored = {g for g in gs if e.run.metric_values(g)}
        leaf_groups = {g for g, ts in gs.items() if g in scored and not any(t in gs for t in ts)}
        hidden = {t for g in leaf_groups for t in gs[g]}
        for task in e.run.results:
            if task in hidden or (task in gs and task not in leaf_groups):
                continue
            out.setdefault(task, None)
    return list(out)


def _disambiguate(entries: Sequence[Entry]) -> None:
    """Make labels unique: add the model's short name, then the run folder, where labels collide."""
    for suffix in (lambda e: Path(e.base[0]).name + (f"/{e.base[1]}" if e.base[1] else ""),
                   lambda e: str(e.run.folder)):
        labels = [e.label for e in entries]
        for e in entries:
            if labels.count(e.label) > 1:
                e.label = f"{e.label} [{suffix(e)}]"


def _sweep_root(folder: Path) -> Path | None:
    for parent in folder.parents:
        if (parent / "sweep.json").is_file():
            return parent
    return None


def _baseline_rank(e: Entry, d: Entry) -> tuple:
    """Lower is better: same sweep, same per-task document counts, more tasks in common."""
    same_sweep = _sweep_root(e.run.folder) is not None and _sweep_root(e.run.folder) == _sweep_root(d.run.folder)
    common = [t for t in e.run.tasks if t in d.run.tasks]
    same_docs = all(e.run.n_samples.get(t) == d.run.n_samples.get(t) for t in common)
    return (not same_sweep, not same_docs, -len(common), d.run.model != "hf")


def collect(dirs: Sequence[str | Path], n_resamples: int = 2000, seed: int = 0) -> list[Entry]:
    """Load every run under ``dirs``, find each one's dense baseline and compute the paired stats."""
    runs = load_runs(dirs)
    if not runs:
        raise ReportError(f"no lm-eval results found under {', '.join(map(str, dirs))}")
    entries = []
    for run in runs:
        slug = _sweep_slug(run.folder)
        entries.append(Entry(run, slug or config_label(run), compression_info(run), _base_key(run)))
    _disambiguate(entries)
    for base in dict.fromkeys(e.base for e in entries):
        group = [e for e in entries if e.base == base]
        dense = [e for e in group if e.is_dense]
        if not dense:
            warnings.warn(f"no dense (uncompressed) run of {display_name(base[0])} among the folders: no dense-relative columns "
                          "for its configs", stacklevel=2)
            continue
        dense.sort(key=lambda e: (e.run.model != "hf", -len(e.run.samples_files)))
        if len(dense) > 1:
            warnings.warn(f"{len(dense)} dense runs of {display_name(base[0])}; each config is scored against the one in the same "
                          "sweep folder, else the one evaluated on the same documents", stacklevel=2)
        for e in group:
            if e.is_dense:
                continue
            ref = min(dense, key=lambda d: _baseline_rank(e, d))
            e.dense = ref
            for problem in data_differences(ref.run, e.run, [t for t in ref.run.tasks if t in e.run.tasks]):
                warnings.warn(f"{e.label} vs its dense baseline {ref.label}: {problem}", stacklevel=2)
            common = [t for t in ref.run.tasks if t in e.run.tasks and t in ref.run.samples_files
                      and t in e.run.samples_files]  # (perplexities need no samples: aggregate columns)
            if not common:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rep = compare_runs(ref.run, e.run, common, skip_errors=True, n_resamples=n_resamples, seed=seed)
            e.paired = {**rep["tasks"], **rep.get("groups", {})}
            e.paired_errors = rep.get("errors", {})
            for task, err in e.paired_errors.items():
                warnings.warn(f"{e.label}: {err}", stacklevel=2)
    entries.sort(key=_sort_key)
    return entries


# --------------------------------------------------------------------------- csv


CSV_COLUMNS = [
    "config", "model", "model_class", "method", "kind", "sparsity", "sparsity_type", "wbits", "groupsize",
    "measured_sparsity", "bits_per_weight", "effective_bits", "compression_seconds", "task", "metric", "filter",
    "value", "stderr", "higher_is_better", "dense_value", "pct_of_dense", "ratio_to_dense", "is_primary",
    "n_paired", "retention", "gain", "agreement", "difference", "ci_low", "ci_high", "mcnemar_p", "significant",
    "folder",
]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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


# --------------------------------------------------------------------------- leaderboard


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _score(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) >= 100 else f"{v:.3f}" if abs(v) >= 1 else f"{100 * v:.1f}"


def leaderboard_table(entries: Sequence[Entry]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the leaderboard (also used for the HTML page)."""
    tasks = headline_tasks(entries)
    head = ["config", "sparsity (measured)", "bits/weight"]
    specs = []  # (task, metric, filter, is_ppl, paired?)
    for task in tasks:
        hm = next((headline_metric(e.run, task) for e in entries if task in e.run.results), None)
        if hm is None:
            continue
        metric, filt = hm
        ppl = is_perplexity(metric)
        paired = any(task in e.paired and e.paired[task].get("metric") for e in entries)
        specs.append((task, metric, filt, ppl, paired))
        if ppl:
            head += [f"{task} {metric}", "x dense"]
        else:
            head += [f"{task} {metric}", "% of dense"]
            if paired:
                head += ["retention", "agreement", "McNemar p"]
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
        row = [e.label, sp_txt, "-" if bpw is None else f"{bpw:.2f}"]
        for task, metric, filt, ppl, paired in specs:
            v = _num(e.run.results.get(task, {}).get(f"{metric},{filt}"))
            dv = _num(e.dense.run.results.get(task, {}).get(f"{metric},{filt}")) if e.dense else None
            if e.is_dense:
                dv = v
            if ppl:
                row += ["-" if v is None else f"{v:.2f}", "-" if v is None or not dv else f"x{v / dv:.2f}"]
                continue
            row += [_score(v), "-" if v is None or not dv else f"{100 * v / dv:.1f}%"]
            if paired:
                p = e.paired.get(task) or {}
                mark = f" {DAGGER}" if p.get("significant") else ""
                pv = p.get("mcnemar_p")
                row += [_pct(p.get("retention")), _pct(p.get("agreement")),
                        ("-" if pv is None else f"{pv:.3g}") + mark if p else "-"]
        rows.append(row)
    return head, rows


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
        f"the paired right/wrong outcomes; {DAGGER} = significant at {int(100 * SIGNIFICANCE_LEVEL)}%. "
        "Perplexity columns: lower is better, `x dense` = perplexity / dense perplexity.",
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


# --------------------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ReportError("plots need matplotlib: pip install 'kick-eval[report]' (or run with --no-plots)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_axis(ax, axis: str) -> None:
    """Log scale with plain numbers (10, 30, 100) instead of overlapping 3x10^1 minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _value(e: Entry, task: str, metric: str, filt: str) -> float | None:
    return _num(e.run.results.get(task, {}).get(f"{metric},{filt}"))


def short_label(e: Entry) -> str:
    """The grid value of a config, for plot annotations: ``30%``, ``2:4``, ``w4``, ``dense``."""
    info = e.info
    st = info.get("sparsity_type") or "unstructured"
    if e.is_dense:
        return "dense"
    if info["kind"] == "prune":
        return st if ":" in st else f"{round(100 * (info.get('sparsity') or 0))}%"
    if info.get("wbits") is not None:
        return f"w{info['wbits']}"
    return e.label


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def make_plots(entries: Sequence[Entry], out: Path) -> list[Path]:
    """Write the PNG plots; return their paths."""
    plt = _pyplot()
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    tasks = headline_tasks(entries)
    specs = []
    for task in tasks:
        hm = next((headline_metric(e.run, task) for e in entries if task in e.run.results), None)
        if hm:
            specs.append((task, *hm))
    prune_methods = list(dict.fromkeys(e.info["method"] for e in entries if e.info["kind"] == "prune"))
    quant_methods = list(dict.fromkeys(e.info["method"] for e in entries if e.info["kind"] == "quant"))
    dense_entries = [e for e in entries if e.is_dense]
    score_specs = [s for s in specs if not is_perplexity(s[1])]
    ppl_specs = [s for s in specs if is_perplexity(s[1])]

    # 1. score vs sparsity per pruning method (+ perplexity vs sparsity)
    for task, metric, filt in specs:
        if not prune_methods:
            break
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for method in prune_methods:
            pts = sorted((e.x_sparsity, _value(e, task, metric, filt)) for e in entries
                         if e.info["method"] == method and (e.info.get("sparsity_type") or "") == "unstructured"
                         and e.x_sparsity is not None and _value(e, task, metric, filt) is not None)
            dense_v = [_value(d, task, metric, filt) for d in dense_entries if _value(d, task, metric, filt) is not None]
            if dense_v:
                pts = [(0.0, dense_v[0])] + pts
            line = ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=method)[0]
            for e in entries:
                st = e.info.get("sparsity_type") or ""
                if e.info["method"] == method and ":" in st and _value(e, task, metric, filt) is not None:
                    ax.scatter([(e.x_sparsity or 0) * 100], [_value(e, task, metric, filt)], marker="x", s=60,
                               color=line.get_color(), label=f"{method} {st}", zorder=3)
        for d in dense_entries[:1]:
            dv = _value(d, task, metric, filt)
            if dv is not None:
                ax.axhline(dv, color="gray", linestyle="--", label="dense")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(f"{metric}" + (" (lower is better)" if is_perplexity(metric) else ""))
        if is_perplexity(metric):
            _log_axis(ax, "y")
        ax.set_title(f"{task}: {metric} vs sparsity")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, f"score_vs_sparsity_{_safe(task)}.png")

    # 2. perplexity vs knowledge-task score (the paper's mismatch), as a scatter and against sparsity
    for ptask, pmetric, pfilt in ppl_specs[:1]:
        for task, metric, filt in score_specs:
            dense_pt = next(((_value(d, ptask, pmetric, pfilt), _value(d, task, metric, filt)) for d in dense_entries
                             if _value(d, ptask, pmetric, pfilt) is not None and _value(d, task, metric, filt) is not None),
                            None)
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for method in [*prune_methods, *quant_methods]:
                pts = [(_value(e, ptask, pmetric, pfilt), _value(e, task, metric, filt), short_label(e)) for e in entries
                       if e.info["method"] == method]
                pts = sorted(p for p in pts if p[0] is not None and p[1] is not None)
                if not pts:
                    continue
                # each method as a path from the dense point through increasing perplexity, labelled by its
                # grid value (30%, 2:4, w4): readable for a full grid where config names would overlap
                path = ([dense_pt] if dense_pt else []) + [p[:2] for p in pts]
                ax.plot([p[0] for p in path], [p[1] for p in path], marker="s" if method in quant_methods else "o",
                        markersize=4, linewidth=1, alpha=0.85, label=method)
                for x, y, lab in pts:
                    ax.annotate(lab, (x, y), fontsize=6, alpha=0.8, xytext=(3, 3), textcoords="offset points")
            if dense_pt:
                ax.scatter([dense_pt[0]], [dense_pt[1]], marker="*", s=160, color="black", label="dense", zorder=3)
            _log_axis(ax, "x")
            ax.set_xlabel(f"{ptask} {pmetric} (log)")
            ax.set_ylabel(f"{task} {metric}")
            ax.set_title("perplexity vs knowledge-task score")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            save(fig, f"perplexity_vs_{_safe(task)}.png")

            # the same on one axis: score and perplexity, both relative to dense, against sparsity
            if not (dense_pt and dense_pt[0] and dense_pt[1] and prune_methods):
                continue
            d_ppl, d_score = dense_pt
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for method in prune_methods:
                pts = sorted((e.x_sparsity, _value(e, task, metric, filt), _value(e, ptask, pmetric, pfilt))
                             for e in entries if e.info["method"] == method and e.x_sparsity is not None
                             and (e.info.get("sparsity_type") or "unstructured") == "unstructured")
                pts = [(0.0, d_score, d_ppl)] + [p for p in pts if p[1] is not None and p[2]]
                xs = [100 * p[0] for p in pts]
                line = ax.plot(xs, [100 * p[1] / d_score for p in pts], marker="o", label=f"{method}: {task}")[0]
                ax.plot(xs, [100 * d_ppl / p[2] for p in pts], marker="o", markerfacecolor="none", linestyle="--",
                        color=line.get_color(), label=f"{method}: dense ppl / ppl")
            ax.set_xlabel("sparsity (%)")
            ax.set_ylabel("% of the dense model")
            ax.set_ylim(0, 110)
            ax.set_title(f"what perplexity shows (dashed) vs what {task} shows (solid)", fontsize=10)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            save(fig, f"mismatch_{_safe(task)}.png")

    # 3. quantization vs pruning at equal compression
    if quant_methods or prune_methods:
        for task, metric, filt in specs:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for method in [*prune_methods, *quant_methods]:
                pts = sorted((e.effective_bits, _value(e, task, metric, filt)) for e in entries
                             if e.info["method"] == method and e.effective_bits is not None
                             and _value(e, task, metric, filt) is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s" if method in quant_methods else "o",
                            linestyle="-" if method in quant_methods else ":", label=method)
            for d in dense_entries[:1]:
                dv = _value(d, task, metric, filt)
                if dv is not None:
                    ax.scatter([DENSE_BITS], [dv], marker="*", s=150, color="black", label="dense (16 bit)", zorder=3)
            ax.set_xlabel("effective bits per weight (pruned: 16(1-s)+1 mask bit)")
            ax.set_ylabel(metric + (" (log)" if is_perplexity(metric) else ""))
            if is_perplexity(metric):
                _log_axis(ax, "y")
            ax.set_title(f"{task}: quantization vs pruning at equal size")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            save(fig, f"quant_vs_prune_{_safe(task)}.png")

    # 4. retention vs sparsity
    for task, metric, filt in score_specs:
        have = [e for e in entries if e.paired.get(task, {}).get("retention") is not None]
        if not have or not prune_methods:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for method in prune_methods:
            pts = sorted((e.x_sparsity, e.paired[task]["retention"]) for e in have
                         if e.info["method"] == method and (e.info.get("sparsity_type") or "") == "unstructured")
            line = ax.plot([0] + [p[0] * 100 for p in pts], [100] + [100 * p[1] for p in pts], marker="o",
                           label=method)[0]
            for e in have:
                st = e.info.get("sparsity_type") or ""
                if e.info["method"] == method and ":" in st:
                    ax.scatter([(e.x_sparsity or 0) * 100], [100 * e.paired[task]["retention"]], marker="x", s=60,
                               color=line.get_color(), label=f"{method} {st}", zorder=3)
        for e in have:
            if e.info["kind"] == "quant":
                ax.axhline(100 * e.paired[task]["retention"], linestyle=":", linewidth=1, alpha=0.6)
                ax.annotate(e.label, (0, 100 * e.paired[task]["retention"]), fontsize=6, alpha=0.7)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("retention (% of dense-correct items kept)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{task}: retention vs sparsity")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        save(fig, f"retention_vs_sparsity_{_safe(task)}.png")
    return written


# --------------------------------------------------------------------------- html


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


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kick report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="lm-eval output folders (walked recursively)")
    p.add_argument("--out", required=True, help="folder for summary.csv, leaderboard.md, plots")
    p.add_argument("--html", action="store_true", help="also write a self-contained report.html")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the paired CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if not args.no_plots:
                _pyplot()  # fail early, before the work
            entries = collect(args.dirs, n_resamples=args.resamples, seed=args.seed)
            out.mkdir(parents=True, exist_ok=True)
            rows = summary_rows(entries)
            write_csv(rows, out / "summary.csv")
            md = leaderboard_markdown(entries)
            tmp = out / "leaderboard.md.tmp"
            tmp.write_text(md, encoding="utf-8")
            os.replace(tmp, out / "leaderboard.md")
            images = [] if args.no_plots else make_plots(entries, out)
            if args.html:
                write_html(entries, images, out / "report.html")
        except ReportError as exc:
            for w in caught:
                print(f"kick report: warning: {w.message}", file=sys.stderr)
            print(f"kick report: error: {exc}", file=sys.stderr)
            return 2
    for w in caught:
        if "matplotlib" in str(w.filename) or "Glyph" in str(w.message):
            continue
        print(f"kick report: warning: {w.message}", file=sys.stderr)
    print(md)
    print(f"kick report: {len(entries)} runs, {len(rows)} summary rows, {len(images)} plots -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
