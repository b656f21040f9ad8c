"""``kick sweep --executor local --jobs N`` and ``--executor ray``: configs at once, on a real Ray cluster on
127.0.0.1, with the same files as today's one-config-at-a-time sweep (slow: real lm_eval runs)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_analysis_e2e import _env, tiny_tasks  # noqa: F401  (module fixture: tiny_mc task + calibration text)

SLUGS = ["dense", "wanda-s50"]


def sweep_cmd(model: Path, out: Path, tasks: Path, *extra: str) -> list[str]:
    """A 2-config sweep (dense + Wanda 50%) on the tiny multiple-choice task."""
    return [sys.executable, "-m", "kick_analysis.cli", "sweep", "--model", str(model), "--output", str(out),
            "--methods", "wanda", "--sparsity", "0.5", "--calib", str(tasks / "calib.txt"),
            "--nsamples", "2", "--seqlen", "32", "--tasks", "tiny_mc", "--include_path", str(tasks),
            "--limit", "6", "--device", "cpu", *extra]


def run_sweep(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def signature(out: Path) -> dict:
    """Per config, read straight from lm-eval's files: metrics, measured sparsity, per-document scores."""
    sig = {}
    for slug in SLUGS:
        results = list((out / slug).rglob("results_*.json"))
        samples = list((out / slug).rglob("samples_tiny_mc_*.jsonl"))
        assert len(results) == 1 and len(samples) == 1, (slug, results, samples)
        data = json.loads(results[0].read_text())
        metrics = {k: v for k, v in data["results"]["tiny_mc"].items() if not k.startswith("alias")}
        comp = data["config"].get("kick_compression") or {}
        docs = sorted((s["doc_id"], s["acc"], json.dumps(s["filtered_resps"]))
                      for s in map(json.loads, samples[0].read_text().splitlines()))
        sig[slug] = {"metrics": metrics, "measured_sparsity": comp.get("measured_sparsity"),
                     "block_sparsity": comp.get("block_sparsity_per_block"), "docs": docs}
    assert sig["wanda-s50"]["measured_sparsity"] == pytest.approx(0.5, abs=0.02)
    return sig


def manifest(out: Path) -> dict:
    return {c["slug"]: c for c in json.loads((out / "sweep.json").read_text())["configs"]}


@pytest.fixture(scope="module")
def one_at_a_time(tiny_llama_dir, tiny_tasks, tmp_path_factory) -> Path:  # noqa: F811
    """The reference: today's executor (local, one config after another)."""
    tasks = tiny_tasks
    out = tmp_path_factory.mktemp("sweep-jobs1") / "sweep"
    proc = run_sweep(sweep_cmd(tiny_llama_dir, out, tasks))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = manifest(out)
    assert m["dense"]["end_time"] <= m["wanda-s50"]["start_time"]  # one after the other
    return out


