"""``kick judge``: judge the samples files that ``lm_eval --log_samples`` / ``--predict_only`` wrote.

Generate once (e.g. on a GPU), judge later or with several judges:

    lm_eval --model hf --model_args pretrained=... --tasks kick_summarization,kick_instruction_following \\
        --apply_chat_template --predict_only --log_samples --output_path out/
    export OPENAI_API_KEY=...        # or any variable, named with --api-key-env
    kick judge out/ --base-url https://api.openai.com/v1 --model gpt-4o
    kick judge out/ --backend hf --model /models/SmolLM2-135M-Instruct
    kick judge out/ ... --orders both --extras robust     # kick's opt-ins, added under their own names
    kick judge summaries --base-url ... --model gpt-3.5-turbo   # the summarization comparator, once

For each samples file it writes, next to it, ``judged_<task>_<judge>_<time>.jsonl`` (one line per
sample: metrics and the judge's raw replies) and ``judged_<task>_<judge>_<time>.summary.json``
(mean metrics, invalid-verdict rate, request/cache counts). Settings not given as flags come from
``KICK_JUDGE_*`` environment variables. Answers are cached in SQLite: rerun to resume.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from .errors import JudgeError
from .runner import Judge
from .samples import find_samples, load_samples, recipe, task_of
from .settings import JudgeSettings, settings_from


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kick judge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="samples_<task>_<time>.jsonl files or folders holding them")
    p.add_argument("--task", default=None, help="task of the given files (default: from the file name)")
    p.add_argument("--backend", choices=("openai", "hf"), default=None)
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="judge model name (openai) or local folder / .gguf file (hf)")
    p.add_argument("--api-key-env", default=None, help="NAME of the variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--cache", default=None, help="SQLite cache file (default ~/.cache/kick/judge.sqlite)")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None, help="default: the protocol's (1024 paper, 2048 FastChat)")
    p.add_argument("--temperature", type=float, default=None, help="default: the protocol's (0.2 / 0.1 paper, 0 FastChat)")
    p.add_argument("--orders", choices=("one", "both"), default=None,
                   help="one: the paper's single order (default); both: also the swapped order (*_debiased metrics)")
    p.add_argument("--extras", default=None, help="comma list of opt-ins: robust, four_criteria, rating")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--retries", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="judge only the first N samples of each file")
    p.add_argument("--output-dir", type=Path, default=None, help="default: next to each samples file")
    p.add_argument("--no-progress", action="store_true")
    return p


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def judge_file(path: Path, judge: Judge, task: str | None = None, limit: int | None = None,
               output_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Judge one samples file; write the per-sample and summary files; return the summary."""
    from .runner import judge_items

    task = task or task_of(path)
    judge_item, protocols_for = recipe(task)
    protocols = protocols_for(judge.settings)
    rows = load_samples(path)[:limit]
    items = [judge_item(row["doc"], row["answer"]) for row in rows]
    start = time.perf_counter()
    before = dict(judge.stats)
    replies: list[list[str | None]] = []
    metrics = judge_items(judge, items, [protocols] * len(items), progress=progress, desc=task, replies_out=replies)
    elapsed = time.perf_counter() - start
    summary_metrics = {name: _nanmean([m.get(name, math.nan) for m in metrics])
                       for name in sorted({k for m in metrics for k in m})}
    by_category: dict[str, dict[str, float]] = {}
    for category in sorted({str(row["doc"].get("category") or row["doc"].get("bucket") or "") for row in rows} - {""}):
        chosen = [m for row, m in zip(rows, metrics)
                  if str(row["doc"].get("category") or row["doc"].get("bucket") or "") == category]
        by_category[category] = {"n": len(chosen), **{
            name: _json_safe(_nanmean([m.get(name, math.nan) for m in chosen]))
            for name in ("judge_score", "judge_ref_score") if any(name in m for m in chosen)}}
    if "judge_rating_turn1" in summary_metrics and "judge_rating_turn2" in summary_metrics:
        summary_metrics["mt_bench_score"] = _nanmean([summary_metrics["judge_rating_turn1"],
                                                      summary_metrics["judge_rating_turn2"]])
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S.%f")
    folder = output_dir or path.parent
    folder.mkdir(parents=True, exist_ok=True)
    per_sample_file = folder / f"judged_{task}_{judge.settings.name}_{stamp}.jsonl"
    summary_file = folder / f"judged_{task}_{judge.settings.name}_{stamp}.summary.json"
    lines = [json.dumps({"doc_id": row["doc_id"], **{k: _json_safe(v) for k, v in m.items()},
                         "judge_replies": r}, ensure_ascii=False)
             for row, m, r in zip(rows, metrics, replies)]
    _atomic_write(per_sample_file, "\n".join(lines) + ("\n" if lines else ""))
    after = judge.stats
    summary = {
        "task": task, "samples_file": str(path), "n_samples": len(rows),
        "judge_calls": sum(len(r) for r in replies),
        "invalid_verdicts": int(round(sum(m["judge_invalid_rate"] * len(r) for m, r in zip(metrics, replies)
                                          if r and not math.isnan(m["judge_invalid_rate"])))),
        "judge": judge.settings.public_dict(), "metrics": {k: _json_safe(v) for k, v in summary_metrics.items()},
        "by_category": by_category,
        "comparator": sorted({str(row["doc"]["comparator"]) for row in rows if row["doc"].get("comparator")}),
        "judge_requests": sorted({json.dumps(p, sort_keys=True) for p in judge.request_settings}),
        "backend_requests": after["backend_requests"] - before["backend_requests"],
        "cache_hits": after["cache_hits"] - before["cache_hits"], "seconds": round(elapsed, 2),
        "per_sample_file": str(per_sample_file),
    }
    _atomic_write(summary_file, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["summaries"]:
        from .reference_summaries import main as summaries_main

        return summaries_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings: JudgeSettings = settings_from(
            None, backend=args.backend, base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
            cache=args.cache, concurrency=args.concurrency, max_tokens=args.max_tokens, timeout=args.timeout,
            retries=args.retries, temperature=args.temperature, orders=args.orders, extras=args.extras)
        if not settings.enabled:
            print("kick judge: no judge configured. Give --base-url and --model (OpenAI-compatible endpoint, key in "
                  "$OPENAI_API_KEY or --api-key-env), or --backend hf --model <local folder>.", file=sys.stderr)
            return 2
        files = find_samples(args.paths)
        if not files:
            print(f"kick judge: no samples files of judged tasks under {[str(p) for p in args.paths]} "
                  "(run lm_eval with --log_samples).", file=sys.stderr)
            return 2
        for path in files:  # fail on a wrong file before the judge loads / is called
            recipe(args.task or task_of(path))
        if settings.backend == "openai":
            from .session import check_endpoint

            check_endpoint(settings)
        judge = Judge(settings)
        for path in files:
            summary = judge_file(path, judge, args.task, args.limit, args.output_dir, not args.no_progress)
            shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}=nan"
                              for k, v in summary["metrics"].items())
            print(f"{summary['task']}: n={summary['n_samples']} {shown} "
                  f"(requests {summary['backend_requests']}, cache hits {summary['cache_hits']}, {summary['seconds']}s)")
            print(f"  -> {summary['per_sample_file']}")
    except (JudgeError, ValueError, FileNotFoundError) as exc:
        print(f"kick judge: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
