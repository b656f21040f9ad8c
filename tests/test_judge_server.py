"""The judge against real HTTP servers: transformers serve (tiny model), a fake-verdict server, faults."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.judge.helpers import (clean_env, files_containing, free_port, start_fake, start_transformers_serve, stop,
                           write_samples)

pytestmark = pytest.mark.server

SECRET = "sk-kick-test-SECRET-0123456789"


@pytest.fixture(scope="module")
def tiny_serve(tiny_judge_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = start_transformers_serve(tiny_judge_dir, port, log)
    yield f"http://127.0.0.1:{port}/v1", log
    stop(proc)


@pytest.fixture(scope="module")
def summary_docs(data_dir):
    from kick_tasks.summarization import load_bucket

    return load_bucket("small")[:3]


def _judge_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _summary(folder: Path, task: str) -> dict:
    files = sorted(folder.glob(f"judged_{task}_*.summary.json"))
    assert files, f"no summary for {task} in {folder}"
    return json.loads(files[-1].read_text())


def test_http_judge_through_transformers_serve(tiny_serve, tiny_judge_dir, tmp_path):
    from kick_tasks.judge.protocols import PairwiseFourCriteria, SingleGrade
    from kick_tasks.judge.runner import Judge, judge_items
    from kick_tasks.judge.settings import settings_from

    base_url, log = tiny_serve
    settings = settings_from(None, environ={}, base_url=base_url, model=str(tiny_judge_dir), max_tokens=8,
                             cache=str(tmp_path / "c.sqlite"), concurrency=2)
    judge = Judge(settings)
    items = [{"question": "Summarize: the cat sat.", "answer": "A cat sat.", "reference": "Cat sits."},
             {"question": "Why is the sky blue?", "answer": "Rayleigh scattering.", "reference": "Scattering."}]
    protocols = [(PairwiseFourCriteria(), SingleGrade())] * 2
    replies: list = []
    metrics = judge_items(judge, items, protocols, progress=False, replies_out=replies)
    assert all(isinstance(r, str) for per_item in replies for r in per_item)  # real completions came back
    assert [len(r) for r in replies] == [3, 3]
    for m in metrics:  # a random tiny model's verdicts are garbage: counted, never a crash
        assert 0.0 <= m["judge_invalid_rate"] <= 1.0 and "judge4c_score" in m and "judge_rating" in m
    assert judge.stats["backend_requests"] == 6
    posts = log.read_text().count("POST /v1/chat/completions")
    again = judge_items(judge, items, protocols, progress=False)
    assert judge.stats["backend_requests"] == 6 and judge.stats["cache_hits"] == 6
    assert log.read_text().count("POST /v1/chat/completions") == posts  # nothing re-sent
    assert json.dumps(again, sort_keys=True) == json.dumps(metrics, sort_keys=True)


def test_in_process_hf_backend(tiny_llama_dir, tmp_path):
    from kick_tasks.judge.protocols import SingleGrade
    from kick_tasks.judge.runner import Judge, judge_items
    from kick_tasks.judge.settings import settings_from

    settings = settings_from(None, environ={}, backend="hf", model=str(tiny_llama_dir), max_tokens=8,
                             cache=str(tmp_path / "c.sqlite"))
    judge = Judge(settings)
    replies: list = []
    metrics = judge_items(judge, [{"question": "Why?", "answer": "Because."}], [(SingleGrade(),)], progress=False,
                          replies_out=replies)
    assert isinstance(replies[0][0], str) and len(replies[0][0]) > 0
    assert metrics[0]["judge_invalid_rate"] in (0.0, 1.0)
    assert judge.stats["backend_requests"] == 1


def test_garbage_verdicts_are_counted_invalid(summary_docs, tmp_path):
    port = free_port()
    proc = start_fake(port, mode="garbage")
    try:
        samples = write_samples(tmp_path / "samples_kicksum_small_2026-01-01T00-00-00.000001.jsonl",
                                summary_docs, ["A short summary.", "", "Another one."])
        result = _judge_cli([str(samples), "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "fake",
                             "--cache", str(tmp_path / "c.sqlite")], clean_env())
    finally:
        stop(proc)
    assert result.returncode == 0, result.stderr
    summary = _summary(tmp_path, "kicksum_small")
    assert summary["n_samples"] == 3 and summary["metrics"]["judge_invalid_rate"] == 1.0
    assert summary["metrics"]["judge_score"] is None  # NaN -> null in JSON
    assert summary["backend_requests"] == 3            # the paper's protocol: one order, one request per summary
    assert summary["judge_calls"] == 3 and summary["invalid_verdicts"] == 3


def test_wrong_api_key_is_a_clear_error(summary_docs, tmp_path):
    port = free_port()
    proc = start_fake(port, expected_key="the-right-key")
    try:
        samples = write_samples(tmp_path / "samples_kicksum_small_2026-01-01T00-00-00.000001.jsonl",
                                summary_docs[:1], ["x"])
        env = clean_env(MY_JUDGE_KEY=SECRET)
        result = _judge_cli([str(samples), "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "fake",
                             "--api-key-env", "MY_JUDGE_KEY", "--cache", str(tmp_path / "c.sqlite")], env)
        from kick_tasks.judge.errors import JudgeAuthError
        from kick_tasks.judge.session import configure

        import os
        os.environ["MY_JUDGE_KEY"] = SECRET
        try:
            with pytest.raises(JudgeAuthError, match="MY_JUDGE_KEY"):  # lm-eval path: fails before generation
                configure({"judge_base_url": f"http://127.0.0.1:{port}/v1", "judge_model": "fake",
                           "judge_api_key_env": "MY_JUDGE_KEY"})
        finally:
            del os.environ["MY_JUDGE_KEY"]
    finally:
        stop(proc)
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr and "$MY_JUDGE_KEY" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert not list(tmp_path.glob("judged_*"))


def test_retries_with_backoff_on_429_and_5xx(summary_docs, tmp_path):
    samples = write_samples(tmp_path / "samples_kicksum_small_2026-01-01T00-00-00.000001.jsonl",
                            summary_docs[:2], ["one", "two"])
    env = clean_env(KICK_JUDGE_BACKOFF="0.05")
    results = {}
    for retries in (3, 1):
        port = free_port()
        log = tmp_path / f"requests{retries}.log"
        proc = start_fake(port, log=log, fail_first=2)   # each prompt: 503, 429, then a verdict
        try:
            results[retries] = _judge_cli([str(samples), "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "fake",
                                           "--retries", str(retries), "--cache", str(tmp_path / f"{retries}.sqlite"),
                                           "--output-dir", str(tmp_path / f"out{retries}")], env)
        finally:
            stop(proc)
        if retries == 3:
            hits = log.read_text().splitlines()
            assert len(hits) == 6 and len(set(hits)) == 2 and all(hits.count(h) == 3 for h in set(hits))
    assert results[3].returncode == 0, results[3].stderr
    summary = _summary(tmp_path / "out3", "kicksum_small")
    assert summary["metrics"]["judge_invalid_rate"] == 0.0
    assert summary["backend_requests"] == 6            # 2 prompts x (503, 429, 200)
    assert results[1].returncode == 1 and "HTTP 429 after 1 retries" in results[1].stderr


def test_unreachable_endpoint_is_a_clear_error(summary_docs, tmp_path):
    samples = write_samples(tmp_path / "samples_kicksum_small_2026-01-01T00-00-00.000001.jsonl", summary_docs[:1], ["x"])
    result = _judge_cli([str(samples), "--base-url", f"http://127.0.0.1:{free_port()}/v1", "--model", "m",
                         "--cache", str(tmp_path / "c.sqlite")], clean_env())
    assert result.returncode == 1 and "unreachable" in result.stderr


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        return sqlite3.connect(path, timeout=1).execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_server_killed_mid_run_then_resumed(summary_docs, tmp_path):
    """Kill the judge server mid-run; after a restart the rerun re-sends only uncached prompts."""
    from kick_tasks.summarization import load_bucket

    stories = load_bucket("mid")    # 12 judge requests (the paper's protocol: one per summary), stories reused
    docs = [dict(stories[i % len(stories)], question_id=1000 + i) for i in range(12)]
    samples = write_samples(tmp_path / "samples_kicksum_mid_2026-01-01T00-00-00.000001.jsonl", docs,
                            [f"Summary number {i}." for i in range(12)])
    port = free_port()
    cache = tmp_path / "cache" / "judge.sqlite"
    log1, log2, log3 = (tmp_path / f"requests{i}.log" for i in (1, 2, 3))
    env = clean_env(OPENAI_API_KEY=SECRET, KICK_JUDGE_BACKOFF="0.05")
    args = [str(samples), "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "fake", "--concurrency", "2",
            "--retries", "1", "--cache", str(cache), "--output-dir", str(tmp_path / "run")]
    server = start_fake(port, delay=0.3, log=log1, expected_key=SECRET)
    run = subprocess.Popen([sys.executable, "-m", "kick_tasks.judge.cli", *args, "--no-progress"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while _rows(cache) < 4 and time.time() < deadline:
        time.sleep(0.05)
    stop(server, kill=True)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1, out + err
    assert "unreachable" in err and "rerun to resume" in err
    cached = _rows(cache)
    assert 4 <= cached < 12

    server = start_fake(port, delay=0.0, log=log2, expected_key=SECRET)
    try:
        resumed = subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", *args, "--no-progress"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        sent_after_restart = log2.read_text().splitlines()
        assert len(sent_after_restart) == 12 - cached          # cached prompts were not asked again
        first_run = set(log1.read_text().splitlines())
        resumed_summary = _summary(tmp_path / "run", "kicksum_mid")
        assert resumed_summary["backend_requests"] == 12 - cached and resumed_summary["cache_hits"] == cached

        stop(server)
        server = start_fake(port, delay=0.0, log=log3, expected_key=SECRET)
        fresh_args = [a if a != str(cache) else str(tmp_path / "fresh.sqlite") for a in args]
        fresh_args[fresh_args.index(str(tmp_path / "run"))] = str(tmp_path / "fresh")
        fresh = subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", *fresh_args, "--no-progress"], env=env,
                               capture_output=True, text=True, timeout=120)
        assert fresh.returncode == 0, fresh.stderr
    finally:
        stop(server)
    assert len(log3.read_text().splitlines()) == 12
    # before the kill + after the restart together cover exactly the uninterrupted run's 12 prompts
    assert first_run | set(sent_after_restart) == set(log3.read_text().splitlines())
    assert len(set(sent_after_restart)) == len(sent_after_restart)
    fresh_summary = _summary(tmp_path / "fresh", "kicksum_mid")
    assert fresh_summary["metrics"] == resumed_summary["metrics"]           # same scores
    assert not math.isnan(resumed_summary["metrics"]["judge_score"])
    assert resumed_summary["metrics"]["judge_invalid_rate"] == 0.0
    per_resumed = [json.loads(l) for l in Path(resumed_summary["per_sample_file"]).read_text().splitlines()]
    per_fresh = [json.loads(l) for l in Path(fresh_summary["per_sample_file"]).read_text().splitlines()]
    assert per_resumed == per_fresh
    assert files_containing(tmp_path, SECRET) == []                        # key in no output, cache or log

