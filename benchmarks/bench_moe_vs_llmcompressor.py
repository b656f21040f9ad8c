"""kick's MoE handling against llm-compressor's on a tiny random qwen3_moe: per-expert mask agreement and time.

Both sides prune 50% unstructured with Wanda and SparseGPT, every expert's statistics from every calibration
token (kick ``moe_calibration=all``, llm-compressor ``moe_calibrate_all_experts=True``), the same model folder
and the same token file, each run in a fresh child process, interleaved (kick, llmc, then llmc, kick, ...).
Prints the median compression seconds, their ratio, and the mask agreement per expert matrix (mean / min) and
over all pruned matrices. llm-compressor 0.14 (transformers 5.17, sequential pipeline) calibrates this model with
NON-causal attention (its block-0 ``o_proj`` inputs equal a forward with ``is_causal=False`` to 1e-7 and differ from
the causal forward by 0.5), so a control run of kick with the attention modules set ``is_causal=False`` isolates
the expert handling from that difference.

    python benchmarks/bench_moe_vs_llmcompressor.py [--repeats 3] [--nsamples 16 --seqlen 64]

llm-compressor runs in its own venv (``benchmarks/.venv-llmcompressor``, see README.md, created when missing).
If it cannot run the MoE case, its error is printed (and goes to RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from common import CACHE_DIR, LLMC_PYTHON, median, run_child  # noqa: E402

WORKER = BENCH_DIR / "workers" / "moe_masks.py"


def tiny_qwen3_moe(hidden: int, layers: int) -> Path:
    """A random qwen3_moe (4 experts, 2 per token) with a byte-level BPE tokenizer, saved once."""
    from tiny import make_tiny_model_dir

    out = CACHE_DIR / f"qwen3moe-h{hidden}-l{layers}"
    if not (out / "config.json").is_file():
        make_tiny_model_dir(out, family="qwen3_moe", hidden=hidden, layers=layers, intermediate=2 * hidden)
    return out


def calib_file(model_dir: Path, nsamples: int, seqlen: int) -> Path:
    import torch
    from transformers import AutoTokenizer

    out = CACHE_DIR / f"moe_calib_{nsamples}x{seqlen}.pt"
    if not out.is_file():
        vocab = len(AutoTokenizer.from_pretrained(model_dir))
        tokens = torch.randint(0, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
        torch.save({"tokens": tokens}, out)
    return out


def agreement(ours: dict, theirs: dict) -> dict:
    experts = [k for k in ours if ".experts." in k]
    missing = sorted(set(ours) ^ set(theirs))
    if missing:
        raise RuntimeError(f"the two sides pruned different matrices, e.g. {missing[:6]}")
    per = {k: float((ours[k] == theirs[k]).float().mean()) for k in ours}
    same = sum(int((ours[k] == theirs[k]).sum()) for k in ours)
    return {"all": same / sum(ours[k].numel() for k in ours), "experts_mean": sum(per[k] for k in experts) / len(experts),
            "experts_min": min(per[k] for k in experts), "n_expert_matrices": len(experts), "n_matrices": len(ours)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args(argv)
    import torch

    from bench_vs_llmcompressor import ensure_llmc_venv

    model = tiny_qwen3_moe(args.hidden, args.layers)
    calib = calib_file(model, args.nsamples, args.seqlen)
    ensure_llmc_venv()
    results = {}
    for method in ("wanda", "sparsegpt"):
        times: dict[str, list[float]] = {"kick": [], "llmc": []}
        saved = {}
        for r in range(args.repeats):
            for side in (("kick", "llmc") if r % 2 == 0 else ("llmc", "kick")):
                save = CACHE_DIR / f"moe_{method}_{side}.pt"
                python = sys.executable if side == "kick" else str(LLMC_PYTHON)
                try:
                    child = run_child([python, str(WORKER), "--side", side, "--model", str(model), "--calib",
                                       str(calib), "--method", method, "--save", str(save)], timeout=1800)
                except RuntimeError as exc:
                    print(f"[{method}] {side} FAILED:\n{exc}", file=sys.stderr)
                    results[method] = {"error": f"{side}: {str(exc)[-1500:]}"}
                    break
                times[side].append(child.data["seconds"])
                saved[side] = save
            if method in results:
                break
        if method in results:
            continue
        agree = agreement(torch.load(saved["kick"]), torch.load(saved["llmc"]))
        control = CACHE_DIR / f"moe_{method}_kick_noncausal.pt"
        run_child([sys.executable, str(WORKER), "--side", "kick", "--noncausal", "--model", str(model), "--calib",
                   str(calib), "--method", method, "--save", str(control)], timeout=1800)
        same_inputs = agreement(torch.load(control), torch.load(saved["llmc"]))
        results[method] = {"kick_s": median(times["kick"]), "llmc_s": median(times["llmc"]),
                           "ratio": median(times["kick"]) / median(times["llmc"]), **agree,
                           "noncausal_control": same_inputs}
    print(f"tiny qwen3_moe hidden={args.hidden} layers={args.layers}, 4 experts top-2, "
          f"{args.nsamples}x{args.seqlen} tokens, {args.repeats} interleaved repeats")
    print("| method | kick s | llm-compressor s | ratio | expert masks identical (mean / min) | all matrices "
          "| control: kick with llm-compressor's non-causal attention (experts mean / min, all) |")
    print("|---|---|---|---|---|---|---|")
    for method, r in results.items():
        if "error" in r:
            print(f"| {method} | | | | llm-compressor failed: {r['error'].splitlines()[-1][:200]} | |")
        else:
            c = r["noncausal_control"]
            print(f"| {method} | {r['kick_s']:.2f} | {r['llmc_s']:.2f} | {r['ratio']:.2f}x | "
                  f"{r['experts_mean']:.6f} / {r['experts_min']:.6f} ({r['n_expert_matrices']}) | {r['all']:.6f} | "
                  f"{c['experts_mean']:.6f} / {c['experts_min']:.6f}, {c['all']:.6f} |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
