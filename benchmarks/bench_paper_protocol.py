"""Benchmark 3: kick_factoid_qa through lm-eval (batched, stop at newline) against the paper's per-example loop.

Baseline (``workers/paper_loop.py``): batch 1, ``model.generate`` up to three times the prompt length, decode the
whole output. Ours: ``simple_evaluate`` on ``kick_factoid_qa`` with ``--limit N`` (the same first N eval questions,
the same prompt), batch 16, ``until: ["\\n"]``. The target is judged on the evaluation phase (model loaded:
the loop vs ``simple_evaluate``); the end-to-end ratio (imports and model load included) is reported beside it. Scores are compared per question
with the task's own metric (``kick_tasks.freebaseqa.score``): the baseline's continuation is cut at its first
newline (the task's answer); the paper-style whole-continuation score is reported beside it.
Runs are interleaved (ours, baseline, baseline, ours, ...), medians.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, CACHE_DIR, Row, median, run_child, smollm2_dir  # noqa: E402

TARGET = 5.0


def run(n: int, repeats: int, batch_size: int = 16) -> list[Row]:
    model = smollm2_dir()
    ours_out, base_out = CACHE_DIR / "factoid_ours.json", CACHE_DIR / "factoid_paper.json"
    ours_cmd = [sys.executable, str(BENCH_DIR / "workers" / "lmeval_run.py"), "--model", "hf", "--model-args",
                f"pretrained={model},dtype=float32,device=cpu", "--tasks", "kick_factoid_qa", "--limit", str(n),
                "--batch-size", str(batch_size), "--samples", str(ours_out)]
    base_cmd = [sys.executable, str(BENCH_DIR / "workers" / "paper_loop.py"), "--model", str(model), "--n", str(n),
                "--out", str(base_out)]
    times: dict[str, list[float]] = {"ours": [], "paper": []}
    phase: dict[str, list[float]] = {"ours": [], "paper": []}  # generation + scoring only (model loaded)
    base_info: dict = {}
    for rep in range(repeats):
        order = ("ours", "paper") if rep % 2 == 0 else ("paper", "ours")
        for side in order:
            res = run_child(ours_cmd if side == "ours" else base_cmd)
            times[side].append(res.data["seconds"])
            phase[side].append(res.data["eval_seconds"] if side == "ours" else res.data["loop_seconds"])
            if side == "paper":
                base_info = res.data
            print(f"[bench3] {side:5s} rep {rep + 1}/{repeats}: {res.data['seconds']:.1f}s", file=sys.stderr)
    ours = {d["question_id"]: d for d in json.loads(ours_out.read_text())}
    base = {d["question_id"]: d for d in json.loads(base_out.read_text())}
    common_ids = [q for q in base if q in ours]
    if len(common_ids) != n:
        raise RuntimeError(f"question sets differ: {len(common_ids)} of {n} in common")
    same = sum(ours[q]["contains_em"] == base[q]["contains_em"] for q in common_ids)
    same_text = sum((ours[q]["resp"] or "").strip() == base[q]["first_line"].strip() for q in common_ids)
    acc_ours = sum(ours[q]["contains_em"] for q in common_ids) / n
    acc_base = sum(base[q]["contains_em"] for q in common_ids) / n
    t_o, t_p = median(times["ours"]), median(times["paper"])
    e_o, e_p = median(phase["ours"]), median(phase["paper"])
    speed, speed_e2e = e_p / e_o, t_p / t_o
    return [
        Row("3 vs paper protocol", "speed-up: paper loop / kick_factoid_qa (evaluation phase)", speed,
            f">= {TARGET}x", speed >= TARGET,
            f"paper loop {e_p:.1f}s vs lm-eval batched {e_o:.1f}s for {n} questions, model already loaded "
            f"(median of {repeats}; baseline generated {base_info.get('new_tokens')} tokens)",
            {"ours_s": phase["ours"], "paper_s": phase["paper"]}),
        Row("3 vs paper protocol", "speed-up end to end (imports + model load incl.)", speed_e2e, "report", None,
            f"{t_p:.1f}s vs {t_o:.1f}s; the fixed cost (lm-eval task set-up, model load) weighs more at small N",
            {"ours_s": times["ours"], "paper_s": times["paper"]}),
        Row("3 vs paper protocol", "per-question score agreement", same / n, "1.0 (identical)", same == n,
            f"contains_em ours {acc_ours:.3f} vs loop {acc_base:.3f} (SmolLM2-135M knows few answers, so this is "
            f"weak evidence); identical first-line text {same_text}/{n}; "
            f"paper whole-continuation score {base_info.get('paper_contains', float('nan')):.3f}"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    for r in run(args.n, args.repeats):
        print(json.dumps(r.__dict__, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
