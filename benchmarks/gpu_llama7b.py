"""Prepared GPU check: Wanda / SparseGPT / GPTQ through ``kick_models.api`` on a LLaMA-7B-shaped model.

A randomly initialised ``LlamaForCausalLM`` with LLaMA-7B's block shape (hidden 4096, intermediate 11008,
32 heads) but only ``--layers`` decoder blocks (default 4 of 32: the driver works block by block, so time and
memory per block extrapolate linearly to 32), built directly on CUDA in bf16 with ``from_config`` (no download),
random calibration tokens 128 x 2048 (the paper's amount). For each method: a fresh copy of the same initial
weights, ``torch.cuda.synchronize``-bracketed wall time, per-block wall times,
peak CUDA memory (``max_memory_allocated``), then a 32-block extrapolation. Results go to
``$OUT/gpu_llama7b.json`` (or ``--out``) and stdout.

    python benchmarks/gpu_llama7b.py                 # on the H200: well under 8 minutes
    python benchmarks/gpu_llama7b.py --tiny          # CPU smoke test of the same code path (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

FULL_LAYERS_7B = 32


def build_model(args, device, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.tiny:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=4,
                          num_hidden_layers=args.layers, vocab_size=512, max_position_embeddings=256)
    else:
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                          num_hidden_layers=args.layers, vocab_size=32000, max_position_embeddings=4096,
                          rms_norm_eps=1e-5)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    # Small, LLaMA-like init scale keeps activations finite through the random blocks.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return model.eval()


class BlockTimer:
    """Wall time per decoder block: marks each call of the sequential driver's ``linear_modules(layer)``, which
    ``compress_layers`` makes exactly once at the start of every block (after the calibration capture)."""

    def __init__(self, sync):
        from kick_models.compress import sequential

        self.sequential = sequential
        self.original = sequential.linear_modules
        self.sync = sync
        self.marks: list[float] = []

        def marked(layer):
            self.sync()
            self.marks.append(time.perf_counter())
            return self.original(layer)

        sequential.linear_modules = marked

    def per_block(self, end: float) -> list[float]:
        points = self.marks + [end]
        return [points[i + 1] - points[i] for i in range(len(self.marks))]

    def remove(self):
        self.sequential.linear_modules = self.original


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test of the code path)")
    ap.add_argument("--layers", type=int, default=None, help="decoder blocks to build (default 4; --tiny 2)")
    ap.add_argument("--nsamples", type=int, default=None, help="calibration samples (default 128; --tiny 4)")
    ap.add_argument("--seqlen", type=int, default=None, help="calibration length (default 2048; --tiny 64)")
    ap.add_argument("--methods", default="wanda,sparsegpt,gptq")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batch-size", type=int, default=None, help="calibration batch (default: kick's choice)")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_llama7b.json if $OUT is set)")
    args = ap.parse_args(argv)
    args.layers = args.layers or (2 if args.tiny else 4)
    args.nsamples = args.nsamples or (4 if args.tiny else 128)
    args.seqlen = args.seqlen or (64 if args.tiny else 2048)

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kick_models.api import prune, quantize

    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available: run with --tiny for the CPU smoke test")
    dtype = getattr(torch, args.dtype if not (args.tiny and args.dtype == "bfloat16") else "float32")
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    t_build = time.perf_counter()
    model = build_model(args, device, dtype)
    sync()
    build_s = time.perf_counter() - t_build
    initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=gen)
    info = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "dtype": str(dtype), "tiny": args.tiny, "layers_built": args.layers,
        "hidden": model.config.hidden_size, "intermediate": model.config.intermediate_size,
        "nsamples": args.nsamples, "seqlen": args.seqlen, "build_seconds": build_s, "methods": {},
    }
    print(f"[gpu7b] built {args.layers}-block model on {device} in {build_s:.1f}s", file=sys.stderr)
    for method in [m for m in args.methods.split(",") if m]:
        model.load_state_dict(initial)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device) if cuda else 0
        timer = BlockTimer(sync)
        kwargs = dict(calibration=tokens, progress=False, device=device, batch_size=args.batch_size)
        sync()
        t0 = time.perf_counter()
        if method == "gptq":
            report = quantize(model, None, method="gptq", wbits=4, groupsize=128, **kwargs)
        else:
            report = prune(model, None, method=method, sparsity=0.5, **kwargs)
        sync()
        end = time.perf_counter()
        timer.remove()
        seconds = end - t0
        per_block = timer.per_block(end)
        peak = torch.cuda.max_memory_allocated(device) if cuda else 0
        first_block_start = timer.marks[0] if timer.marks else t0
        setup = first_block_start - t0  # calibration capture (embeddings) before block 0
        est_full = setup + (sum(per_block) / max(len(per_block), 1)) * FULL_LAYERS_7B if not args.tiny else None
        info["methods"][method] = {
            "seconds": seconds, "report_seconds": report.seconds, "per_block_seconds": per_block,
            "setup_seconds": setup, "measured_sparsity": report.measured_sparsity(),
            "bits_per_weight": report.bits_per_weight(),
            "peak_cuda_mem_gib": peak / 2**30, "model_mem_gib": base_mem / 2**30,
            "extra_peak_gib": (peak - base_mem) / 2**30,
            "extrapolated_32_blocks_seconds": est_full,
        }
        print(f"[gpu7b] {method}: {seconds:.1f}s for {args.layers} blocks (per block "
              f"{', '.join(f'{s:.1f}' for s in per_block)}), peak CUDA {peak / 2**30:.2f} GiB, sparsity "
              f"{report.measured_sparsity():.3f}" + (f", ~{est_full / 60:.1f} min for 32 blocks" if est_full else ""),
              file=sys.stderr)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_llama7b.json") if os.environ.get("OUT") else None)
    text = json.dumps(info, indent=2)
    if out:
        Path(out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
