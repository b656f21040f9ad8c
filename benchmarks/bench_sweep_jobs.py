"""Benchmark: ``kick sweep --jobs 2`` against ``--jobs 1`` (wall time of a whole 4-config sweep, medians).

The sweep: a tiny random Llama (tests/tiny.py, built once), dense + Wanda 30/50/70% (4 configs), ``kick_factoid_qa``
on ``--limit`` questions, calibration 4 x 64 C4 tokens. Each repeat runs both sides in fresh output folders (nothing
resumed, a fresh compression cache), interleaved (1, 2, then 2, 1, ...). ``--jobs 1`` is today's sweep: one config
after another, its child using every core; ``--jobs 2`` runs two configs at once, the cores split between them
(``OMP_NUM_THREADS`` = cores / 2). Peak memory is each lm_eval child's own ``VmHWM`` (common.PeakMemory).

    python benchmarks/bench_sweep_jobs.py [--repeats 3] [--limit 8] [--write-results]

``--write-results`` replaces the "Sweep executors" section of benchmarks/RESULTS.md (kept between markers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, CACHE_DIR, ROOT, machine_info, median, run_child  # noqa: E402

BEGIN, END = "<!-- bench_sweep_jobs: begin -->", "<!-- bench_sweep_jobs: end -->"


def tiny_model() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tiny_model_dir

    out = CACHE_DIR / "tiny-llama-sweep"
    if not (out / "config.json").is_file():
        make_tiny_model_dir(out, family="llama")
    return out


def sweep_cmd(model: Path, out: Path, jobs: int, limit: int) -> list[str]:
    return [sys.executable, "-m", "kick_analysis.cli", "sweep", "--model", str(model), "--output", str(out),
            "--methods", "wanda", "--sparsity", "0.3,0.5,0.7", "--calib", "c4", "--nsamples", "4", "--seqlen", "64",
            "--tasks", "kick_factoid_qa", "--limit", str(limit), "--device", "cpu", "--jobs", str(jobs)]


def one_sweep(model: Path, jobs: int, limit: int, rep: int) -> dict:
    out = CACHE_DIR / "sweep-jobs" / f"jobs{jobs}-rep{rep}"
    shutil.rmtree(out, ignore_errors=True)
    cores = str(len(os.sched_getaffinity(0)))
    # jobs 1 = today's default (all cores for the one child); jobs 2: the sweep sets the children's threads itself
    env = {"OMP_NUM_THREADS": cores, "MKL_NUM_THREADS": cores} if jobs == 1 else {}
    res = run_child(sweep_cmd(model, out, jobs, limit), timeout=3600, env=env)
    manifest = json.loads((out / "sweep.json").read_text())
    assert all(c["status"] == "done" for c in manifest["configs"]), manifest
    children = [mib for cmd, mib in res.descendants.values() if "kick_analysis.cli eval" in cmd]
    starts = [c["start_time"] for c in manifest["configs"]]
    ends = [c["end_time"] for c in manifest["configs"]]
    return {"wall": res.wall, "sweep_peak_mib": res.peak_mib, "child_peak_mib": children,
            "span": max(ends) - min(starts), "config_seconds": [c["seconds"] for c in manifest["configs"]]}


def run(repeats: int, limit: int) -> dict:
    model = tiny_model()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    info_start = machine_info()
    for rep in range(repeats):
        for jobs in ((1, 2) if rep % 2 == 0 else (2, 1)):
            r = one_sweep(model, jobs, limit, rep)
            runs[jobs].append(r)
            print(f"[sweep-jobs] --jobs {jobs} rep {rep + 1}/{repeats}: {r['wall']:.1f}s, children peak "
                  f"{', '.join(f'{m:.0f}' for m in r['child_peak_mib'])} MiB", file=sys.stderr)
    shutil.rmtree(CACHE_DIR / "sweep-jobs", ignore_errors=True)
    w1, w2 = median([r["wall"] for r in runs[1]]), median([r["wall"] for r in runs[2]])
    return {"repeats": repeats, "limit": limit, "jobs1_wall": w1, "jobs2_wall": w2, "ratio": w2 / w1,
            "child_peak_mib_median": {j: median([m for r in runs[j] for m in r["child_peak_mib"]]) for j in runs},
            "config_seconds_median": {j: median([s for r in runs[j] for s in r["config_seconds"]]) for j in runs},
            "runs": runs, "machine_start": info_start, "machine_end": machine_info()}


def section(res: dict) -> str:
    m0, m1 = res["machine_start"], res["machine_end"]
    return "\n".join([
        BEGIN,
        "## Sweep executors: `kick sweep --jobs 2` vs `--jobs 1`",
        "",
        f"`python benchmarks/bench_sweep_jobs.py --repeats {res['repeats']} --limit {res['limit']}` on "
        f"{m0['date']}: a 4-config sweep (tiny random Llama from tests/tiny.py: dense + Wanda 30/50/70%, "
        f"kick_factoid_qa on {res['limit']} questions), interleaved fresh runs, medians. {m0['cores']} cores; load "
        f"average at start {m0['loadavg'][0]:.1f}, at end {m1['loadavg'][0]:.1f}"
        + (" (the machine was SHARED with other jobs: absolute times inflated)." if m0["loadavg"][0] > 1.5 else "."),
        "",
        "| metric | --jobs 1 | --jobs 2 | ratio 2/1 |",
        "|---|---|---|---|",
        f"| sweep wall time (s) | {res['jobs1_wall']:.1f} | {res['jobs2_wall']:.1f} | **{res['ratio']:.2f}** |",
        f"| one config's lm_eval child (s) | {res['config_seconds_median'][1]:.1f} | "
        f"{res['config_seconds_median'][2]:.1f} | {res['config_seconds_median'][2] / res['config_seconds_median'][1]:.2f} |",
        f"| one lm_eval child's peak memory (VmHWM, MiB) | {res['child_peak_mib_median'][1]:.0f} | "
        f"{res['child_peak_mib_median'][2]:.0f} | - |",
        "",
        "Per repeat (the two runs of a pair ran back to back): "
        + ", ".join(f"{a['wall']:.0f}s / {b['wall']:.0f}s = {b['wall'] / a['wall']:.2f}"
                    for a, b in zip(res["runs"][1], res["runs"][2])) + " (--jobs 1 / --jobs 2 = ratio).",
        "",
        "Per config, most of a tiny-model run is Python start-up, imports and task set-up (single-threaded), so two "
        "configs at once overlap those on an idle machine; on a machine whose cores are already saturated by other "
        "jobs, two configs at once gain little. Memory per machine is the sum of the running children's peaks.",
        END,
    ])


def write_section(text: str, path: Path = BENCH_DIR / "RESULTS.md") -> None:
    old = path.read_text() if path.is_file() else ""
    if BEGIN in old and END in old:
        new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: text, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--write-results", action="store_true", help="update the section in benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    res = run(args.repeats, args.limit)
    text = section(res)
    print(text)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, default=str))
    if args.write_results:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
