"""`kick demo` (the README's main job) end to end, on a tiny random model instead of SmolLM2 (slow)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_the_sweep_and_the_report(tiny_llama_dir, tmp_path):
    data = Path(os.environ.get("KICK_DATA_DIR", ""))
    if not (data / "freebaseqa").is_dir() or not (data / "c4").is_dir():
        pytest.skip("needs the local FreebaseQA / WikiText-2 / C4 copies (KICK_DATA_DIR)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "kick_tasks.cli", "demo", "--pretrained", str(tiny_llama_dir), "--limit", "3",
           "--nsamples", "2", "--seqlen", "32", "--ppl_seqlen", "64", "--max_gen_toks", "4", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"data from {data}" in proc.stdout
    for slug in ("dense", "wanda-s50"):
        assert list((out / "sweep" / slug).rglob("results_*.json")), slug
        assert list((out / "sweep" / slug).rglob("samples_kick_factoid_qa_*.jsonl")), slug
    report = out / "report"
    md = (report / "leaderboard.md").read_text()
    assert "| dense |" in md and "| wanda-s50 | 50% (" in md
    rows = list(csv.DictReader(open(report / "summary.csv")))
    assert {(r["config"], r["task"]) for r in rows} >= {("dense", "kick_factoid_qa"), ("wanda-s50", "kick_wikitext_ppl")}
    assert (report / "report.html").stat().st_size > 1000
    assert list(report.glob("*.png"))
