"""``kick compare``: dense-relative scoring of a compressed run against its dense baseline.

    kick compare DENSE_DIR COMPRESSED_DIR [--tasks t1,t2] [--metric acc | --metric task=metric]
                 [--filter KEY] [--use-intersection] [--resamples 2000] [--seed 0] [--output FILE.json]

Both folders are lm-eval output folders (``--output_path``; any model class, plain ``--model hf``
too) written WITH ``--log_samples``. Documents are paired by ``doc_id`` + ``doc_hash`` +
``prompt_hash`` + ``target_hash`` (same document, same prompt, same reference). Per task:

* ``retention``  share of the items the dense model got right that the compressed model still gets right
* ``gain``       share of the items the dense model got wrong that the compressed model gets right
  (``lost`` / ``gained`` give the counts of the two kinds of flips)
* ``flips``      share of items whose correctness changed, either direction: (lost + gained) / n
  (Dutta et al., "Accuracy is Not All You Need", 2024); binary metrics only
* ``agreement``  share of items with identical answers: the normalized ``filtered_resps``
  (strip, lower-case, collapse white space) for generation, the chosen option for multiple choice
* ``difference`` compressed minus dense mean score on the paired items, with a seeded percentile
  bootstrap CI (``--resamples``, 95 %)
* ``mcnemar_p``  McNemar's exact test on the paired correct/incorrect outcomes (binary metrics only)

Continuous per-item scores (e.g. judge ratings) get the mean paired difference and its CI only.
Tasks whose per-item values are not scores (perplexities: ``[loglikelihood, length]`` pairs) are
compared on their aggregate values only; when the compressed run was compared with a dense reference
(``kick_wikitext_ppl`` with ``--metadata kick_reference=DIR``), its divergence metrics (KLD, same top
token, dp, ln PPL ratio; kick_tasks/divergence.py) are listed under ``divergence``.

The metric that decides "correct" per task (:func:`primary_metric`): ``--metric`` if given; else
the task's entry in :data:`TASK_PRIMARY_METRIC`; else the first of :data:`METRIC_PREFERENCE` the
samples carry; else the first higher-is-better metric with scalar per-item values.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from kick_analysis.results_io import (ResultsError, Run, data_differences, data_provenance, format_provenance, load_samples,
                                   load_single_run)
from kick_analysis.stats import bootstrap_mean_ci, mcnemar_exact
from kick_tasks.divergence import METRICS as DIVERGENCE_METRICS
from kick_tasks.names import canonical_metric

#: Per-task primary metric of the kick tasks (fnmatch patterns; override with --metric).
#: None = no per-item correctness (perplexity): compared on aggregate values only.
TASK_PRIMARY_METRIC: dict[str, str | None] = {
    "kick_factoid_qa*": "contains_em",  # the paper's score: a normalized alias contained in the answer
    "kick_icr_qa*": "contains_em",
    "kick_mcr_qa": "acc",
    "kickmmlu_*": "acc",
    "kick_wikitext_ppl": None,
}

#: Generic order of preference when a task has no entry above.
METRIC_PREFERENCE: tuple[str, ...] = (
    "acc",
    "exact_match",
    "paper_score",
    "em",
    "token_f1",
    "f1",
    "acc_norm",
    "contains",
    "score",
    "rating",
    "win_rate",
)

SIGNIFICANCE_LEVEL = 0.05


class CompareError(ValueError):
    """The two runs cannot be compared as asked (message says why and how to fix it)."""


# --------------------------------------------------------------------------- per-item values


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def item_score(sample: dict[str, Any], metric: str) -> float | None:
    """The per-item value of ``metric`` in one lm-eval sample, or None if it is not a scalar score."""
    return _as_float(sample.get(metric))


def is_scalar_metric(samples: Sequence[dict[str, Any]], metric: str) -> bool:
    return bool(samples) and all(item_score(s, metric) is not None for s in samples)


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def table_metric(task: str) -> str | None:
    """The :data:`TASK_PRIMARY_METRIC` entry matching ``task`` (None if none or aggregate-only)."""
    for pattern, metric in TASK_PRIMARY_METRIC.items():
        if fnmatch.fnmatchcase(task, pattern):
            return metric
    return None


def primary_metric(task: str, samples: Sequence[dict[str, Any]], higher_is_better: dict[str, bool] | None = None,
                   override: dict[str, str] | None = None) -> str | None:
    """The metric that decides whether an item is correct (see module docstring for the rule)."""
    override = override or {}
    if task in override or "*" in override:
        metric = canonical_metric(task, override.get(task, override.get("*")))  # --metric f1 still means token_f1
        if not samples or metric not in samples[0]:
            have = samples[0].get("metrics", []) if samples else []
            raise CompareError(f"task {task}: --metric {metric!r} is not in its samples (metrics logged: {have})")
        return metric
    logged = list(samples[0].get("metrics", [])) if samples else []
    candidates = []
    for pattern, metric in TASK_PRIMARY_METRIC.items():
        if fnmatch.fnmatchcase(task, pattern):
            if metric is None:
                return None
            candidates.append(metric)
            break
    candidates += [m for m in METRIC_PREFERENCE if m in logged]
    if not any(isinstance(samples[0].get(m), list) for m in logged):  # no perplexity-like metric
        candidates += [m for m in logged if (higher_is_better or {}).get(m, True)]
    for metric in candidates:
        if is_scalar_metric(samples, metric):
            return metric
    return None


_WS = re.compile(r"\s+")


def normalize_answer(text: Any) -> str:
    """Normalization used for agreement: string, strip, lower case, collapse white space."""
    if isinstance(text, list) and len(text) == 1:
        text = text[0]
    if not isinstance(text, str):
        text = json.dumps(text, sort_keys=True)
    return _WS.sub(" ", text.strip().lower())


def choice_texts(sample: dict[str, Any]) -> list[str]:
    """The option continuations of a multiple-choice sample, in option order."""
    args = sample.get("arguments") or {}
    if isinstance(args, dict):
        ordered = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[-1]))]
        return [str(a.get("arg_1", "")) if isinstance(a, dict) else "" for a in ordered]
    return [str(a[1]) if isinstance(a, (list, tuple)) and len(a) > 1 else "" for a in args]


def chosen_answer(sample: dict[str, Any], output_type: str | None, metric: str | None = None) -> str:
    """What the model answered: the chosen option index for multiple choice (by raw log-likelihood,
    or per-character normalized for ``acc_norm``), the normalized text otherwise."""
    resps = sample.get("filtered_resps")
    if output_type == "multiple_choice" and isinstance(resps, list) and resps:
        lls = []
        for r in resps:
            ll = r[0] if isinstance(r, (list, tuple)) else r
            f = _as_float(ll)
            if f is None:
                return normalize_answer(resps)
            lls.append(f)
        if metric == "acc_norm":
            texts = choice_texts(sample)
            if len(texts) == len(lls):
                lls = [ll / max(1, len(t)) for ll, t in zip(lls, texts)]
        return f"option {max(range(len(lls)), key=lls.__getitem__)}"
    return normalize_answer(resps)


# --------------------------------------------------------------------------- pairing


def sample_key(sample: dict[str, Any]) -> tuple:
    return (sample.get("doc_id"), sample.get("doc_hash"), sample.get("prompt_hash"), sample.get("target_hash"))


@dataclass
class Pairing:
    pairs: list[tuple[dict[str, Any], dict[str, Any]]]
    n_dense: int
    n_compressed: int
    n_same_doc_id: int

    @property
    def complete(self) -> bool:
        return len(self.pairs) == self.n_dense == self.n_compressed


def pair_samples(dense: Sequence[dict[str, Any]], compressed: Sequence[dict[str, Any]]) -> Pairing:
    """Pair documents by doc_id + doc/prompt/target hash (dense order kept)."""
    comp = {sample_key(s): s for s in compressed}
    pairs = [(d, comp[sample_key(d)]) for d in dense if sample_key(d) in comp]
    same_id = len({s.get("doc_id") for s in dense} & {s.get("doc_id") for s in compressed})
    return Pairing(pairs, len(dense), len(compressed), same_id)


# --------------------------------------------------------------------------- one task


def compare_samples(task: str, dense: Sequence[dict[str, Any]], compressed: Sequence[dict[str, Any]], *,
                    output_type: str | None = None, metric: str | None = None,
                    higher_is_better: dict[str, bool] | None = None, use_intersection: bool = False,
                    n_resamples: int = 2000, seed: int = 0, level: float = 0.95,
                    keep_pairs: bool = False) -> dict[str, Any]:
    """Paired comparison of one task's samples (the pure core of ``kick compare``). With ``keep_pairs``
    the result also holds ``pairs``: the matched ``(dense sample, compressed sample)`` list (per-item views)."""
    pairing = pair_samples(dense, compressed)
    if not pairing.complete:
        msg = (
            f"task {task}: {len(pairing.pairs)} documents match (by doc_id + doc/prompt/target hash) out of "
            f"{pairing.n_dense} in the dense run and {pairing.n_compressed} in the compressed run "
            f"({pairing.n_same_doc_id} share a doc_id). The runs differ in --limit, split, few-shot examples, "
            "chat template or task version."
        )
        if not use_intersection or not pairing.pairs:
            hint = " Pass --use-intersection to compare the matching documents only." if pairing.pairs else ""
            raise CompareError(msg + hint)
        warnings.warn(msg + f" Comparing the {len(pairing.pairs)} matching documents (--use-intersection).",
                      stacklevel=2)
    d_samples = [d for d, _ in pairing.pairs]
    metric = metric or primary_metric(task, d_samples, higher_is_better)
    out: dict[str, Any] = {
        "task": task,
        "metric": metric,
        "n_dense": pairing.n_dense,
        "n_compressed": pairing.n_compressed,
        "n_matched": len(pairing.pairs),
    }
    if metric is None:
        out["kind"] = "aggregate-only"
        return out
    if keep_pairs:
        out["pairs"] = pairing.pairs
    agree = [chosen_answer(d, output_type, metric) == chosen_answer(c, output_type, metric) for d, c in pairing.pairs]
    out["agreement"] = sum(agree) / len(agree)
    dv = [item_score(d, metric) for d, _ in pairing.pairs]
    cv = [item_score(c, metric) for _, c in pairing.pairs]
    if any(v is None for v in dv + cv):
        raise CompareError(f"task {task}: metric {metric!r} is missing or not a number in some samples")
    diffs = [c - d for d, c in zip(dv, cv)]
    ci = bootstrap_mean_ci(diffs, n_resamples=n_resamples, level=level, seed=seed)
    out.update(
        dense_score=sum(dv) / len(dv),
        compressed_score=sum(cv) / len(cv),
        difference=ci.estimate,
        ci_low=ci.low,
        ci_high=ci.high,
        ci_level=level,
        n_resamples=n_resamples,
        seed=seed,
    )
    if is_binary(dv + cv):
        both = sum(1 for d, c in zip(dv, cv) if d == 1 and c == 1)
        lost = sum(1 for d, c in zip(dv, cv) if d == 1 and c == 0)
        gained = sum(1 for d, c in zip(dv, cv) if d == 0 and c == 1)
        dense_right = both + lost
        dense_wrong = len(dv) - dense_right
        p = mcnemar_exact(lost, gained)
        out.update(
            kind="binary",
            dense_correct=dense_right,
            kept=both,
            lost=lost,
            gained=gained,
            flips=(lost + gained) / len(dv),
            retention=both / dense_right if dense_right else None,
            gain=gained / dense_wrong if dense_wrong else None,
            mcnemar_p=p,
            significant=p < SIGNIFICANCE_LEVEL,
        )
    else:
        out.update(kind="continuous", significant=not (ci.low <= 0.0 <= ci.high))
    return out


def compare_aggregate(task: str, dense: Run, compressed: Run) -> dict[str, Any]:
    """Aggregate-only comparison (perplexity-like tasks): values and compressed/dense ratios."""
    dvals, cvals = dense.metric_values(task), compressed.metric_values(task)
    metrics = {}
    for key, dval in dvals.items():
        cval = cvals.get(key)
        d, c = _as_float(dval), _as_float(cval)
        if d is None or c is None:
            continue
        metrics[f"{key[0]},{key[1]}"] = {"dense": d, "compressed": c, "ratio": c / d if d else None}
    nd = (dense.n_samples.get(task) or {}).get("effective")
    nc = (compressed.n_samples.get(task) or {}).get("effective")
    if nd != nc:
        warnings.warn(f"task {task}: the runs scored different numbers of documents ({nd} dense, {nc} compressed); "
                      "their aggregate values are not comparable", stacklevel=2)
    out = {"task": task, "kind": "aggregate-only", "n_dense": nd, "n_compressed": nc, "metrics": metrics}
    divergence = {m: _as_float(v) for (m, f), v in cvals.items() if m in DIVERGENCE_METRICS and f == "none"}
    if divergence:
        out["divergence"] = divergence
    return out


# --------------------------------------------------------------------------- two runs


def parse_metric_overrides(values: Sequence[str] | None) -> dict[str, str]:
    """``["acc"]`` -> ``{"*": "acc"}``; ``["t1=f1,t2=acc"]`` -> ``{"t1": "f1", "t2": "acc"}``."""
    out: dict[str, str] = {}
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                task, metric = part.split("=", 1)
                out[task.strip()] = metric.strip()
            else:
                out["*"] = part
    return out


def _filter_for(run: Run, task: str, metric: str | None, requested: str | None) -> str | None:
    if requested:
        return requested
    filters = [f for (m, f) in run.metric_values(task) if metric is None or m == metric]
    if not filters:
        return None
    return "none" if "none" in filters else filters[0]


def compare_runs(dense: Run, compressed: Run, tasks: Sequence[str] | None = None, *,
                 metric_overrides: dict[str, str] | None = None, filter_key: str | None = None,
                 use_intersection: bool = False, n_resamples: int = 2000, seed: int = 0,
                 skip_errors: bool = False, keep_pairs: bool = False) -> dict[str, Any]:
    """Compare every common task of two runs (or ``tasks``). Raises :class:`CompareError` on bad input;
    with ``skip_errors`` a task that cannot be compared is recorded in ``report["errors"]`` instead;
    with ``keep_pairs`` each per-item task result keeps its matched samples (see :func:`compare_samples`)."""
    d_tasks, c_tasks = dense.tasks, compressed.tasks
    if tasks:
        missing = [(t, r) for t in tasks for r, ts in (("dense", d_tasks), ("compressed", c_tasks)) if t not in ts]
        if missing:
            raise CompareError("; ".join(f"task {t} is not in the {r} run" for t, r in missing)
                               + f". Dense run has {d_tasks}, compressed run has {c_tasks}.")
        chosen = list(tasks)
    else:
        chosen = [t for t in d_tasks if t in c_tasks]
        if not chosen:
            raise CompareError(f"the two runs share no task: dense run has {d_tasks}, compressed run has {c_tasks}")
        only = sorted(set(d_tasks) ^ set(c_tasks))
        if only:
            warnings.warn(f"tasks in only one of the runs are left out: {only}", stacklevel=2)
    overrides = metric_overrides or {}
    report: dict[str, Any] = {
        "dense": {"folder": str(dense.folder), "model": dense.model, "model_args": dense.model_args},
        "compressed": {"folder": str(compressed.folder), "model": compressed.model,
                       "model_args": compressed.model_args},
        "significance_level": SIGNIFICANCE_LEVEL,
        "tasks": {},
        "errors": {},
    }
    paired: dict[str, tuple[list, list, str | None, str | None]] = {}
    for task in chosen:
        try:
            _compare_task(task, dense, compressed, overrides, filter_key, use_intersection, n_resamples, seed,
                          report, paired, keep_pairs)
        except (CompareError, ResultsError) as exc:
            if not skip_errors:
                raise
            report["errors"][task] = str(exc)
    report["groups"] = _pooled_groups(dense, compressed, paired, use_intersection, n_resamples, seed)
    differences = data_differences(dense, compressed, chosen)
    for problem in differences:
        warnings.warn(problem, stacklevel=2)
    report["data"] = {"dense": data_provenance(dense), "compressed": data_provenance(compressed),
                      "differences": differences}
    return report


def _compare_task(task: str, dense: Run, compressed: Run, overrides: dict[str, str], filter_key: str | None,
                  use_intersection: bool, n_resamples: int, seed: int, report: dict, paired: dict,
                  keep_pairs: bool = False) -> None:
    output_type = dense.output_type(task)
    wanted = overrides.get(task, overrides.get("*"))
    if output_type == "loglikelihood_rolling" or (not wanted and aggregate_only(task)):
        report["tasks"][task] = compare_aggregate(task, dense, compressed)  # perplexity: no samples needed
        return
    has_d, has_c = task in dense.samples_files, task in compressed.samples_files
    if not (has_d and has_c):
        which = " and ".join(r.label for r, ok in ((dense, has_d), (compressed, has_c)) if not ok)
        raise CompareError(
            f"task {task}: no per-sample log (samples_{task}_*.jsonl) in {which}; "
            "rerun lm_eval with --log_samples"
        )
    fkey = _filter_for(dense, task, wanted or table_metric(task), filter_key)
    d_samples = load_samples(dense.samples_files[task], fkey)
    c_samples = load_samples(compressed.samples_files[task], fkey)
    metric = primary_metric(task, d_samples, dense.higher_is_better.get(task), overrides)
    if metric is None:
        report["tasks"][task] = compare_aggregate(task, dense, compressed)
        return
    result = compare_samples(task, d_samples, c_samples, output_type=output_type, metric=metric,
                             use_intersection=use_intersection, n_resamples=n_resamples, seed=seed,
                             keep_pairs=keep_pairs)
    result["filter"] = fkey or "none"
    report["tasks"][task] = result
    paired[task] = (d_samples, c_samples, metric, output_type)


def aggregate_only(task: str) -> bool:
    """True for tasks compared on aggregate values only (:data:`TASK_PRIMARY_METRIC` entry None: perplexity)."""
    return any(fnmatch.fnmatchcase(task, p) and m is None for p, m in TASK_PRIMARY_METRIC.items())


def _pooled_groups(dense: Run, compressed: Run, paired: dict, use_intersection: bool, n_resamples: int,
                   seed: int) -> dict[str, Any]:
    """Groups (e.g. kick_mcr_qa = 57 MMLU subjects) pooled over their compared subtasks: the micro
    average, i.e. lm-eval's size-weighted group score."""
    out: dict[str, Any] = {}
    for group, subtasks in dense.group_subtasks.items():
        if group not in compressed.group_subtasks:
            continue
        members = [t for t in subtasks if t in paired]
        if not members or len(members) < len(subtasks):
            continue
        metrics = {paired[t][2] for t in members}
        types = {paired[t][3] for t in members}
        if len(metrics) != 1:
            continue
        d_all, c_all = [], []
        for t in members:
            d_s, c_s = paired[t][0], paired[t][1]
            d_all += [{**s, "doc_id": f"{t}/{s.get('doc_id')}"} for s in d_s]
            c_all += [{**s, "doc_id": f"{t}/{s.get('doc_id')}"} for s in c_s]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # each subtask already warned
            r = compare_samples(group, d_all, c_all, output_type=types.pop() if len(types) == 1 else None,
                                metric=metrics.pop(), use_intersection=use_intersection,
                                n_resamples=n_resamples, seed=seed)
        r["subtasks"] = members
        out[group] = r
    return out


