"""Benchmark 1: kick's compression against llm-compressor 0.14 (same algorithms, maintained implementation).

Same model folder (SmolLM2-135M converted once from the GGUF), the SAME calibration token tensor (one .pt file
both sides load), settings matched (damping 0.01, block 128, lm_head untouched, layer-wise sequential, GPTQ
4-bit group 64 asymmetric without act-order: 576 columns are not a multiple of 128 and llm-compressor cannot
quantize a partial group). Each run is a fresh child process; kick and llm-compressor runs
are interleaved (A B A B ...), wall time and peak RSS are medians.

Agreement (from the first repeat of each side):
* pruning: fraction of identical zero/non-zero positions over every pruned Linear;
* GPTQ: per Linear ``||X W_q^T - X W^T|| / ||X W^T||`` on HELD-OUT calibration activations ``X`` (a different C4
  sample, captured from the dense model), averaged over Linears; reported as ours / theirs - 1.

llm-compressor pins transformers <= 5.17 and compressed-tensors == 0.19, so it lives in its own venv
(``benchmarks/.venv-llmcompressor``), created here when missing: torch==2.13.0 first (CPU wheel), then
``requirements-llmcompressor.txt``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    CACHE_DIR,
    LLMC_PYTHON,
    LLMC_VENV,
    Row,
    calibration_tokens,
    median,
    run_child,
    smollm2_truncated_dir,
)

#: (label, method, sparsity_type)
METHODS = [
    ("wanda 50%", "wanda", "unstructured"),
    ("sparsegpt 50%", "sparsegpt", "unstructured"),
    ("sparsegpt 2:4", "sparsegpt", "2:4"),
    ("gptq w4 g64", "gptq", "unstructured"),
]
SPEED_TARGET = 0.8
MASK_TARGET = 0.999
GPTQ_ERR_TARGET = 0.01
#: SmolLM2's 576 input columns are not a multiple of 128 and llm-compressor cannot quantize a partial group.
GPTQ_GROUP = 64


def ensure_llmc_venv() -> Path:
    """Create ``benchmarks/.venv-llmcompressor`` (torch pinned first) if it does not exist yet."""
    if LLMC_PYTHON.is_file():
        check = subprocess.run([str(LLMC_PYTHON), "-c", "import llmcompressor"], capture_output=True)
        if check.returncode == 0:
            return LLMC_PYTHON
    print(f"[bench] creating {LLMC_VENV} (torch==2.13.0 then llmcompressor; a few minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(LLMC_VENV)], check=True)
    pip = [str(LLMC_PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["-r", str(BENCH_DIR / "requirements-llmcompressor.txt")], check=True)
    return LLMC_PYTHON


def _worker_cmd(side: str, model: Path, calib: Path, method: str, stype: str, save: str) -> list[str]:
    if side == "kick":
        return [sys.executable, str(BENCH_DIR / "workers" / "kick_compress.py"), "--model", str(model), "--calib",
                str(calib), "--method", method, "--sparsity-type", stype, "--save", save, "--groupsize", str(GPTQ_GROUP)]
    return [str(LLMC_PYTHON), str(BENCH_DIR / "workers" / "llmc_compress.py"), "--model", str(model), "--calib",
            str(calib), "--method", method, "--sparsity-type", stype, "--save", save, "--groupsize", str(GPTQ_GROUP)]


def mask_agreement(ours: dict, theirs: dict) -> float:
    """Fraction of identical zero/non-zero positions over all pruned Linears (both must name the same Linears)."""
    if set(ours) != set(theirs):
        raise RuntimeError(f"different Linears pruned: only ours {sorted(set(ours) - set(theirs))[:5]}, "
                           f"only theirs {sorted(set(theirs) - set(ours))[:5]}")
    same = sum(int((ours[k] == theirs[k]).sum()) for k in ours)
    total = sum(ours[k].numel() for k in ours)
    return same / total


def gptq_output_errors(model_dir: Path, heldout: Path, ours: dict, theirs: dict) -> tuple[float, float]:
    """Mean over Linears of ``||X W_q^T - X W^T|| / ||X W^T||`` for our and their weights, X = held-out inputs."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = torch.load(heldout)["tokens"]
    errs: dict[str, list[float]] = {"ours": [], "theirs": []}

    def hook(name):
        def fn(mod, args, out):
            x = args[0].reshape(-1, args[0].shape[-1])
            ref = out.reshape(-1, out.shape[-1])
            denom = ref.norm()
            for side, weights in (("ours", ours), ("theirs", theirs)):
                errs[side].append(float((x @ weights[name].t() - ref).norm() / denom))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n in ours]
    with torch.inference_mode():
        model(input_ids=tokens, use_cache=False)  # Linears have no bias here: out = X W^T
    for h in handles:
        h.remove()
    return sum(errs["ours"]) / len(errs["ours"]), sum(errs["theirs"]) / len(errs["theirs"])


