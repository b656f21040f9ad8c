"""``kick report`` step 3: the PNG plots, one function per figure (needs matplotlib: ``kick-eval[report]``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from kick_analysis.report.collect import (DENSE_BITS, Entry, ReportError, _num, headline_metric, headline_tasks,
                                          is_perplexity)


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


def _finish(ax, title: str, legend_size: int = 8, **title_kw) -> None:
    """Title, legend and grid: the last touch every figure gets."""
    ax.set_title(title, **title_kw)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


Spec = tuple[str, str, str]  # (task, metric, filter) of a task's headline metric


@dataclass
class PlotData:
    """What every figure draws from: the entries, each task's headline metric, the methods, the dense runs."""

    entries: Sequence[Entry]
    specs: list[Spec]
    prune_methods: list[str]
    quant_methods: list[str]
    dense_entries: list[Entry]

    @property
    def score_specs(self) -> list[Spec]:
        return [s for s in self.specs if not is_perplexity(s[1])]

    @property
    def ppl_specs(self) -> list[Spec]:
        return [s for s in self.specs if is_perplexity(s[1])]


def plot_data(entries: Sequence[Entry]) -> PlotData:
    specs = []
    for task in headline_tasks(entries):
        hm = next((headline_metric(e.run, task) for e in entries if task in e.run.results), None)
        if hm:
            specs.append((task, *hm))
    return PlotData(
        entries=entries, specs=specs,
        prune_methods=list(dict.fromkeys(e.info["method"] for e in entries if e.info["kind"] == "prune")),
        quant_methods=list(dict.fromkeys(e.info["method"] for e in entries if e.info["kind"] == "quant")),
        dense_entries=[e for e in entries if e.is_dense])


def score_vs_sparsity(plt, d: PlotData, task: str, metric: str, filt: str):
    """Figure 1: score vs sparsity per pruning method (dense as a horizontal line; N:M as crosses)."""
    entries, dense_entries = d.entries, d.dense_entries
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in d.prune_methods:
        pts = sorted((e.x_sparsity, _value(e, task, metric, filt)) for e in entries
                     if e.info["method"] == method and (e.info.get("sparsity_type") or "") == "unstructured"
                     and e.x_sparsity is not None and _value(e, task, metric, filt) is not None)
        dense_v = [_value(de, task, metric, filt) for de in dense_entries if _value(de, task, metric, filt) is not None]
        if dense_v:
            pts = [(0.0, dense_v[0])] + pts
        line = ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=method)[0]
        for e in entries:
            st = e.info.get("sparsity_type") or ""
            if e.info["method"] == method and ":" in st and _value(e, task, metric, filt) is not None:
                ax.scatter([(e.x_sparsity or 0) * 100], [_value(e, task, metric, filt)], marker="x", s=60,
                           color=line.get_color(), label=f"{method} {st}", zorder=3)
    for de in dense_entries[:1]:
        dv = _value(de, task, metric, filt)
        if dv is not None:
            ax.axhline(dv, color="gray", linestyle="--", label="dense")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(f"{metric}" + (" (lower is better)" if is_perplexity(metric) else ""))
    if is_perplexity(metric):
        _log_axis(ax, "y")
    _finish(ax, f"{task}: {metric} vs sparsity")
    return fig


def dense_point(d: PlotData, ppl: Spec, score: Spec) -> tuple[float, float] | None:
    """(perplexity, score) of the first dense run that has both, else None."""
    (ptask, pmetric, pfilt), (task, metric, filt) = ppl, score
    return next(((_value(de, ptask, pmetric, pfilt), _value(de, task, metric, filt)) for de in d.dense_entries
                 if _value(de, ptask, pmetric, pfilt) is not None and _value(de, task, metric, filt) is not None), None)


