"""Benchmark 2: evaluation overhead of the kick model classes against plain ``--model hf``.

The same task and model through lm-eval's ``simple_evaluate`` in fresh child processes, interleaved
(hf, kick sparsity 0, kick cached, hf, ...), median wall time of the ``simple_evaluate`` call (model load +
evaluation). Task: ``kick_wikitext_ppl`` (loglikelihood over a few 512-token windows), whose cost does not depend
on the weights, so a pruned model can be compared with the dense one.

* ``kick-pruned`` at sparsity 0 (the class, its argument parsing and record keeping, no compression);
* ``kick-pruned`` Wanda 50% loaded from the compressed-weights cache: the cache is filled by one warm-up run
  first (its compression time is reported separately and excluded from the ratio).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, CACHE_DIR, Row, median, run_child, smollm2_dir  # noqa: E402

TARGET = 1.05


def _cmd(model_name: str, model_args: str, limit: int, seqlen: int) -> list[str]:
    return [sys.executable, str(BENCH_DIR / "workers" / "lmeval_run.py"), "--model", model_name, "--model-args",
            model_args, "--tasks", "kick_wikitext_ppl", "--limit", str(limit), "--batch-size", "4",
            "--metadata", json.dumps({"ppl_seqlen": seqlen})]


def run(limit: int, seqlen: int, repeats: int, nsamples: int = 4, calib_seqlen: int = 128) -> list[Row]:
    model = smollm2_dir()
    cache_dir = CACHE_DIR / "kick-cache-eval-overhead"
    shutil.rmtree(cache_dir, ignore_errors=True)
    base = f"pretrained={model},dtype=float32,device=cpu"
    configs = {
        "hf": ("hf", base),
        "kick sparsity 0": ("kick-pruned", f"{base},method=wanda,sparsity=0"),
        "kick cached wanda": ("kick-pruned", f"{base},method=wanda,sparsity=0.5,calib=c4,nsamples={nsamples},"
                                             f"seqlen={calib_seqlen},cache_dir={cache_dir}"),
    }
    warm = run_child(_cmd(*configs["kick cached wanda"], limit, seqlen))
    kick_record = warm.data.get("kick") or {}
    compress_s = kick_record.get("seconds") or kick_record.get("compression_seconds")
    print(f"[bench2] cache warm-up (compression) run: {warm.data['seconds']:.1f}s; record seconds={compress_s}",
          file=sys.stderr)
    times: dict[str, list[float]] = {k: [] for k in configs}
    ppl: dict[str, float] = {}
    cache_status = None
    for rep in range(repeats):
        names = list(configs) if rep % 2 == 0 else list(reversed(configs))
        for name in names:
            res = run_child(_cmd(*configs[name], limit, seqlen))
            times[name].append(res.data["seconds"])
            ppl[name] = res.data["results"]["kick_wikitext_ppl"].get("token_perplexity,none")
            if name == "kick cached wanda":
                cache_status = ((res.data.get("kick") or {}).get("cache") or {}).get("status")
            print(f"[bench2] {name:18s} rep {rep + 1}/{repeats}: {res.data['seconds']:.1f}s", file=sys.stderr)
    hf = median(times["hf"])
    rows = []
    for name in ("kick sparsity 0", "kick cached wanda"):
        ratio = median(times[name]) / hf
        detail = f"{median(times[name]):.1f}s vs hf {hf:.1f}s (median of {repeats}; {limit}x{seqlen}-token windows)"
        if name == "kick cached wanda":
            detail += f"; cache status {cache_status!r}; ppl {ppl[name]:.2f} vs dense {ppl['hf']:.2f}"
        else:
            detail += f"; ppl identical: {ppl[name] == ppl['hf']}"
        rows.append(Row("2 eval overhead", f"{name} / hf wall time", ratio, f"<= {TARGET}", ratio <= TARGET, detail,
                        {"times": times[name], "hf_times": times["hf"]}))
    rows.append(Row("2 eval overhead", "compression time (cache warm-up, excluded above)", warm.data["seconds"], "report",
                    None, f"whole warm-up run incl. Wanda {nsamples}x{calib_seqlen}; record: {compress_s}"))
    shutil.rmtree(cache_dir, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    for r in run(args.limit, args.seqlen, args.repeats):
        print(json.dumps(r.__dict__, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
