"""End to end: the judged tasks through the real `lm_eval` CLI, then `kick mt-bench` and `kick judge`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.judge.helpers import clean_env, files_containing, free_port, start_fake, start_transformers_serve, stop

pytestmark = [pytest.mark.slow, pytest.mark.server]

TASKS = "kick_summ*,kick_instruction*,kick_mt*"   # wildcards, as users type them
SECRET = "sk-kick-e2e-SECRET-9876543210"
MY_TASKS = ("kick_summarization", "kicksum_small", "kicksum_mid", "kicksum_large", "kick_instruction_following",
            "kick_mt_bench")


def _lm_eval(model_dir: Path, out: Path, env: dict[str, str], tasks: str = TASKS) -> subprocess.CompletedProcess:
    cmd = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir}", "--tasks", tasks,
           "--limit", "2", "--gen_kwargs", "max_gen_toks=8", "--apply_chat_template",
           "--output_path", str(out), "--log_samples"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _results(out: Path) -> dict:
    files = sorted(out.rglob("results_*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text())["results"]


@pytest.fixture(scope="module")
def no_judge_run(tiny_llama_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("nojudge")
    result = _lm_eval(tiny_llama_dir, out, clean_env(KICK_DATA_DIR=str(data_dir)))
    return out, result


def test_no_judge_reports_judge_free_metrics(no_judge_run):
    out, result = no_judge_run
    results = _results(out)
    assert set(MY_TASKS) <= set(results) and not any(t.startswith("kick_mcr") for t in results)
    for task in ("kicksum_small", "kicksum_mid", "kicksum_large", "kick_summarization"):
        for metric in ("rouge1", "rouge2", "rougeL", "words", "empty_rate"):
            assert 0.0 <= results[task][f"{metric},none"] < 1e6
    for task in ("kick_instruction_following", "kick_mt_bench"):
        assert "words,none" in results[task] and "empty_rate,none" in results[task]
    assert not [k for t in MY_TASKS for k in results[t] if k.startswith("judge_")]
    assert "No LLM judge configured" in result.stderr + result.stdout
    samples = list(out.rglob("samples_*.jsonl"))
    assert len(samples) == 5
    first = json.loads(next(p for p in samples if "kicksum_small" in p.name).read_text().splitlines()[0])
    prompt = first["arguments"]["gen_args_0"]["arg_0"]
    assert "<|im_start|>user\nSummarize the given story" in prompt and "@highlight" not in prompt
    assert first["doc"]["highlights"][0] not in prompt or first["doc"]["highlights"][0] in first["doc"]["story"]


def test_local_server_as_judge_inside_lm_eval(tiny_llama_dir, tiny_judge_dir, data_dir, tmp_path):
    port = free_port()
    serve = start_transformers_serve(tiny_judge_dir, port, tmp_path / "serve.log")  # room for a judge prompt
    out = tmp_path / "out"
    try:
        env = clean_env(KICK_DATA_DIR=str(data_dir), KICK_JUDGE_BASE_URL=f"http://127.0.0.1:{port}/v1",
                        KICK_JUDGE_MODEL=str(tiny_judge_dir), KICK_JUDGE_MAX_TOKENS="8",
                        KICK_JUDGE_CACHE=str(tmp_path / "cache" / "judge.sqlite"), OPENAI_API_KEY=SECRET)
        # one bucket stands for the three (same code; keeps the CPU time of this test down)
        result = _lm_eval(tiny_llama_dir, out, env, tasks="kicksum_small,kick_instruction_following,kick_mt_bench")
    finally:
        stop(serve)
    results = _results(out)
    for task in ("kicksum_small", "kick_instruction_following"):
        for metric in ("judge_score", "judge_ref_score", "judge_invalid_rate"):
            assert f"{metric},none" in results[task]
        assert 0.0 <= results[task]["judge_invalid_rate,none"] <= 1.0
        assert not [k for k in results[task] if "debiased" in k or "robust" in k or "judge4c" in k]
    assert "judge_coherence,none" in results["kicksum_small"]
    assert "judge_rating,none" not in results["kick_instruction_following"]   # FastChat grading: opt-in there
    assert "judge_rating,none" in results["kick_mt_bench"] and "rouge1,none" in results["kicksum_small"]
    posts = (tmp_path / "serve.log").read_text().count("POST /v1/chat/completions")
    distinct = sqlite3.connect(tmp_path / "cache" / "judge.sqlite").execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
    # the paper's protocol: one request per summary and per Vicuna question; single grading per MT-Bench doc
    assert posts == distinct == 2 * 1 + 2 * 1 + 2 * 1
    assert files_containing(tmp_path, SECRET) == []
    assert SECRET not in result.stdout + result.stderr


def test_kick_judge_and_mt_bench_turn2(no_judge_run, tiny_llama_dir, data_dir, tmp_path):
    out, _ = no_judge_run
    turn1 = next(out.rglob("samples_kick_mt_bench_*.jsonl"))
    env = clean_env(KICK_DATA_DIR=str(data_dir))
    made = subprocess.run([sys.executable, "-m", "kick_tasks.mt_bench", "--samples", str(turn1), "--model", "hf",
                           "--model_args", f"pretrained={tiny_llama_dir}", "--apply_chat_template",
                           "--max_gen_toks", "8", "--output_dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    turn2 = Path(made.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in turn2.read_text().splitlines()]
    turn1_rows = [json.loads(line) for line in turn1.read_text().splitlines()]
    assert len(rows) == 2
    for row, first in zip(rows, turn1_rows):
        own = first["filtered_resps"][0]
        own = (own[0] if isinstance(own, list) else own).strip()  # lm-eval 0.5: a list of repeats per request
        context = row["arguments"]["gen_args_0"]["arg_0"]
        assert f"<|im_start|>assistant\n{own}<|im_end|>" in context        # its OWN turn-1 answer
        assert context.endswith(row["doc"]["turns"][1] + "<|im_end|>\n<|im_start|>assistant\n")
        assert row["doc"]["answers"][0] == own

    port = free_port()
    fake = start_fake(port, mode="wellformed")
    try:
        judged = subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", str(out), str(turn2),
                                 "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "fake-judge",
                                 "--cache", str(tmp_path / "c.sqlite"), "--output-dir", str(tmp_path / "judged")],
                                env=env, capture_output=True, text=True, timeout=300)
    finally:
        stop(fake)
    assert judged.returncode == 0, judged.stderr[-3000:]
    summaries = {json.loads(p.read_text())["task"]: json.loads(p.read_text())
                 for p in (tmp_path / "judged").glob("*.summary.json")}
    assert set(summaries) == {"kicksum_small", "kicksum_mid", "kicksum_large", "kick_instruction_following",
                              "kick_mt_bench", "kick_mt_bench_turn2"}
    for task in ("kicksum_small", "kick_instruction_following"):
        m = summaries[task]["metrics"]
        assert 1.0 <= m["judge_score"] <= 10.0 and m["judge_invalid_rate"] == 0.0
    m = summaries["kick_mt_bench_turn2"]["metrics"]
    assert m["mt_bench_score"] == pytest.approx((m["judge_rating_turn1"] + m["judge_rating_turn2"]) / 2)
    assert summaries["kick_mt_bench"]["metrics"]["judge_rating"] == m["judge_rating_turn1"]


def test_kick_judge_in_process_backend(no_judge_run, tiny_llama_dir, data_dir, tmp_path):
    out, _ = no_judge_run
    samples = next(out.rglob("samples_kick_instruction_following_*.jsonl"))
    result = subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", str(samples), "--backend", "hf",
                             "--model", str(tiny_llama_dir), "--max-tokens", "8", "--limit", "1",
                             "--cache", str(tmp_path / "c.sqlite"), "--output-dir", str(tmp_path)],
                            env=clean_env(KICK_DATA_DIR=str(data_dir)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(next(tmp_path.glob("*.summary.json")).read_text())
    assert summary["n_samples"] == 1 and summary["backend_requests"] == 1
    assert 0.0 <= summary["metrics"]["judge_invalid_rate"] <= 1.0
    assert "req" in result.stderr  # per-request progress bar


def test_kick_judge_reproduces_the_in_run_metrics(tiny_llama_dir, data_dir, tmp_path):
    """Judging during the lm-eval run and `kick judge` on its --log_samples give the same metrics; the same
    judge served again on another port answers from the cache; the run records its generation settings."""
    port, record = free_port(), tmp_path / "in_run.jsonl"
    fake = start_fake(port, record=record)
    out = tmp_path / "out"
    try:
        env = clean_env(KICK_DATA_DIR=str(data_dir), KICK_JUDGE_BASE_URL=f"http://127.0.0.1:{port}/v1",
                        KICK_JUDGE_MODEL="gpt-4", KICK_JUDGE_CACHE=str(tmp_path / "run.sqlite"),
                        XDG_CACHE_HOME=str(tmp_path / "xdg"))
        _lm_eval(tiny_llama_dir, out, env, tasks="kicksum_large,kick_instruction_following")
    finally:
        stop(fake)
    results = json.loads(sorted(out.rglob("results_*.json"))[0].read_text())
    for task in ("kicksum_large", "kick_instruction_following"):
        gen = results["configs"][task]["generation_kwargs"]
        assert gen["do_sample"] is False and gen["max_gen_toks"] == 8      # the settings used are recorded
    assert results["results"]["kicksum_large"]["truncated_rate,none"] == 1.0   # long stories, 512-token model
    samples = sorted(out.rglob("samples_*.jsonl"))
    first = json.loads(next(p for p in samples if "kicksum_large" in p.name).read_text().splitlines()[0])
    prompt = first["arguments"]["gen_args_0"]["arg_0"]
    assert first["doc"]["comparator"] == "highlights" and first["doc"]["truncated"] == 1.0
    assert "<|im_start|>user\nSummarize the given news in less than 150 words" in prompt  # instruction kept
    in_run = len(record.read_text().splitlines())
    assert in_run == 4

    port2, record2 = free_port(), tmp_path / "later.jsonl"
    fake = start_fake(port2, record=record2)
    try:
        env = clean_env(KICK_DATA_DIR=str(data_dir))
        fresh = subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", *map(str, samples), "--base-url",
                                f"http://127.0.0.1:{port2}/v1", "--model", "gpt-4", "--cache",
                                str(tmp_path / "fresh.sqlite"), "--output-dir", str(tmp_path / "fresh"), "--no-progress"],
                               env=env, capture_output=True, text=True, timeout=300)
        cached = subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", *map(str, samples), "--base-url",
                                 f"http://localhost:{port2}/v1", "--model", "gpt-4", "--cache",
                                 str(tmp_path / "run.sqlite"), "--output-dir", str(tmp_path / "cached"), "--no-progress"],
                                env=env, capture_output=True, text=True, timeout=300)
    finally:
        stop(fake)
    assert fresh.returncode == 0 and cached.returncode == 0, fresh.stderr[-2000:] + cached.stderr[-2000:]
    assert len(record2.read_text().splitlines()) == 4          # the fresh cache asked again; the run's cache did not
    for folder in ("fresh", "cached"):
        for summary_file in (tmp_path / folder).glob("*.summary.json"):
            summary = json.loads(summary_file.read_text())
            in_lm_eval = results["results"][summary["task"]]
            assert summary["metrics"], summary
            for metric, value in summary["metrics"].items():
                assert in_lm_eval[f"{metric},none"] == pytest.approx(value), (folder, summary["task"], metric)
            if folder == "cached":
                assert summary["backend_requests"] == 0 and summary["cache_hits"] == 2