def run(nsamples: int, seqlen: int, repeats: int, methods: list[tuple[str, str, str]] | None = None,
        layers: int = 30) -> list[Row]:
    import torch

    ensure_llmc_venv()
    model = smollm2_truncated_dir(layers)
    calib = calibration_tokens(nsamples, seqlen, seed=0)
    heldout = calibration_tokens(4, seqlen, seed=1)
    rows: list[Row] = []
    for label, method, stype in methods or METHODS:
        times: dict[str, list[float]] = {"kick": [], "llmc": []}
        rss: dict[str, list[float]] = {"kick": [], "llmc": []}
        saved: dict[str, str] = {}
        for rep in range(repeats):
            order = ("kick", "llmc") if rep % 2 == 0 else ("llmc", "kick")  # interleaved, alternating first
            for side in order:
                save = str(CACHE_DIR / f"result_{side}_{method}_{stype.replace(':', '-')}.pt") if rep == 0 else ""
                t0 = time.perf_counter()
                res = run_child(_worker_cmd(side, model, calib, method, stype, save))
                times[side].append(res.data["seconds"])
                # the child's own VmHWM (ru_maxrss would carry a bigger parent's peak across exec)
                rss[side].append(res.peak_mib if res.peak_mib is not None else res.data["rss_peak_mib"])
                if save:
                    saved[side] = save
                print(f"[bench1] {label:14s} {side:5s} rep {rep + 1}/{repeats}: {res.data['seconds']:.1f}s compress, "
                      f"peak RSS {rss[side][-1]:.0f} MiB (child {time.perf_counter() - t0:.0f}s)",
                      file=sys.stderr)
        ours, theirs = torch.load(saved["kick"]), torch.load(saved["llmc"])
        t_k, t_l = median(times["kick"]), median(times["llmc"])
        m_k, m_l = median(rss["kick"]), median(rss["llmc"])
        detail = (f"kick {t_k:.1f}s vs llm-compressor {t_l:.1f}s (median of {repeats}, {nsamples}x{seqlen} tokens, "
                  f"{min(layers, 30)} of 30 blocks)")
        rows.append(Row("1 vs llm-compressor", f"{label}: time ratio kick/llmc", t_k / t_l, f"<= {SPEED_TARGET}",
                        t_k / t_l <= SPEED_TARGET, detail, {"kick_s": times["kick"], "llmc_s": times["llmc"]}))
        rows.append(Row("1 vs llm-compressor", f"{label}: peak RSS ratio kick/llmc", m_k / m_l, "report",
                        None, f"kick {m_k:.0f} MiB vs llm-compressor {m_l:.0f} MiB (whole process, model incl.; VmHWM)",
                        {"kick_mib": rss["kick"], "llmc_mib": rss["llmc"]}))
        if method == "gptq":
            e_k, e_l = gptq_output_errors(model, heldout, ours, theirs)
            rel = e_k / e_l - 1
            rows.append(Row("1 vs llm-compressor", f"{label}: layer output error ours/theirs - 1", rel,
                            f"<= {GPTQ_ERR_TARGET:+.0%}", rel <= GPTQ_ERR_TARGET,
                            f"mean rel. error kick {e_k:.5f} vs llm-compressor {e_l:.5f} (held-out 4x{seqlen})"))
        else:
            agree = mask_agreement(ours, theirs)
            first = {k: v for k, v in ours.items() if k.startswith("model.layers.0.")}
            agree0 = mask_agreement(first, {k: theirs[k] for k in first})
            rows.append(Row("1 vs llm-compressor", f"{label}: mask agreement", agree, f">= {MASK_TARGET:.1%}",
                            agree >= MASK_TARGET, f"{len(ours)} Linears; decoder block 0 alone (identical inputs "
                            f"up to float rounding): {agree0:.6f}", {"block0": agree0}))
        del ours, theirs
        for path in saved.values():
            Path(path).unlink(missing_ok=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=30, help="first N decoder blocks of SmolLM2 (30 = all)")
    ap.add_argument("--methods", default="", help="comma list of labels' methods: wanda,sparsegpt,sparsegpt24,gptq")
    args = ap.parse_args(argv)
    pick = {"wanda": METHODS[0], "sparsegpt": METHODS[1], "sparsegpt24": METHODS[2], "gptq": METHODS[3]}
    methods = [pick[m] for m in args.methods.split(",") if m] or None
    rows = run(args.nsamples, args.seqlen, args.repeats, methods, args.layers)
    for r in rows:
        print(json.dumps(r.__dict__, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
