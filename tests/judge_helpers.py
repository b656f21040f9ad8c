"""Helpers for the judge tests: free ports, real server processes, clean environments."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

FAKE_SERVER = Path(__file__).parent / "fixtures" / "judge" / "fake_judge_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICK_JUDGE_") and k != "OPENAI_API_KEY"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not come up in {timeout}s")


def start_fake(port: int, mode: str = "wellformed", delay: float = 0.0, log: Path | None = None,
               expected_key: str | None = None) -> subprocess.Popen:
    env = clean_env()
    if expected_key:
        env["FAKE_JUDGE_EXPECTED_KEY"] = expected_key
    cmd = [sys.executable, str(FAKE_SERVER), "--port", str(port), "--mode", mode, "--delay", str(delay)]
    if log:
        cmd += ["--log", str(log)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/", proc, timeout=30)
    return proc


def start_transformers_serve(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    proc = subprocess.Popen(["transformers", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--log-level", "info"],
                            env=clean_env(), stdout=handle, stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
    return proc


def stop(proc: subprocess.Popen, kill: bool = False) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_samples(path: Path, task_docs: list[dict], answers: list[str]) -> Path:
    """A samples file in lm-eval's --log_samples format (the fields kick judge reads)."""
    with open(path, "w") as handle:
        for i, (doc, answer) in enumerate(zip(task_docs, answers)):
            handle.write(json.dumps({"doc_id": i, "doc": doc, "target": "", "arguments": [["prompt", {}]],
                                     "resps": [[answer]], "filtered_resps": [answer], "filter": "none"}) + "\n")
    return path


def files_containing(root: Path, needle: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(path)
    return hits