def perplexity_vs_score(plt, d: PlotData, ppl: Spec, score: Spec, dense_pt: tuple[float, float] | None):
    """Figure 2: perplexity vs knowledge-task score (the paper's mismatch) as one path per method."""
    (ptask, pmetric, pfilt), (task, metric, filt) = ppl, score
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in [*d.prune_methods, *d.quant_methods]:
        pts = [(_value(e, ptask, pmetric, pfilt), _value(e, task, metric, filt), short_label(e)) for e in d.entries
               if e.info["method"] == method]
        pts = sorted(p for p in pts if p[0] is not None and p[1] is not None)
        if not pts:
            continue
        # each method as a path from the dense point through increasing perplexity, labelled by its
        # grid value (30%, 2:4, w4): readable for a full grid where config names would overlap
        path = ([dense_pt] if dense_pt else []) + [p[:2] for p in pts]
        ax.plot([p[0] for p in path], [p[1] for p in path], marker="s" if method in d.quant_methods else "o",
                markersize=4, linewidth=1, alpha=0.85, label=method)
        for x, y, lab in pts:
            ax.annotate(lab, (x, y), fontsize=6, alpha=0.8, xytext=(3, 3), textcoords="offset points")
    if dense_pt:
        ax.scatter([dense_pt[0]], [dense_pt[1]], marker="*", s=160, color="black", label="dense", zorder=3)
    _log_axis(ax, "x")
    ax.set_xlabel(f"{ptask} {pmetric} (log)")
    ax.set_ylabel(f"{task} {metric}")
    _finish(ax, "perplexity vs knowledge-task score")
    return fig


def mismatch(plt, d: PlotData, ppl: Spec, score: Spec, dense_pt: tuple[float, float]):
    """Figure 2b: score and perplexity, both relative to dense, against sparsity on one axis."""
    (ptask, pmetric, pfilt), (task, metric, filt) = ppl, score
    d_ppl, d_score = dense_pt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in d.prune_methods:
        pts = sorted((e.x_sparsity, _value(e, task, metric, filt), _value(e, ptask, pmetric, pfilt))
                     for e in d.entries if e.info["method"] == method and e.x_sparsity is not None
                     and (e.info.get("sparsity_type") or "unstructured") == "unstructured")
        pts = [(0.0, d_score, d_ppl)] + [p for p in pts if p[1] is not None and p[2]]
        xs = [100 * p[0] for p in pts]
        line = ax.plot(xs, [100 * p[1] / d_score for p in pts], marker="o", label=f"{method}: {task}")[0]
        ax.plot(xs, [100 * d_ppl / p[2] for p in pts], marker="o", markerfacecolor="none", linestyle="--",
                color=line.get_color(), label=f"{method}: dense ppl / ppl")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("% of the dense model")
    ax.set_ylim(0, 110)
    _finish(ax, f"what perplexity shows (dashed) vs what {task} shows (solid)", legend_size=7, fontsize=10)
    return fig


def quant_vs_prune(plt, d: PlotData, task: str, metric: str, filt: str):
    """Figure 3: quantization vs pruning at equal compression (score vs effective bits per weight)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in [*d.prune_methods, *d.quant_methods]:
        pts = sorted((e.effective_bits, _value(e, task, metric, filt)) for e in d.entries
                     if e.info["method"] == method and e.effective_bits is not None
                     and _value(e, task, metric, filt) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s" if method in d.quant_methods else "o",
                    linestyle="-" if method in d.quant_methods else ":", label=method)
    for de in d.dense_entries[:1]:
        dv = _value(de, task, metric, filt)
        if dv is not None:
            ax.scatter([DENSE_BITS], [dv], marker="*", s=150, color="black", label="dense (16 bit)", zorder=3)
    ax.set_xlabel("effective bits per weight (pruned: 16(1-s)+1 mask bit)")
    ax.set_ylabel(metric + (" (log)" if is_perplexity(metric) else ""))
    if is_perplexity(metric):
        _log_axis(ax, "y")
    _finish(ax, f"{task}: quantization vs pruning at equal size")
    return fig


def retention_vs_sparsity(plt, d: PlotData, task: str, have: Sequence[Entry]):
    """Figure 4: retention (share of dense-correct items kept) vs sparsity; quantized configs as lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in d.prune_methods:
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
    _finish(ax, f"{task}: retention vs sparsity")
    return fig


