"""Large models: what offloading costs kick, and how much memory each method needs per model size.

1. **Offload speed** (measured): a small random llama (``--hidden``/``--layers``, default 512 x 8 blocks, ~40 M
   parameters, float32) compressed on this machine's CPU plainly, with every decoder block offloaded to CPU RAM
   behind accelerate hooks, and with every block offloaded to disk (``from_pretrained(device_map=..."disk")``,
   weights read from the source safetensors, compressed ones written to kick's own folder). Runs are interleaved
   (plain, cpu, disk, plain, ...), each on a freshly loaded model; medians and ratios to plain are printed.
2. **Memory per method per model size** (computed from shapes, no model is built: the config on the meta
   device): what the sequential driver holds on the compute device besides one batch's activations -- the stored
   calibration inputs and the outputs being produced (``2 * nsamples * seqlen * hidden * 2 bytes`` in bf16), one
   block in bf16, and the statistics: Wanda one fp32 norm per input column (negligible), SparseGPT / GPTQ one
   fp32 Hessian ``in x in`` per weight matrix plus fp32 working copies of the widest matrix.

    python benchmarks/bench_offload.py                  # both parts (~2 minutes on 2 busy cores)
    python benchmarks/bench_offload.py --memory-only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SIZES = {  # LLaMA-1/2 shapes: hidden, intermediate, heads, kv heads, blocks
    "LLaMA-7B": (4096, 11008, 32, 32, 32),
    "LLaMA-13B": (5120, 13824, 40, 40, 40),
    "LLaMA-70B": (8192, 28672, 64, 8, 80),
}


def memory_table(nsamples: int = 128, seqlen: int = 2048) -> str:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from kick_models.compress.memory import block_statistics_bytes

    gib = 2**30
    rows = ["| model | stored inputs + outputs | one block (bf16) | Wanda statistics | SparseGPT / GPTQ Hessians "
            "+ work | on the device: Wanda | SparseGPT / GPTQ | whole model (bf16) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, (hidden, inter, heads, kv, blocks) in SIZES.items():
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                          num_key_value_heads=kv, num_hidden_layers=blocks, vocab_size=32000)
        with torch.device("meta"):
            layer = LlamaDecoderLayer(cfg, 0).to(torch.bfloat16)
        hessians, work, block = block_statistics_bytes(layer)
        wanda = sum(m.in_features * 4 for m in layer.modules() if isinstance(m, torch.nn.Linear))
        stored = 2 * nsamples * seqlen * hidden * 2
        whole = block * blocks + 2 * 32000 * hidden * 2
        rows.append(f"| {name} | {stored / gib:.1f} GiB | {block / gib:.2f} GiB | {wanda / 2**20:.2f} MiB | "
                    f"{(hessians + work) / gib:.2f} GiB | {(stored + block + wanda) / gib:.1f} GiB | "
                    f"{(stored + block + hessians + work) / gib:.1f} GiB | {whole / gib:.0f} GiB |")
    return "\n".join(rows)


def _load(path, where: str, offload: str):
    import torch
    from accelerate.hooks import attach_align_device_hook
    from transformers import AutoModelForCausalLM

    if where == "disk":
        config = AutoModelForCausalLM.from_pretrained(path).config
        device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
                      **{f"model.layers.{i}": "disk" for i in range(config.num_hidden_layers)}}
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map=device_map,
                                                    offload_folder=offload)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if where == "cpu":
        for layer in model.model.layers:
            state = {n: p.to("cpu") for n, p in layer.state_dict().items()}
            attach_align_device_hook(layer, execution_device=torch.device("cpu"), offload=True, weights_map=state)
    return model.eval()


def offload_speed(args) -> str:
    import torch
    from tiny import make_tiny_model_dir

    from kick_models import prune

    torch.set_num_threads(args.threads)
    tokens = torch.randint(0, 300, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-offload-") as tmp:
        path = make_tiny_model_dir(Path(tmp) / "model", family="llama", hidden=args.hidden, layers=args.layers,
                                   intermediate=int(args.hidden * 2.6875) // 8 * 8)
        for repeat in range(args.repeats):
            for method in args.methods.split(","):
                for where in ("plain", "cpu", "disk"):
                    with tempfile.TemporaryDirectory(prefix="offload-", dir=tmp) as offload:
                        model = _load(path, where, offload)
                        t0 = time.perf_counter()
                        prune(model, None, method=method, sparsity=0.5, calibration=tokens, progress=False)
                        times.setdefault((method, where), []).append(time.perf_counter() - t0)
                        del model
                print(f"[offload] repeat {repeat + 1}/{args.repeats} {method}: "
                      + ", ".join(f"{w} {times[(method, w)][-1]:.2f}s" for w in ("plain", "cpu", "disk")),
                      file=sys.stderr)
    params = args.layers * (4 * args.hidden**2 + 3 * args.hidden * (int(args.hidden * 2.6875) // 8 * 8))
    rows = [f"Model: random llama, hidden {args.hidden}, {args.layers} blocks (~{params / 1e6:.0f} M block "
            f"parameters, float32), {args.nsamples} x {args.seqlen} calibration tokens, {args.threads} thread(s), "
            f"median of {args.repeats}.", "",
            "| method | plain | blocks offloaded to CPU RAM | blocks offloaded to disk |", "|---|---|---|---|"]
    for method in args.methods.split(","):
        plain = statistics.median(times[(method, "plain")])
        cells = [f"{plain:.2f} s"]
        for where in ("cpu", "disk"):
            med = statistics.median(times[(method, where)])
            cells.append(f"{med:.2f} s ({med / plain:.2f}x)")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print("Memory per method (128 x 2048 calibration tokens, bf16):\n")
    print(memory_table())
    if not args.memory_only:
        print("\nOffload speed:\n")
        print(offload_speed(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
