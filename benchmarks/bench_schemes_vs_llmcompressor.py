"""kick-quant against llm-compressor 0.14's ``oneshot`` on SmolLM2-135M's blocks (issue 23).

    python benchmarks/bench_schemes_vs_llmcompressor.py [--layers 30] [--repeats 3] [--nsamples 16 --seqlen 256]
    KICK_LLMC_PYTHON=/path/to/venv/bin/python python benchmarks/bench_schemes_vs_llmcompressor.py   # reuse a venv

Configs: FP8_DYNAMIC (rtn), NVFP4A16 (rtn), NVFP4 (rtn, static activation global scale: calibrated) and W4A16 GPTQ
(``group_size=64``: SmolLM2's 576 columns are not a multiple of 128). Same model folder, the SAME calibration token
tensor for both sides; each run is a fresh child process, kick and llm-compressor interleaved (A B, B A, ...);
wall time of the quantization call and the child's peak RSS are medians. Agreement, from the first repeat:

* RTN-style schemes: the share of bit-identical fake-quantized weights over every block Linear (target 100%), the
  NVFP4 weight global scales (fused over q/k/v and gate/up) and, for NVFP4, block 0's static input global scales
  (identical inputs on both sides);
* GPTQ: per Linear ``||X W_q^T - X W^T|| / ||X W^T||`` on held-out activations, ours / theirs - 1 (target <= 1%).

Prints one JSON row per figure (``benchmarks/common.Row``); writes nothing unless ``--out FILE`` is given.
llm-compressor pins transformers <= 5.17, so it runs in its own venv: ``$KICK_LLMC_PYTHON`` if set, else
``benchmarks/.venv-llmcompressor`` (created by bench_vs_llmcompressor.ensure_llmc_venv when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH_DIR,
    CACHE_DIR,
    Row,
    calibration_tokens,
    median,
    run_child,
    smollm2_truncated_dir,
)

#: (label, scheme, method, group_size, uses calibration data)
CONFIGS = [
    ("FP8_DYNAMIC", "FP8_DYNAMIC", "rtn", 0, False),
    ("NVFP4A16", "NVFP4A16", "rtn", 0, False),
    ("NVFP4", "NVFP4", "rtn", 0, True),
    ("W4A16 gptq g64", "W4A16", "gptq", 64, True),
]
SPEED_TARGET = 0.6
GPTQ_ERR_TARGET = 0.01
WORKER = BENCH_DIR / "workers" / "scheme_worker.py"


def llmc_python() -> Path:
    given = os.environ.get("KICK_LLMC_PYTHON")
    if given:
        return Path(given)
    from bench_vs_llmcompressor import ensure_llmc_venv

    return ensure_llmc_venv()


def identical_share(ours: dict, theirs: dict) -> float:
    same = sum(int((ours[k] == theirs[k]).sum()) for k in ours)
    return same / sum(v.numel() for v in ours.values())


def param_agreement(ours: dict, theirs: dict, key: str, prefix: str = "") -> tuple[int, int, list[str]]:
    """(equal, compared, [differing: name ours/theirs]) over the Linears (under ``prefix``) where both hold ``key``."""
    import torch

    names = [n for n in ours if n.startswith(prefix) and key in ours[n] and key in theirs.get(n, {})]
    differ = [f"{n} {ours[n][key].flatten()[0].item():.6g}/{theirs[n][key].flatten()[0].item():.6g}" for n in names
              if not torch.equal(ours[n][key].float().flatten(), theirs[n][key].float().flatten())]
    return len(names) - len(differ), len(names), differ


def run(nsamples: int, seqlen: int, repeats: int, layers: int, configs=CONFIGS) -> list[Row]:
    import torch
    from bench_vs_llmcompressor import gptq_output_errors

    python = {"kick": sys.executable, "llmc": str(llmc_python())}
    model = smollm2_truncated_dir(layers)
    calib = calibration_tokens(nsamples, seqlen, seed=0)
    heldout = calibration_tokens(4, seqlen, seed=1)
    rows: list[Row] = []
    for label, scheme, method, group, uses_data in configs:
        times: dict[str, list[float]] = {"kick": [], "llmc": []}
        rss: dict[str, list[float]] = {"kick": [], "llmc": []}
        saved: dict[str, str] = {}
        for rep in range(repeats):
            for side in (("kick", "llmc") if rep % 2 == 0 else ("llmc", "kick")):
                save = str(CACHE_DIR / f"scheme_{side}_{scheme}_{method}.pt") if rep == 0 else ""
                cmd = [python[side], str(WORKER), "--side", side, "--model", str(model), "--calib", str(calib),
                       "--scheme", scheme, "--method", method, "--group-size", str(group), "--save", save]
                if uses_data:
                    cmd.append("--uses-data")
                t0 = time.perf_counter()
                res = run_child(cmd)
                times[side].append(res.data["seconds"])
                rss[side].append(res.peak_mib if res.peak_mib is not None else res.data["rss_peak_mib"])
                if save:
                    saved[side] = save
                print(f"[schemes] {label:15s} {side:5s} rep {rep + 1}/{repeats}: {res.data['seconds']:.2f}s, "
                      f"peak RSS {rss[side][-1]:.0f} MiB (child {time.perf_counter() - t0:.0f}s)", file=sys.stderr)
        ours, theirs = torch.load(saved["kick"]), torch.load(saved["llmc"])
        t_k, t_l = median(times["kick"]), median(times["llmc"])
        m_k, m_l = median(rss["kick"]), median(rss["llmc"])
        rows.append(Row("kick-quant vs llm-compressor", f"{label}: time ratio kick/llmc", t_k / t_l,
                        f"<= {SPEED_TARGET}", t_k / t_l <= SPEED_TARGET,
                        f"kick {t_k:.2f}s vs llm-compressor {t_l:.2f}s (median of {repeats}, "
                        f"{nsamples}x{seqlen} tokens where data is used, {layers} blocks)",
                        {"kick_s": times["kick"], "llmc_s": times["llmc"]}))
        rows.append(Row("kick-quant vs llm-compressor", f"{label}: peak RSS ratio kick/llmc", m_k / m_l, "report", None,
                        f"kick {m_k:.0f} MiB vs llm-compressor {m_l:.0f} MiB (whole process, model incl.)",
                        {"kick_mib": rss["kick"], "llmc_mib": rss["llmc"]}))
        if method == "gptq":
            e_k, e_l = gptq_output_errors(model, heldout, ours["weights"], theirs["weights"])
            rel = e_k / e_l - 1
            rows.append(Row("kick-quant vs llm-compressor", f"{label}: layer output error ours/theirs - 1", rel,
                            f"<= {GPTQ_ERR_TARGET:+.0%}", rel <= GPTQ_ERR_TARGET,
                            f"mean rel. error kick {e_k:.5f} vs llm-compressor {e_l:.5f} (held-out 4x{seqlen})"))
        else:
            share = identical_share(ours["weights"], theirs["weights"])
            detail = f"{len(ours['weights'])} Linears"
            for key, prefix in (("weight_global_scale", ""), ("input_global_scale", "model.layers.0."),
                                ("input_scale", "model.layers.0.")):
                equal, n, differ = param_agreement(ours["params"], theirs["params"], key, prefix)
                if n:
                    detail += f"; {key}{' at block 0' if prefix else ''}: {equal}/{n} identical"
                    detail += f" (differ: {', '.join(differ[:4])})" if differ else ""
            rows.append(Row("kick-quant vs llm-compressor", f"{label}: identical weights", share, "= 100%",
                            share == 1.0, detail))
        for path in saved.values():
            Path(path).unlink(missing_ok=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=30, help="first N decoder blocks of SmolLM2 (30 = all)")
    ap.add_argument("--configs", default="", help="comma list of labels to run (default: all)")
    ap.add_argument("--out", help="also write the rows as JSON lines here")
    args = ap.parse_args(argv)
    wanted = [c for c in CONFIGS if not args.configs or c[0] in args.configs.split(",")]
    rows = run(args.nsamples, args.seqlen, args.repeats, args.layers, wanted)
    lines = [json.dumps(r.__dict__, default=str) for r in rows]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