@pytest.mark.slow
def test_jobs_2_runs_configs_at_once_with_identical_results(tiny_llama_dir, tiny_tasks, one_at_a_time, tmp_path):
    out = tmp_path / "sweep"
    proc = run_sweep(sweep_cmd(tiny_llama_dir, out, tiny_tasks, "--jobs", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "local, 2 jobs x 1 CPU thread(s)" in proc.stderr  # 2 cores split between the 2 jobs
    m = manifest(out)
    starts = [m[s]["start_time"] for s in SLUGS]
    ends = [m[s]["end_time"] for s in SLUGS]
    assert max(starts) < min(ends), m  # the two configs overlapped in time
    assert signature(out) == signature(one_at_a_time)
    # progress: a running config's stage is shown on the terminal, not only in lm_eval.log
    assert re.search(r"\| (dense|wanda-s50): (loading model|calibrating layer \d+/2|scoring \d+/\d+|"
                     r"preparing requests \d+/\d+|compressing|loading tasks|building requests|starting)",
                     proc.stderr), proc.stderr[-2000:]

    again = run_sweep(sweep_cmd(tiny_llama_dir, out, tiny_tasks, "--jobs", "2"), timeout=300)
    assert again.returncode == 0 and "(2 already done, skipped)" in again.stderr


def test_bad_executor_options_fail_before_anything_runs(tiny_llama_dir, tiny_tasks, tmp_path, capsys):
    from kick_analysis import sweep

    base = ["--model", str(tiny_llama_dir), "--output", str(tmp_path / "s"), "--include_path", str(tiny_tasks),
            "--tasks", "tiny_mc", "--sparsity", "0.5"]
    cases = {
        "jobs 0": (["--jobs", "0"], "--jobs 0: must be >= 1"),
        "negative retries": (["--retries", "-1"], "--retries -1"),
        "address without ray": (["--address", "127.0.0.1:6379"], "--address is an option of --executor ray"),
        "cpus per config without ray": (["--cpus-per-config", "2"], "option of --executor ray"),
        "gpus on a CPU machine": (["--jobs", "2", "--gpus-per-config", "1"], "needs 2 GPU(s); this machine shows 0"),
        "jobs with ray": (["--executor", "ray", "--jobs", "2"], "--jobs is an option of --executor local"),
        "gpus with --device cpu": (["--device", "cpu", "--gpus-per-config", "1"], "use --device cuda"),
    }
    for name, (extra, msg) in cases.items():
        assert sweep.main(base + extra) == 2, name
        assert msg in capsys.readouterr().err, name
    assert not (tmp_path / "s").exists()  # nothing ran


def test_a_worker_that_cannot_see_the_output_folder_fails_the_config_clearly(tmp_path):
    from kick_analysis.sweep_executors import ConfigJob, run_config_job, write_token

    out = tmp_path / "out"
    token = write_token(out, None)
    ok = ConfigJob("c", (sys.executable, "-c", "pass"), str(out), token)
    elsewhere = ConfigJob("c", (sys.executable, "-c", "pass"), str(tmp_path / "not-mounted-here"), token)
    stale = ConfigJob("c", (sys.executable, "-c", "pass"), str(out), "another-run")
    for job in (elsewhere, stale):
        outcome = run_config_job(job)
        assert outcome.status == "failed" and "cannot see the sweep's output folder" in outcome.error
        assert "docs/scale-out.md" in outcome.error
        assert not (Path(job.output) / "c").exists()  # nothing was run
    # a visible folder runs the child (which writes no results here, so the config fails for that reason)
    outcome = run_config_job(ok)
    assert outcome.status == "failed" and outcome.error == "no results_*.json written" and outcome.returncode == 0
    assert (out / "c" / "lm_eval.log").is_file()
    cache = tmp_path / "cache"
    unseen_cache = ConfigJob("c", (sys.executable, "-c", "pass"), str(out), token, cache_dir=str(cache))
    assert "cannot see the sweep's compression cache" in run_config_job(unseen_cache).error


def _killing_jobs(tmp_path: Path):
    """Two fake configs: one whose child always dies by SIGKILL, one killed once then exiting with code 3."""
    from kick_analysis.sweep_executors import ConfigJob, Progress, write_token

    out = tmp_path / "out"
    token = write_token(out, None)
    script = (f"import os, pathlib, signal; m = pathlib.Path({str(tmp_path / 'marker')!r}); "
              "print('child says hi', flush=True)\n"
              "if not m.exists(): m.touch(); os.kill(os.getpid(), signal.SIGKILL)\n"
              "raise SystemExit(3)")
    jobs = [ConfigJob("always-killed", (sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"), str(out), token),
            ConfigJob("killed-once", (sys.executable, "-c", script), str(out), token)]
    return out, jobs, Progress(out, token, total=2, done_before=0)


def _check_killed(outcomes: dict, out: Path) -> None:
    a, b = outcomes["always-killed"], outcomes["killed-once"]
    assert a.status == "failed" and a.attempt == 2 and a.returncode == -9, a
    assert "killed by signal 9 (SIGKILL)" in a.error and "gave up after 2 attempt(s)" in a.error
    assert b.status == "failed" and b.attempt == 2 and b.returncode == 3 and b.error == "exit code 3", b
    assert "child says hi" in (out / "killed-once" / "lm_eval.log").read_text()


def test_a_killed_child_is_retried_then_failed_with_its_log(tmp_path):
    """The OOM-killer case: the lm_eval child dies by a signal -> another attempt, then 'failed' with the log."""
    from kick_analysis.sweep_executors import LocalExecutor

    out, jobs, progress = _killing_jobs(tmp_path)
    outcomes = {}
    LocalExecutor(jobs=2, retries=1).run(jobs, lambda o: outcomes.setdefault(o.slug, o), progress)
    progress.close()
    _check_killed(outcomes, out)

def test_executor_ray_without_ray_says_how_to_install(tiny_llama_dir, tiny_tasks, tmp_path):  # noqa: F811
    """Ray made unimportable in a real ``kick sweep`` process: the error names the extra, nothing runs."""
    code = ("import sys; sys.modules['ray'] = None\n"  # `import ray` now raises ImportError
            "from kick_analysis.sweep import main\n"
            "sys.exit(main(sys.argv[1:]))")
    argv = sweep_cmd(tiny_llama_dir, tmp_path / "s", tiny_tasks, "--executor", "ray")[4:]
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'kick-eval[ray]'" in proc.stderr
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on 127.0.0.1 (2 CPUs), started here and stopped at the end."""
    ray = pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ray_sweep_equals_local_survives_a_killed_worker_and_resumes(
        tiny_llama_dir, tiny_tasks, one_at_a_time, ray_cluster, tmp_path):  # noqa: F811
    from kick_analysis.sweep_executors import read_attempts

    out = tmp_path / "sweep"
    cmd = sweep_cmd(tiny_llama_dir, out, tiny_tasks, "--executor", "ray", "--address", ray_cluster, "--retries", "2")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = "wanda-s50"
    try:
        # wait until the victim's lm_eval child is under way, then SIGKILL the Ray worker running it
        deadline = time.time() + 300
        token = None
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            token_file = out / ".kick_sweep" / "token"
            token = token or (token_file.read_text().strip() if token_file.is_file() else None)
            log = out / victim / "lm_eval.log"
            if token and read_attempts(out, victim, token) and log.is_file() and len(log.read_text()) > 2000:
                break
            time.sleep(0.5)
        first = read_attempts(out, victim, token)
        assert len(first) == 1, first
        worker = first[0]["pid"]
        assert worker != proc.pid and _pid_alive(worker)
        os.kill(worker, signal.SIGKILL)
        log_text = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log_text[-4000:]
    attempts = read_attempts(out, victim, token)
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[1]["pid"] != worker, attempts
    m = manifest(out)
    assert m[victim]["status"] == "done" and m[victim]["attempts"] == 2
    assert m["dense"]["status"] == "done" and m["dense"]["attempts"] == 1
    assert "(attempt 2)" in log_text
    # the same files as the local executor: same metrics, measured sparsity and per-document scores
    assert signature(out) == signature(one_at_a_time)

    again = run_sweep(cmd, timeout=300)  # rerun: both configs skipped, nothing submitted
    assert again.returncode == 0 and "(2 already done, skipped)" in again.stderr, again.stderr[-3000:]
    assert all(not read_attempts(out, s, (out / ".kick_sweep" / "token").read_text().strip()) for s in SLUGS)


GATED_UTILS = """import pathlib, os, time

def wait_at_the_gate(dataset):
    # Tell the test this lm_eval child is under way, then wait (never released: the test interrupts).
    (pathlib.Path({gate!r}) / f"started-{{os.getpid()}}").touch()
    deadline = time.time() + 600
    while time.time() < deadline and not (pathlib.Path({gate!r}) / "release").exists():
        time.sleep(0.2)
    return dataset
"""


@pytest.fixture()
def gated_tasks(tiny_tasks, tmp_path):  # noqa: F811
    """``tiny_mc`` whose every lm_eval child signals when it loads its documents, then waits for a release file
    (interrupt tests wait for the children's signal instead of racing a timer)."""
    tasks, gate = tmp_path / "gated_tasks", tmp_path / "gate"
    tasks.mkdir()
    gate.mkdir()
    (tasks / "gate_utils.py").write_text(GATED_UTILS.format(gate=str(gate)))
    (tasks / "tiny_mc.yaml").write_text((tiny_tasks / "tiny_mc.yaml").read_text()
                                        + "process_docs: !function gate_utils.wait_at_the_gate\n")
    (tasks / "calib.txt").symlink_to(tiny_tasks / "calib.txt")
    yield tasks, gate
    (gate / "release").touch()  # after the test's checks: a child that survived a failed test ends on its own


@pytest.mark.slow
def test_ray_ctrl_c_cancels_the_tasks(tiny_llama_dir, gated_tasks, ray_cluster, tmp_path):
    from kick_analysis.sweep_executors import read_attempts

    tasks, gate = gated_tasks
    out = tmp_path / "sweep"
    cmd = sweep_cmd(tiny_llama_dir, out, tasks, "--executor", "ray", "--address", ray_cluster)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # wait for an lm_eval child's signal (it then waits at the gate: no config can finish); the deadline is
        # only a failsafe for a hung start-up, generous for a loaded machine
        deadline = time.time() + 900
        while time.time() < deadline and not list(gate.glob("started-*")):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        assert list(gate.glob("started-*")), "no lm_eval child started in 900 s"
        proc.send_signal(signal.SIGINT)
        text = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in text, text[-3000:]
    token = (out / ".kick_sweep" / "token").read_text().strip()
    workers = [a["pid"] for s in SLUGS for a in read_attempts(out, s, token)]
    children = [int(p.name.split("-")[1]) for p in gate.glob("started-*")]  # every child that ever started
    assert workers and children
    deadline = time.time() + 120
    while time.time() < deadline and any(_pid_alive(p) for p in workers + children):
        time.sleep(0.5)
    # the Ray workers and their lm_eval children are gone (killed: the gate opens only after the test)
    assert not any(_pid_alive(p) for p in workers + children), (workers, children)
    assert {c["status"] for c in manifest(out).values()} == {"interrupted"}  # none could finish


def test_ray_retries_a_killed_child_then_fails_it_with_its_log(ray_cluster, tmp_path):
    """On Ray too, a child killed by a signal (the OOM-killer case) is another attempt; an exit code is final."""
    from kick_analysis.sweep_executors import RayExecutor

    out, jobs, progress = _killing_jobs(tmp_path)
    outcomes = {}
    RayExecutor(address=ray_cluster, retries=1).run(jobs, lambda o: outcomes.setdefault(o.slug, o), progress)
    progress.close()
    _check_killed(outcomes, out)


def test_stage_times_read_the_progress_bars_of_a_log(tmp_path):
    """Seconds per stage from a config's lm_eval.log: each bar's last elapsed time; repeated bars add up."""
    from kick_analysis.sweep_executors import stage_times

    log = tmp_path / "lm_eval.log"
    log.write_text(
        "2026-01-01 INFO Selected Tasks: ['kick_factoid_qa']\n"
        "Loading weights:   0%|          | 0/272 [00:00<?, ?it/s]\rLoading weights: 100%|##########| 272/272 [00:04<00:00]\n"
        "wanda:   0%|          | 0/30 [00:00<?, ?layer/s]\rwanda:  50%|#####     | 15/30 [00:20<00:20]\r"
        "wanda: 100%|##########| 30/30 [00:41<00:00]\n"
        "Running generate_until requests: 100%|##########| 100/100 [01:02<00:00,  1.61it/s]\n"
        "Running loglikelihood_rolling requests:   0%|   | 0/50 [00:00<?, ?it/s]\r"
        "Running loglikelihood_rolling requests: 100%|###| 50/50 [00:30<00:00]\n"
        "Running loglikelihood_rolling requests:   0%|   | 0/50 [00:00<?, ?it/s]\r"
        "Running loglikelihood_rolling requests: 100%|###| 50/50 [00:10<00:00]\n")
    assert stage_times(log) == {"loading model": 4.0, "calibrating layer": 41.0, "generating": 62.0,
                                "perplexity windows": 40.0}
    log.write_text("Running generate_until requests: 100%|###| 9/9 [1:00:10<00:00]\n")
    assert stage_times(log) == {"generating": 3610.0}
    assert stage_times(tmp_path / "missing.log") == {}
