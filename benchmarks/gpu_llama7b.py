"""Prepared GPU check: Wanda / SparseGPT / GPTQ through ``kick_models.api`` on a LLaMA-7B-shaped model.

A randomly initialised ``LlamaForCausalLM`` with LLaMA-7B's block shape (hidden 4096, intermediate 11008,
32 heads) but only ``--layers`` decoder blocks (default 4 of 32: the driver works block by block, so time and
memory per block extrapolate linearly to 32), built in bf16 with ``from_config`` (no download), random
calibration tokens 128 x 2048 (the paper's amount). For each method: a fresh copy of the same initial
weights, ``torch.cuda.synchronize``-bracketed wall time, per-block wall times,
peak CUDA memory (``max_memory_allocated``), host memory (anonymous resident memory ``RssAnon`` from
``/proc/self/status``, sampled every 20 ms: its peak, the peak per block and the least-squares slope of those
per-block peaks in MiB per block, flat for an offloaded model: issue 27), then a 32-block extrapolation. Results go to
``$OUT/gpu_llama7b.json`` (or ``--out``) and stdout.

Placements (``--cases``); each records sparsity / bits COUNTED by this script from the weights the model will
use (offloaded ones read back with accelerate's ``get_state_dict_offloaded_model``), never from kick's report:

* ``gpu``          whole model on the GPU (results under ``methods``, as before);
* ``cpu-to-cuda``  model in CPU RAM, each block compressed on the GPU (``device="cuda"``);
* ``split``        blocks split over two GPUs with accelerate's ``dispatch_model`` (needs >= 2 GPUs, else skipped);
* ``offload``      blocks 0..n/2 on the GPU, the rest offloaded to CPU RAM and to disk behind accelerate hooks
                   (weights on "meta"): each offloaded block is onloaded, compressed on the GPU, written back.

    python benchmarks/gpu_llama7b.py                              # the four placements (H200: a few minutes)
    python benchmarks/gpu_llama7b.py --cases gpu                  # only the whole-model timing (< 8 minutes)
    python benchmarks/gpu_llama7b.py --tiny                       # CPU smoke test of the same code paths
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

FULL_LAYERS_7B = 32
CASES = ("gpu", "cpu-to-cuda", "split", "offload")
WBITS, GROUPSIZE = 4, 128


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
    with torch.no_grad():  # Small, LLaMA-like init scale keeps activations finite through the random blocks.
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


class HostMemory:
    """RssAnon of this process sampled every 20 ms by a thread (Linux; nothing elsewhere), split per block."""

    def __init__(self):
        import threading

        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss_anon() -> int | None:
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
        except (OSError, StopIteration):
            return None

    def _run(self):
        while True:
            value = self.rss_anon()
            if value is not None:
                self.samples.append((time.perf_counter(), value))
            if self._done.wait(0.02):
                return

    def stop(self, marks: list[float], end: float) -> dict:
        self._done.set()
        self._thread.join()
        if not self.samples:
            return {}
        points = marks + [end]
        def peak(a: float, b: float) -> float:  # a block shorter than the interval: the last sample before its end
            inside = [v for t, v in self.samples if a <= t <= b]
            before = [v for t, v in self.samples if t <= b] or [self.samples[0][1]]
            return max(inside or before[-1:]) / 2**20

        peaks = [peak(points[i], points[i + 1]) for i in range(len(marks))]
        n = len(peaks)
        mean_x, mean_y = (n - 1) / 2, sum(peaks) / max(n, 1)
        den = sum((i - mean_x) ** 2 for i in range(n))
        slope = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(peaks)) / den if den else 0.0
        return {"peak_rss_anon_mib": round(max(v for _, v in self.samples) / 2**20, 1),
                "peak_rss_anon_per_block_mib": [round(p, 1) for p in peaks],
                "rss_anon_slope_mib_per_block": round(slope, 2)}


def place(model, case: str, layers: int, offload_dir: str, compute):
    """``(model, device= for kick)``: ``model`` placed for ``case`` (``compute``: the GPU, or the CPU with --tiny)."""
    from accelerate import dispatch_model

    if case == "gpu":
        return model.to(compute), compute
    if case == "cpu-to-cuda":
        return model, compute
    main = (compute.index or 0) if compute.type == "cuda" else "cpu"
    shell = {"model.embed_tokens": main, "model.rotary_emb": main}
    if case == "split":
        device_map = {**shell, **{f"model.layers.{i}": (main if i < layers // 2 else 1) for i in range(layers)},
                      "model.norm": 1, "lm_head": 1}
    else:  # offload: first half on the GPU, then CPU RAM, then disk (the final norm too)
        device_map = {**shell, "lm_head": main, "model.norm": "disk"}
        for i in range(layers):
            device_map[f"model.layers.{i}"] = main if i < layers // 2 else ("cpu" if i < 3 * layers // 4 else "disk")
        if compute.type == "cpu":  # with the CPU as main device accelerate leaves "cpu" modules in place
            device_map = {k: ("disk" if v == "cpu" else v) for k, v in device_map.items()}
    model = dispatch_model(model, device_map=device_map, main_device=compute, offload_dir=offload_dir,
                           force_hooks=True)
    return model, None  # None: each block compressed where it runs (offloaded ones on the main GPU)


def counted(model, method: str, layers: int) -> dict:
    """Per-block sparsity (pruning) or the most distinct values in one quantization group (GPTQ), counted from the
    weights the model will use."""
    import torch

    if getattr(model, "hf_device_map", None):
        from accelerate.utils.modeling import get_state_dict_offloaded_model

        state = get_state_dict_offloaded_model(model)
    else:
        state = {k: v.detach() for k, v in model.state_dict().items()}
    blocks = []
    for i in range(layers):
        weights = [v for k, v in state.items() if k.startswith(f"model.layers.{i}.") and v.dim() == 2]
        if method == "gptq":
            worst = 0
            for w in weights:
                for g in w.float().split(GROUPSIZE, dim=1):  # one group: GROUPSIZE columns of one row
                    g = g.sort(-1).values
                    worst = max(worst, int(((g.diff(dim=-1) != 0).sum(-1) + 1).max()))
            blocks.append({"max_distinct_per_group": worst, "ok": worst <= 2 ** WBITS})
        else:
            zeros = sum(int((w == 0).sum()) for w in weights)
            total = sum(w.numel() for w in weights)
            blocks.append({"sparsity": zeros / total, "ok": abs(zeros / total - 0.5) < 0.01})
        del weights
    del state
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"blocks": blocks, "all_ok": all(b["ok"] for b in blocks)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test of the code path)")
    ap.add_argument("--layers", type=int, default=None, help="decoder blocks to build (default 4; --tiny 2)")
    ap.add_argument("--nsamples", type=int, default=None, help="calibration samples (default 128; --tiny 4)")
    ap.add_argument("--seqlen", type=int, default=None, help="calibration length (default 2048; --tiny 64)")
    ap.add_argument("--methods", default="wanda,sparsegpt,gptq")
    ap.add_argument("--cases", default=",".join(CASES), help=f"placements, of {', '.join(CASES)}")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batch-size", type=int, default=None, help="calibration batch (default: kick's choice)")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_llama7b.json if $OUT is set)")
    args = ap.parse_args(argv)
    args.layers = args.layers or (2 if args.tiny else 4)
    args.nsamples = args.nsamples or (4 if args.tiny else 128)
    args.seqlen = args.seqlen or (64 if args.tiny else 2048)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}: expected some of {', '.join(CASES)}")

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
    template = build_model(args, "cpu", dtype)  # every run starts from a copy of the same weights
    build_s = time.perf_counter() - t_build
    config = template.config
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (args.nsamples, args.seqlen), generator=gen)
    info = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__, "dtype": str(dtype), "tiny": args.tiny, "layers_built": args.layers,
        "hidden": config.hidden_size, "intermediate": config.intermediate_size,
        "nsamples": args.nsamples, "seqlen": args.seqlen, "build_seconds": build_s, "methods": {}, "cases": {},
    }
    print(f"[gpu7b] built {args.layers}-block model in {build_s:.1f}s; cases {', '.join(cases)}", file=sys.stderr)
    for case in cases:
        if case == "cpu-to-cuda" and not cuda:
            info["cases"][case] = {"skipped": "needs CUDA"}
            continue
        if case == "split" and (not cuda or torch.cuda.device_count() < 2):
            info["cases"][case] = {"skipped": f"needs 2 GPUs, {torch.cuda.device_count() if cuda else 0} visible"}
            continue
        info["cases"][case] = {}
        for method in [m for m in args.methods.split(",") if m]:
            with tempfile.TemporaryDirectory(prefix="gpu7b-offload-") as offload_dir:
                model, kick_device = place(copy.deepcopy(template), case, args.layers, offload_dir, device)
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                base_mem = torch.cuda.memory_allocated(device) if cuda else 0
                timer = BlockTimer(sync)
                host = HostMemory()
                kwargs = dict(calibration=tokens, progress=False, device=kick_device, batch_size=args.batch_size)
                sync()
                t0 = time.perf_counter()
                try:
                    if method == "gptq":
                        report = quantize(model, None, method="gptq", wbits=WBITS, groupsize=GROUPSIZE, **kwargs)
                    else:
                        report = prune(model, None, method=method, sparsity=0.5, **kwargs)
                    sync()
                finally:
                    timer.remove()
                end = time.perf_counter()
                host_record = host.stop(timer.marks, end)
                seconds = end - t0
                per_block = timer.per_block(end)
                peak = torch.cuda.max_memory_allocated(device) if cuda else 0
                first_block_start = timer.marks[0] if timer.marks else t0
                setup = first_block_start - t0  # calibration capture (embeddings) before block 0
                est_full = setup + (sum(per_block) / max(len(per_block), 1)) * FULL_LAYERS_7B if not args.tiny else None
                result = {
                    "seconds": seconds, "report_seconds": report.seconds, "per_block_seconds": per_block,
                    "setup_seconds": setup, "measured_sparsity": report.measured_sparsity(),
                    "bits_per_weight": report.bits_per_weight(),
                    "peak_cuda_mem_gib": peak / 2**30, "model_mem_gib": base_mem / 2**30,
                    "extra_peak_gib": (peak - base_mem) / 2**30,
                    "extrapolated_32_blocks_seconds": est_full,
                    "counted": counted(model, method, args.layers),
                    **host_record,
                }
                info["cases"][case][method] = result
                if case == "gpu":
                    info["methods"][method] = result
                del model
            print(f"[gpu7b] {case} {method}: {seconds:.1f}s for {args.layers} blocks (per block "
                  f"{', '.join(f'{s:.1f}' for s in per_block)}), peak CUDA {peak / 2**30:.2f} GiB, sparsity "
                  f"{report.measured_sparsity():.3f}, counted ok: {result['counted']['all_ok']}, host RssAnon peak "
                  f"{result.get('peak_rss_anon_mib', 0):.0f} MiB, slope {result.get('rss_anon_slope_mib_per_block')} MiB/block"
                  + (f", ~{est_full / 60:.1f} min for 32 blocks" if est_full else ""), file=sys.stderr)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_llama7b.json") if os.environ.get("OUT") else None)
    text = json.dumps(info, indent=2)
    if out:
        Path(out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
