"""Host memory of an offloaded compression (issue 27): is it the budget + one block, flat over the blocks?

A random LLaMA of ~1.1 B parameters (hidden 2048, 22 blocks, intermediate 5632, vocab 32000, bf16; built once by
this script, 2.2 GB of safetensors) is loaded by lm-eval exactly as a user would on a CPU-only host,
``parallelize=True,max_cpu_memory=600MB,device=cpu`` (accelerate keeps what fits in 600 MB in RAM and offloads
the other blocks to disk), and evaluated on ``kick_wikitext_ppl --limit 2``:

* ``--model hf`` (dense, the same placement): the baseline;
* ``--model kick-pruned`` Wanda 50 % and SparseGPT 50 %, ``--model kick-gptq`` 4 bit / group 128 (calibrated on C4,
  as the others), cache off.

Each run is a fresh child process (:mod:`benchmarks.workers.offload_block_times`, lm-eval's own ``cli_evaluate``)
whose anonymous resident memory (``RssAnon`` of ``/proc/<pid>/status``) this script samples every 50 ms; the
child writes the time each decoder block's compression ended, which splits the samples per block. Printed per
run: peak RssAnon of the whole run, of the compression, per block, the least-squares slope of the per-block
peaks (MiB per block; goal < 2) and of the per-block floors (the lowest reading while a block is compressed: what
stays in RAM from block to block, without the block's transient working set), kick's own per-phase record
(``kick_compression.memory``), and the bound

    peak RssAnon <= dense peak (same placement: the modules kept in RAM, evaluation, fixed overhead)
                    + one block's working set (the block, its fp32 working copies, Hessians for SparseGPT/GPTQ,
                      stored calibration inputs and outputs)

with the working set computed from the shapes (:func:`kick_models.compress.memory.block_statistics_bytes`).

    python benchmarks/bench_offload_memory.py                      # ~20 min on 1 busy core
    python benchmarks/bench_offload_memory.py --runs hf,wanda      # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.common import CACHE_DIR, CHILD_ENV, THREADS, data_dir  # noqa: E402

SHAPE = dict(hidden=2048, layers=22, intermediate=5632, vocab=32000)
RUNS = {  # name -> (lm-eval model, extra model args)
    "hf": ("hf", ""),
    "wanda": ("kick-pruned", "method=wanda,sparsity=0.5,cache=false"),
    "sparsegpt": ("kick-pruned", "method=sparsegpt,sparsity=0.5,cache=false"),
    "gptq": ("kick-gptq", "wbits=4,groupsize=128,calib=c4,cache=false"),  # c4 as the pruning runs (their default)
}
MIB = 2**20


def build_model(path: Path) -> Path:
    """The random ~1.1 B LLaMA in bf16 (built once; the tokenizer is a small trained BPE, ids < 384)."""
    if (path / "model.safetensors").is_file():
        return path
    import torch
    from tiny import make_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["hidden"], intermediate_size=SHAPE["intermediate"],
                      num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["hidden"] // 64,
                      num_key_value_heads=SHAPE["hidden"] // 64 // 8, max_position_embeddings=2048,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".build-"))
    model.save_pretrained(tmp)
    make_tokenizer(384).save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def working_set(method: str, nsamples: int, seqlen: int) -> dict[str, float]:
    """One block's working set in MiB, from the shapes (meta device)."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from kick_models.compress.memory import block_statistics_bytes

    cfg = LlamaConfig(hidden_size=SHAPE["hidden"], intermediate_size=SHAPE["intermediate"],
                      num_attention_heads=SHAPE["hidden"] // 64, num_key_value_heads=SHAPE["hidden"] // 64 // 8)
    with torch.device("meta"):
        layer = LlamaDecoderLayer(cfg, 0).to(torch.bfloat16)
    hessians, widest, block = block_statistics_bytes(layer)
    stored = 2 * nsamples * seqlen * SHAPE["hidden"] * 2
    out = {"block": block / MIB, "fp32 work": widest / MIB, "calibration inputs+outputs": stored / MIB}
    if method in ("sparsegpt", "gptq"):
        out["Hessians"] = hessians / MIB
    return out


def sample(pid: int, samples: list[tuple[float, int]], done: threading.Event) -> None:
    while not done.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        samples.append((time.time(), int(line.split()[1]) * 1024))
        except OSError:
            pass
        done.wait(0.05)


def run(name: str, model_dir: Path, args, out_dir: Path) -> dict:
    model, extra = RUNS[name]
    calib = "" if name == "hf" else f",nsamples={args.nsamples},seqlen={args.seqlen}"
    model_args = (f"pretrained={model_dir},parallelize=True,max_cpu_memory={args.max_cpu_memory},dtype=bfloat16,"
                  f"{extra + ',' if extra else ''}{calib.lstrip(',')}").rstrip(",")
    blocks_file, results = out_dir / f"{name}.blocks", out_dir / f"{name}-results"
    cmd = [sys.executable, "-m", "benchmarks.workers.offload_block_times", str(blocks_file),
           "--model", model, "--model_args", model_args, "--tasks", "kick_wikitext_ppl", "--limit", "2",
           "--batch_size", "1", "--device", "cpu", "--output_path", str(results)]
    env = {**os.environ, **CHILD_ENV, "OMP_NUM_THREADS": str(THREADS), "KICK_DATA_DIR": str(data_dir()),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "KICK_OFFLOAD_DIR": str(out_dir)}
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    t0 = time.time()
    with open(out_dir / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=out_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        thread = threading.Thread(target=sample, args=(proc.pid, samples, done), daemon=True)
        thread.start()
        rc = proc.wait()
    done.set()
    thread.join()
    if rc:
        raise SystemExit(f"{name}: lm_eval exited with {rc}; see {out_dir / (name + '.log')}")
    record: dict = {"run": name, "seconds": round(time.time() - t0, 1),
                    "peak_rss_anon_mib": round(max(v for _, v in samples) / MIB, 1)}
    ends = [float(x.split()[1]) for x in blocks_file.read_text().split("\n") if x.strip()] if blocks_file.exists() else []
    if ends:
        starts = [json.loads(blocks_file.with_suffix(".start").read_text())["t"]] + ends[:-1]
        peaks = [max((v for t, v in samples if a <= t <= b), default=0) / MIB for a, b in zip(starts, ends)]
        # the lowest reading of each block: what stays in RAM across blocks, without the block's transient peak
        floors = [min((v for t, v in samples if a <= t <= b), default=0) / MIB for a, b in zip(starts, ends)]
        record["peak_per_block_mib"] = [round(p, 1) for p in peaks]
        record["floor_per_block_mib"] = [round(p, 1) for p in floors]
        record["compression_peak_rss_anon_mib"] = round(max(peaks), 1)
        record["slope_mib_per_block"] = round(_slope(peaks), 2)
        record["slope_mib_per_block_after_ram_blocks"] = round(_slope(peaks[args.ram_blocks:]), 2)
        record["floor_slope_mib_per_block_after_ram_blocks"] = round(_slope(floors[args.ram_blocks:]), 2)
        found = next(results.rglob("results_*.json"), None)
        if found:
            record["kick_memory"] = json.loads(found.read_text())["config"]["kick_compression"].get("memory")
    return record


def _slope(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(values) / n
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum((i - mx) ** 2 for i in range(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="hf,wanda,sparsegpt,gptq")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--max-cpu-memory", default="600MB")
    ap.add_argument("--ram-blocks", type=int, default=3,
                    help="blocks accelerate keeps in RAM under the budget (excluded from the second slope)")
    ap.add_argument("--json", default="", help="also write the records here")
    args = ap.parse_args(argv)
    model_dir = build_model(CACHE_DIR / "llama-1b-random")
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-offload-mem-", dir=CACHE_DIR) as tmp:
        for name in args.runs.split(","):
            record = run(name, model_dir, args, Path(tmp))
            if name != "hf":
                record["working_set_mib"] = {k: round(v, 1) for k, v in working_set(name, args.nsamples, args.seqlen).items()}
            records.append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
    dense = next((r["peak_rss_anon_mib"] for r in records if r["run"] == "hf"), None)
    print(f"Random LLaMA {SHAPE}, bf16, CPU, parallelize=True,max_cpu_memory={args.max_cpu_memory}, "
          f"{args.nsamples} x {args.seqlen} calibration tokens, {THREADS} thread(s).\n")
    print("| run | peak RssAnon (whole run) | compression peak | bound: dense + working set | slope MiB/block "
          "(all / disk blocks) | slope of the per-block floors, disk blocks | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        ws = sum(r.get("working_set_mib", {}).values())
        bound = f"{dense:.0f} + {ws:.0f} = {dense + ws:.0f} MiB" if dense is not None and r["run"] != "hf" else ""
        slope = (f"{r['slope_mib_per_block']} / {r['slope_mib_per_block_after_ram_blocks']}"
                 if "slope_mib_per_block" in r else "")
        comp = f"{r['compression_peak_rss_anon_mib']:.0f} MiB" if "compression_peak_rss_anon_mib" in r else ""
        floor = r.get("floor_slope_mib_per_block_after_ram_blocks", "")
        print(f"| {r['run']} | {r['peak_rss_anon_mib']:.0f} MiB | {comp} | {bound} | {slope} | {floor} | "
              f"{r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
