"""Cheap checks of the benchmark suite's own logic (the benchmarks themselves run via benchmarks/run_all.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_scaling  # noqa: E402
import bench_vs_llmcompressor  # noqa: E402
from common import linear_fit  # noqa: E402


def test_linear_fit_recovers_a_line_and_r2_drops_with_noise():
    slope, intercept, r2 = linear_fit([1, 2, 3, 4], [3, 5, 7, 9])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(1.0) and r2 == pytest.approx(1.0)
    _, _, r2_noisy = linear_fit([1, 2, 3, 4], [3, 9, 4, 8])
    assert r2_noisy < 0.5


def test_mask_agreement_counts_identical_positions_and_refuses_different_layers():
    a = {"x": torch.tensor([[True, False], [False, True]]), "y": torch.tensor([True, True])}
    b = {"x": torch.tensor([[True, True], [False, True]]), "y": torch.tensor([True, True])}
    assert bench_vs_llmcompressor.mask_agreement(a, b) == pytest.approx(5 / 6)
    with pytest.raises(RuntimeError, match="different Linears"):
        bench_vs_llmcompressor.mask_agreement(a, {"x": b["x"]})


def test_block_flops_scale_with_tokens_and_sparsegpt_costs_more_than_wanda():
    shape = bench_scaling.SHAPES["LLaMA-7B"][1:]
    w1 = bench_scaling.block_flops(*shape, tokens=1000, seqlen=500, method="wanda")
    w2 = bench_scaling.block_flops(*shape, tokens=2000, seqlen=500, method="wanda")
    assert w2 == pytest.approx(2 * w1)
    assert bench_scaling.block_flops(*shape, tokens=1000, seqlen=500, method="sparsegpt") > w1


def test_paper_loop_scores_continuation_with_the_task_metric(tiny_llama_dir, data_dir, tmp_path):
    """The baseline loop runs end to end and scores with kick_tasks.freebaseqa.score on the continuation."""
    from kick_tasks.freebaseqa import load_split, score

    out = tmp_path / "paper.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "workers" / "paper_loop.py"), "--model",
                           str(tiny_llama_dir), "--n", "3", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = json.loads(out.read_text())
    docs = load_split("eval")[:3]
    assert summary["n"] == 3 and [r["question_id"] for r in rows] == [d["question_id"] for d in docs]
    for row, doc in zip(rows, docs):
        assert "Please give answer" not in row["continuation"]  # the prompt is not scored (paper bug 5)
        assert row["first_line"] == row["continuation"].split("\n", 1)[0]
        assert row["contains_em"] == score(row["first_line"], doc["aliases"])["contains_em"]
        assert row["paper_contains"] == score(row["continuation"], doc["aliases"])["contains_em"]


def test_gpu_script_runs_on_cpu_with_tiny_shapes(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_llama7b.py"), "--tiny", "--layers", "2",
                           "--nsamples", "2", "--seqlen", "32", "--methods", "wanda,gptq", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(out.read_text())
    assert info["layers_built"] == 2 and set(info["methods"]) == {"wanda", "gptq"}
    wanda = info["methods"]["wanda"]
    assert wanda["measured_sparsity"] == pytest.approx(0.5)
    assert len(wanda["per_block_seconds"]) == 2 and all(s >= 0 for s in wanda["per_block_seconds"])
    assert info["methods"]["gptq"]["bits_per_weight"] > 4
    offload = info["cases"]["offload"]["wanda"]  # host memory per block of the offloaded placement (issue 27)
    assert len(offload["peak_rss_anon_per_block_mib"]) == 2 and min(offload["peak_rss_anon_per_block_mib"]) > 0
    assert offload["peak_rss_anon_mib"] >= max(offload["peak_rss_anon_per_block_mib"])
