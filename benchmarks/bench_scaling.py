"""Benchmark 4: how kick's compression time and memory scale with the calibration size, and an extrapolation.

Wanda and SparseGPT on the first ``--layers`` (default 2) decoder blocks of SmolLM2-135M (time per block is what scales;
fewer blocks keep this inside the CPU budget) with calibration tokens nsamples x seqlen growing 4k -> 32k.
Each point is a fresh child process. Reported:

* time vs tokens: least-squares slope (s per 1k tokens) and R^2 (linear => R^2 close to 1);
* memory: peak RSS during compression (the high-water mark is reset after the model load) minus RSS after load, against the activation buffers the sequential driver keeps
  (inputs + outputs of one block for every sample: ``nsamples * seqlen * hidden * 4 bytes * 2``);
* an EXTRAPOLATION to LLaMA-7B and LLaMA-70B shapes on one GPU, from per-block FLOPs (see ``extrapolate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, Row, calibration_tokens, linear_fit, run_child, smollm2_dir  # noqa: E402

#: (nsamples, seqlen): tokens 4k, 8k, 16k, 32k at seqlen 512, plus 16k at seqlen 2048 (longer windows).
POINTS = [(8, 512), (16, 512), (32, 512), (64, 512), (8, 2048)]
QUICK_POINTS = [(8, 512), (16, 512), (32, 512)]

#: Shapes for the extrapolation: layers, hidden, intermediate, attention heads, kv heads.
SHAPES = {
    "SmolLM2-135M": (30, 576, 1536, 9, 3),
    "LLaMA-7B": (32, 4096, 11008, 32, 32),
    "LLaMA-70B": (80, 8192, 28672, 64, 8),
}


def block_flops(hidden: int, inter: int, heads: int, kv_heads: int, tokens: int, seqlen: int, method: str) -> float:
    """FLOPs to compress ONE decoder block with ``tokens`` calibration tokens (windows of ``seqlen``).

    Forward of the block: 2 * params * tokens + attention (4 * seqlen * hidden per token); the sequential
    driver runs it twice (statistics, then outputs of the compressed block). Statistics: Wanda a column norm
    (2 * in per token per Linear, negligible); SparseGPT/GPTQ the Hessian ``X^T X`` (2 * in^2 per token per
    Linear) plus the per-Linear solve (Cholesky/inverse ~ in^3, column sweep ~ 2 * out * in^2).
    """
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    linears = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden),
               (hidden, inter)]  # (out, in)
    params = sum(o * i for o, i in linears)
    forward = 2 * params * tokens + 4 * seqlen * hidden * tokens
    total = 2 * forward
    if method in ("sparsegpt", "gptq"):
        total += sum(2 * i * i * tokens for _, i in linears)
        total += sum(2 * i ** 3 + 2 * o * i * i for o, i in linears)
    return float(total)


def run(layers: int, quick: bool) -> tuple[list[Row], dict]:
    model = smollm2_dir()
    points = QUICK_POINTS if quick else POINTS
    data: dict = {"layers": layers, "points": []}
    rows: list[Row] = []
    for method in ("wanda", "sparsegpt"):
        xs, ts, mem, buf = [], [], [], []
        for nsamples, seqlen in points:
            calib = calibration_tokens(nsamples, seqlen, seed=0)
            res = run_child([sys.executable, str(BENCH_DIR / "workers" / "kick_compress.py"), "--model", str(model),
                             "--calib", str(calib), "--method", method, "--layers", str(layers)])
            d = res.data
            tokens = nsamples * seqlen
            act = nsamples * seqlen * d["hidden"] * 4 * 2 / 2**20
            # Peak RSS during compression (VmHWM reset after load) minus RSS with the model loaded; falls back to
            # ru_maxrss (which the load's own transient peak can mask) where /proc is unavailable.
            if d.get("hwm_during_compress_mib") is not None:
                extra = d["hwm_during_compress_mib"] - d["rss_after_load_mib"]
            else:
                extra = d["rss_peak_mib"] - d["rss_load_mib"]
            xs.append(tokens)
            ts.append(d["seconds"])
            mem.append(extra)
            buf.append(act)
            data["points"].append({"method": method, "nsamples": nsamples, "seqlen": seqlen, "tokens": tokens,
                                   "seconds": d["seconds"], "rss_extra_mib": extra, "act_buffers_mib": act,
                                   "hidden": d["hidden"], "intermediate": d["intermediate"]})
            print(f"[bench4] {method:9s} {nsamples:3d}x{seqlen:<5d} ({tokens / 1024:.0f}k tokens): {d['seconds']:.1f}s, "
                  f"peak RSS - load {extra:.0f} MiB vs activation buffers {act:.0f} MiB", file=sys.stderr)
        fit_x = [x for (n, s), x in zip(points, xs) if s == 512]
        fit_t = [t for (n, s), t in zip(points, ts) if s == 512]
        slope, intercept, r2 = linear_fit(fit_x, fit_t)
        data[f"{method}_fit"] = {"slope_s_per_token": slope, "intercept_s": intercept, "r2": r2}
        rows.append(Row("4 scaling", f"{method}: time vs tokens, R^2 of linear fit", r2, ">= 0.95 (linear)",
                        r2 >= 0.95, f"{slope * 1024:.3f} s per 1k tokens + {intercept:.1f}s, {layers} blocks, "
                        f"seqlen 512, tokens {', '.join(f'{x // 1024}k' for x in fit_x)}"))
        sat = [(b, m) for x, b, m in zip(xs, buf, mem) if x >= 8192]  # batches full (8k tokens): temporaries fixed
        m_slope, m_icpt, m_r2 = linear_fit([b for b, _ in sat], [m for _, m in sat])
        data[f"{method}_memory_fit"] = {"slope": m_slope, "intercept_mib": m_icpt, "r2": m_r2}
        rows.append(Row("4 scaling", f"{method}: (peak RSS - load) vs activation buffers, slope of linear fit", m_slope,
                        "report", None, f"intercept {m_icpt:.0f} MiB (one calibration batch's temporaries: kick's CPU "
                        f"default is <= 8k tokens per forward, so it stops growing at 8k; fit over >= 8k tokens), R^2 {m_r2:.2f}; "
                        + "; ".join(f"{x // 1024}k: {m:.0f}/{b:.0f} MiB" for x, m, b in zip(xs, mem, buf))))
    data["extrapolation"] = extrapolate(data)
    for name, e in data["extrapolation"].items():
        rows.append(Row("4 extrapolation", f"{name} (EXTRAPOLATED, 128x2048 tokens)", None, "report", None, e["text"]))
    return rows, data


def extrapolate(data: dict) -> dict:
    """Per-block FLOPs model calibrated on this CPU, rescaled to 7B/70B shapes; GPU time at an ASSUMED throughput."""
    out = {}
    layers_small, hidden_s, inter_s, heads_s, kv_s = SHAPES["SmolLM2-135M"]
    gpu_flops = 100e12  # ASSUMED sustained FLOP/s of one H200 on this work (fp32 statistics, bf16 forward)
    col_latency = 100e-6  # ASSUMED GPU time per column of the SparseGPT/GPTQ sweep (~10 small kernel launches)
    for method in ("wanda", "sparsegpt"):
        pts = [p for p in data["points"] if p["method"] == method and p["seqlen"] == 512]
        big = max(pts, key=lambda p: p["tokens"])
        cpu_rate = data["layers"] * block_flops(hidden_s, inter_s, heads_s, kv_s, big["tokens"], 512, method) / big["seconds"]
        for name in ("LLaMA-7B", "LLaMA-70B"):
            n_layers, hidden, inter, heads, kv = SHAPES[name]
            flops = n_layers * block_flops(hidden, inter, heads, kv, 128 * 2048, 2048, method)
            sweep_s = n_layers * (6 * hidden + inter) * col_latency if method == "sparsegpt" else 0.0
            gpu_s = flops / gpu_flops + sweep_s
            act_gib = 128 * 2048 * hidden * 2 * 2 / 2**30  # inputs + outputs, bf16
            head_dim = hidden // heads
            block_params = (2 * hidden * hidden + 2 * kv * head_dim * hidden + 3 * hidden * inter)
            hess_gib = 0.0
            if method == "sparsegpt":
                hess_gib = (6 * hidden * hidden + inter * inter) * 4 / 2**30
            mem_gib = act_gib + block_params * 2 / 2**30 + hess_gib
            out[f"{name} {method}"] = {
                "flops": flops, "cpu_flops_per_s": cpu_rate, "gpu_assumed_flops_per_s": gpu_flops,
                "cpu_hours": flops / cpu_rate / 3600, "gpu_minutes": gpu_s / 60, "gpu_mem_gib": mem_gib,
                "text": (f"{flops / 1e15:.1f} PFLOP: ~{gpu_s / 60:.1f} min on one GPU at an assumed "
                         f"{gpu_flops / 1e12:.0f} TFLOP/s"
                         + (f" + column sweep {sweep_s / 60:.1f} min at an assumed {col_latency * 1e6:.0f} us/column"
                            if sweep_s else "")
                         + f" (this CPU: {cpu_rate / 1e9:.1f} GFLOP/s -> "
                         f"{flops / cpu_rate / 3600:.0f} h); GPU memory ~{mem_gib:.1f} GiB = activations "
                         f"{act_gib:.1f} + one block bf16 {block_params * 2 / 2**30:.2f} + Hessians {hess_gib:.2f} "
                         f"(rest of the model kept off the GPU)"),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    rows, data = run(args.layers, args.quick)
    for r in rows:
        print(json.dumps(r.__dict__, default=str))
    print(json.dumps(data, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
