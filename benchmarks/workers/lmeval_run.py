"""Run ONE lm-eval evaluation (``simple_evaluate``) in a fresh process; print one JSON line.

``seconds`` = model construction (load + compression or cache load for kick models) + ``simple_evaluate``;
``model_seconds`` / ``eval_seconds`` split it; ``rss_peak_mib`` = ``ru_maxrss``. With ``--samples OUT.json`` the per-document generations
(``filtered_resps``) and metrics are written to OUT.json (used to compare per-question correctness).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="lm-eval model name: hf, kick-pruned, kick-gptq, ...")
    ap.add_argument("--model-args", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--limit", type=float, default=None)
    ap.add_argument("--batch-size", default="16")
    ap.add_argument("--metadata", default="{}", help="JSON task metadata, e.g. '{\"ppl_seqlen\": 512}'")
    ap.add_argument("--samples", default="", help="write per-document outputs here (JSON)")
    ap.add_argument("--apply-chat-template", action="store_true", help="as lm_eval --apply_chat_template")
    args = ap.parse_args()

    t_import = time.perf_counter()
    import lm_eval

    from kick_tasks import task_manager

    from lm_eval.utils import simple_parse_args_string

    from lm_eval.api.registry import get_model

    t0 = time.perf_counter()
    metadata = simple_parse_args_string(args.model_args) | json.loads(args.metadata)  # what the CLI passes tasks
    tm = task_manager(include_defaults=False, metadata=metadata)
    lm = get_model(args.model).create_from_arg_string(args.model_args, {"batch_size": args.batch_size})
    t_model = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=lm, tasks=args.tasks.split(","), limit=args.limit, task_manager=tm,
        metadata=json.loads(args.metadata), log_samples=bool(args.samples), bootstrap_iters=0,
        apply_chat_template=args.apply_chat_template,
    )
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "model_seconds": t_model - t0,
        "eval_seconds": time.perf_counter() - t_model,
        "import_seconds": t0 - t_import,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "results": {t: {k: v for k, v in r.items() if isinstance(v, (int, float))} for t, r in results["results"].items()},
        "kick": results.get("config", {}).get("kick_compression"),
    }
    if args.samples:
        docs = []
        for task, samples in results.get("samples", {}).items():
            for s in samples:
                docs.append({"task": task, "doc_id": s["doc_id"], "question_id": s["doc"].get("question_id"),
                             "resp": s["filtered_resps"][0] if s.get("filtered_resps") else None,
                             "contains_em": s.get("contains_em"), "aliases": s["doc"].get("aliases")})
        with open(args.samples, "w") as fh:
            json.dump(docs, fh)
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