def _divergence(e: Entry, task: str, metric: str) -> float | None:
    return 0.0 if e.is_dense else _value(e, task, metric, "none")


def divergence_vs_score(plt, d: PlotData, ppl: Spec, score: Spec):
    """Which measure predicts the knowledge loss: % of dense score against ln(PPL ratio) and against mean KLD."""
    ptask = ppl[0]
    task, metric, filt = score
    dense_v = next((_value(de, task, metric, filt) for de in d.dense_entries
                    if _value(de, task, metric, filt)), None)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0), sharey=True)
    for ax, (key, xlabel) in zip(axes, (("ln_ppl_ratio", "ln(PPL / PPL dense)"),
                                        ("kld_mean", "mean KLD vs dense (nats/token)"))):
        for method in ["dense", *d.prune_methods, *d.quant_methods]:
            pts = [(_divergence(e, ptask, key), _value(e, task, metric, filt), short_label(e)) for e in d.entries
                   if (e.is_dense if method == "dense" else e.info["method"] == method and not e.is_dense)]
            pts = [(x, 100 * y / dense_v, lab) for x, y, lab in pts if x is not None and y is not None and dense_v]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="*" if method == "dense" else "o",
                       s=120 if method == "dense" else 40, label=method, zorder=3)
            for x, y, lab in pts:
                ax.annotate(lab, (x, y), fontsize=6, alpha=0.8, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        _finish(ax, xlabel.split(" (")[0], legend_size=7)
    axes[0].set_ylabel(f"{task} {metric} (% of dense)")
    fig.suptitle(f"does the divergence predict the knowledge loss? ({task})", fontsize=10)
    return fig


def flips_per_config(plt, d: PlotData, task: str, have: Sequence[Entry]):
    """Flips (Dutta et al. 2024) per config: items lost and gained against the dense run, stacked, % of items."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    labels = [e.label for e in have]
    n = [max(e.paired[task].get("n_matched") or 1, 1) for e in have]
    lost = [100 * e.paired[task]["lost"] / k for e, k in zip(have, n)]
    gained = [100 * e.paired[task]["gained"] / k for e, k in zip(have, n)]
    ax.bar(labels, lost, label="right -> wrong (lost)", color="#c0504d")
    ax.bar(labels, gained, bottom=lost, label="wrong -> right (gained)", color="#4f81bd")
    ax.set_ylabel("flips (% of items)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    _finish(ax, f"{task}: flips vs the dense run")
    return fig


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

    d = plot_data(entries)
    if d.prune_methods:
        for task, metric, filt in d.specs:
            save(score_vs_sparsity(plt, d, task, metric, filt), f"score_vs_sparsity_{_safe(task)}.png")
    for ppl in d.ppl_specs[:1]:
        for score in d.score_specs:
            dense_pt = dense_point(d, ppl, score)
            save(perplexity_vs_score(plt, d, ppl, score, dense_pt), f"perplexity_vs_{_safe(score[0])}.png")
            if dense_pt and dense_pt[0] and dense_pt[1] and d.prune_methods:
                save(mismatch(plt, d, ppl, score, dense_pt), f"mismatch_{_safe(score[0])}.png")
    if d.quant_methods or d.prune_methods:
        for task, metric, filt in d.specs:
            save(quant_vs_prune(plt, d, task, metric, filt), f"quant_vs_prune_{_safe(task)}.png")
    for task, metric, filt in d.score_specs:
        have = [e for e in entries if e.paired.get(task, {}).get("retention") is not None]
        if have and d.prune_methods:
            save(retention_vs_sparsity(plt, d, task, have), f"retention_vs_sparsity_{_safe(task)}.png")
        flipped = [e for e in entries if e.paired.get(task, {}).get("flips") is not None]
        if flipped:
            save(flips_per_config(plt, d, task, flipped), f"flips_{_safe(task)}.png")
    for ppl in d.ppl_specs[:1]:
        if any(_divergence(e, ppl[0], "kld_mean") for e in entries if not e.is_dense):
            for score in d.score_specs:
                save(divergence_vs_score(plt, d, ppl, score), f"divergence_vs_{_safe(score[0])}.png")
    return written
