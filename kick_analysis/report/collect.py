"""``kick report`` step 1: load the runs, pair each config with its dense baseline, compute the paired stats.

Effective bits per weight (the x axis of the quantization-vs-pruning plot): see :func:`effective_bits`
and the ``kick report`` docstring (:mod:`kick_analysis.report`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kick_analysis.compare import METRIC_PREFERENCE, aggregate_only, compare_runs, table_metric
from kick_analysis.report.items import flipped_items
from kick_analysis.results_io import (Run, compression_info, config_label, data_differences, display_name, load_runs,
                                      sweep_slug, UNCOMPRESSED_MODELS)

MASK_BITS = 1.0  # presence-mask overhead per weight for pruned models (see the kick_analysis.report docstring)
DENSE_BITS = 16.0
PPL_PREFERENCE = ("token_perplexity", "word_perplexity", "perplexity", "byte_perplexity")


class ReportError(ValueError):
    """Nothing to report, or an output problem (message says what to do)."""


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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
    changed_items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> lost/gained items
    item_notes: list[str] = field(default_factory=list)  # why (some) per-item comparisons are missing

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
    return (not same_sweep, not same_docs, -len(common), d.run.model not in UNCOMPRESSED_MODELS)


def missing_baseline_note(e: Entry) -> str:
    """Why a config has no dense-relative numbers: its model's uncompressed run is not among the folders."""
    model = display_name(e.base[0]) + (f" ({e.base[1]})" if e.base[1] else "")
    return (f"no dense baseline: no uncompressed run of {model} among the report's folders; evaluate it "
            f"(lm_eval --model hf --model_args pretrained={e.base[0]} --log_samples, same tasks) and add its "
            "output folder to kick report (as --dense DIR when kick inspect cannot read its checkpoint here)")


def _missing_samples_notes(e: Entry, ref: Entry) -> list[str]:
    """Per run side, the tasks that lack the per-item log the per-item view needs (perplexities need none)."""
    itemized = [t for t in ref.run.tasks if t in e.run.tasks and not aggregate_only(t)
                and e.run.output_type(t) != "loglikelihood_rolling"]
    notes = []
    for who, run in ((f"this config ({e.label})", e.run), (f"its dense baseline ({ref.label})", ref.run)):
        missing = [t for t in itemized if t not in run.samples_files]
        if missing:
            notes.append(f"no per-item log (samples_<task>_*.jsonl) in {who} for {', '.join(missing)}: rerun "
                         f"lm_eval with --log_samples (folder {run.folder})")
    return notes


def collect(dirs: Sequence[str | Path], n_resamples: int = 2000, seed: int = 0,
            dense_dirs: Sequence[str | Path] = ()) -> list[Entry]:
    """Load every run under ``dirs``, find each one's dense baseline and compute the paired stats.

    ``dense_dirs`` (``kick report --dense DIR``): the runs there are THE dense baseline of every other run,
    whatever model they load (checkpoints compressed elsewhere have their own paths); without it runs are grouped
    by base model and paired with the group's uncompressed run."""
    named = {r.folder for r in load_runs(dense_dirs)} if dense_dirs else set()
    if dense_dirs and not named:
        raise ReportError(f"--dense: no lm-eval results found under {', '.join(map(str, dense_dirs))}")
    runs = load_runs([*dense_dirs, *dirs])
    if not runs:
        raise ReportError(f"no lm-eval results found under {', '.join(map(str, dirs))}")
    seen: set[Path] = set()
    entries = []
    for run in runs:
        if run.folder in seen:
            continue
        seen.add(run.folder)
        slug = sweep_slug(run.folder)
        info = compression_info(run)
        label = slug or config_label(run)
        if run.folder in named:
            info = {**info, "kind": "dense", "method": "dense", "named_dense": True}
            label = "dense (--dense)" if not slug else slug
        elif named and info["kind"] == "dense":  # an unnamed float run beside the named baseline
            info = {**info, "kind": "unknown"}
        entries.append(Entry(run, label, info, ("(named dense)", "", "") if named else _base_key(run)))
    _disambiguate(entries)
    for base in dict.fromkeys(e.base for e in entries):
        group = [e for e in entries if e.base == base]
        dense = [e for e in group if e.is_dense]
        if not dense:
            warnings.warn(f"no dense (uncompressed) run of {display_name(base[0])} among the folders: no dense-relative columns "
                          "for its configs (name the baseline with --dense DIR: a plain hf run counts as dense only "
                          "when kick inspect reads float weights without zeros in its checkpoint)", stacklevel=2)
            for e in group:
                e.item_notes.append(missing_baseline_note(e))
            continue
        dense.sort(key=lambda e: (e.run.model not in UNCOMPRESSED_MODELS, -len(e.run.samples_files)))
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
            e.item_notes += _missing_samples_notes(e, ref)
            if not common:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rep = compare_runs(ref.run, e.run, common, skip_errors=True, n_resamples=n_resamples, seed=seed,
                                   keep_pairs=True)
            for task, result in rep["tasks"].items():
                e.changed_items[task] = flipped_items(task, result, e.run.output_type(task))
                result.pop("pairs", None)  # the samples: only the flipped items are kept
            e.paired = {**rep["tasks"], **rep.get("groups", {})}
            e.paired_errors = rep.get("errors", {})
            for task, err in e.paired_errors.items():
                warnings.warn(f"{e.label}: {err}", stacklevel=2)
                e.item_notes.append(err)
    entries.sort(key=_sort_key)
    return entries