# --------------------------------------------------------------------------- CLI


def _fmt(value: Any, pct: bool = False, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if pct:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of a :func:`compare_runs` report."""
    head = ["task", "metric", "n", "dense", "compressed", "diff [95% CI]", "retention", "gain", "flips",
            "agreement", "McNemar p"]
    rows = []
    entries = list(report["tasks"].items()) + [(f"{g} (pooled)", r) for g, r in report.get("groups", {}).items()]
    for task, r in entries:
        if r.get("metric") is None:
            for key, m in (r.get("metrics") or {}).items():
                rows.append([task, key, "-", _fmt(m["dense"]), _fmt(m["compressed"]),
                             f"x{m['ratio']:.3f}" if m.get("ratio") else "-", "-", "-", "-",
                             _fmt(r.get("agreement"), pct=True), "-"])
            div = r.get("divergence") or {}
            for name, unc, pct in (("kld_mean", "kld_mean_unc", False), ("kld_p99", None, False),
                                   ("same_top", "same_top_unc", True), ("ln_ppl_ratio", "ln_ppl_ratio_unc", False)):
                if div.get(name) is None:
                    continue
                value = _fmt(div[name], pct=pct, digits=4) + (f" \u00b1 {_fmt(div[unc], pct=pct, digits=4)}"
                                                             if unc and div.get(unc) is not None else "")
                label = name + (" (lower bound: top-k reference)" if name.startswith("kld") and div.get(
                    "kld_lower_bound") else "")
                rows.append([task, label, _fmt(int(div["kld_tokens"])) if div.get("kld_tokens") else "-", "-",
                             value, "-", "-", "-", "-", "-", "-"])
            continue
        mark = " \u2020" if r.get("significant") else ""
        rows.append([
            task, r["metric"], str(r["n_matched"]), _fmt(r["dense_score"]), _fmt(r["compressed_score"]),
            f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{mark}",
            _fmt(r.get("retention"), pct=True), _fmt(r.get("gain"), pct=True), _fmt(r.get("flips"), pct=True),
            _fmt(r.get("agreement"), pct=True), _fmt(r.get("mcnemar_p")),
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append(f"\u2020 significant at {int(report['significance_level'] * 100)}% "
                 "(McNemar exact for binary metrics, bootstrap CI excluding 0 otherwise)")
    data = report.get("data") or {}
    for side in ("dense", "compressed"):
        if data.get(side):
            lines.append(f"data ({side} run):")
            lines += [f"  {'calibration ' if key == 'calibration' else ''}{format_provenance(r)}"
                      for key, r in data[side].items()]
    lines += [f"WARNING: {problem}" for problem in data.get("differences") or []]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kick compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dense_dir", help="lm-eval output folder of the dense (reference) run")
    p.add_argument("compressed_dir", help="lm-eval output folder of the compressed run")
    p.add_argument("--tasks", help="comma-separated tasks (default: every task both runs have)")
    p.add_argument("--metric", action="append",
                   help="metric deciding 'correct': 'acc' for all tasks or 'task=metric[,task=metric]'")
    p.add_argument("--filter", dest="filter_key", help="lm-eval filter of the samples to use (default: none/first)")
    p.add_argument("--use-intersection", action="store_true",
                   help="compare the matching documents when the runs' documents differ (otherwise refuse)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--output", help="write the full comparison as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = _run(args)
    for w in caught:
        print(f"kick compare: warning: {w.message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        dense = load_single_run(args.dense_dir)
        compressed = load_single_run(args.compressed_dir)
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        report = compare_runs(dense, compressed, tasks, metric_overrides=parse_metric_overrides(args.metric),
                              filter_key=args.filter_key, use_intersection=args.use_intersection,
                              n_resamples=args.resamples, seed=args.seed)
    except (ResultsError, CompareError) as exc:
        print(f"kick compare: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
