"""End to end: the literal `lm_eval --model kick-*` / `kick eval` commands, results JSON, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED_DATA = ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.slow

MC_TASK = """task: kicktest_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture()
def env(tmp_path):
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             KICK_CACHE_DIR=str(tmp_path / "kick-cache"), OMP_NUM_THREADS="1")
    if SHARED_DATA.is_dir():
        e.setdefault("KICK_DATA_DIR", str(SHARED_DATA))
    return e


@pytest.fixture()
def task_args(tmp_path):
    """The kick factoid task when its data is here (no --include_path), else a tiny local task."""
    # --device cpu: lm-eval before 0.4.13 defaults HF models to cuda even without a GPU (the oldest CI stack).
    if SHARED_DATA.is_dir():
        return ["--tasks", "kick_factoid_qa", "--device", "cpu"]
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = folder / "data.jsonl"
    rows = [{"question": "The capital of France is", "choices": [" Paris", " Rome"], "answer": 0},
            {"question": "The quick brown fox", "choices": [" jumps", " sleeps"], "answer": 0}] * 2
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "kicktest_mc.yaml").write_text(MC_TASK.format(data=data))
    return ["--tasks", "kicktest_mc", "--include_path", str(folder), "--device", "cpu"]


def _run(cmd: list[str], env: dict, timeout: int = 300) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=env.get("KICK_TEST_CWD"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _results(out_dir: Path) -> dict:
    files = sorted(out_dir.rglob("results_*.json"))
    assert files, f"no results JSON under {out_dir}"
    return json.loads(files[-1].read_text())


def test_lm_eval_kick_pruned_wanda_writes_measured_sparsity(tiny_llama_dir, calib_txt, task_args, env, tmp_path):
    out = tmp_path / "out"
    _run([str(BIN / "lm_eval"), "--model", "kick-pruned", "--model_args",
          f"pretrained={tiny_llama_dir},method=wanda,sparsity=0.5,calib={calib_txt},nsamples=4,seqlen=64",
          *task_args, "--limit", "4", "--output_path", str(out)], env)
    info = _results(out)["config"]["kick_compression"]
    assert info["model_class"] == "kick-pruned" and info["config"]["method"] == "wanda"
    assert info["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert info["block_sparsity"]["min"] == pytest.approx(0.5, abs=0.01)
    assert info["cache"]["status"] == "miss" and info["cache"]["dir"] == env["KICK_CACHE_DIR"]
    assert info["compression_seconds"] > 0


def test_kick_eval_gptq_writes_bits_per_weight(tiny_llama_dir, calib_txt, task_args, env, tmp_path):
    out = tmp_path / "out"
    _run([str(BIN / "kick"), "eval", "--model", "kick-gptq", "--model_args",
          f"pretrained={tiny_llama_dir},wbits=4,groupsize=32,calib={calib_txt},nsamples=4,seqlen=64",
          *task_args, "--limit", "4", "--output_path", str(out)], env)
    info = _results(out)["config"]["kick_compression"]
    assert info["config"]["method"] == "gptq" and info["config"]["wbits"] == 4 and info["config"]["groupsize"] == 32
    assert 4.0 < info["bits_per_weight"] < 5.5


def test_lm_eval_hf_still_works(tiny_llama_dir, task_args, env, tmp_path):
    out = tmp_path / "out"
    _run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={tiny_llama_dir}",
          *task_args, "--limit", "2", "--output_path", str(out)], env)
    assert "kick_compression" not in _results(out)["config"]


def test_two_processes_compress_once(tiny_llama_dir, calib_txt, task_args, env, tmp_path):
    """`accelerate launch` with 2 processes; on CPU accelerate needs --multi_gpu + ACCELERATE_USE_CPU=1
    (its --cpu flag alone starts one process unless mpirun is configured); the result is accelerate's
    MULTI_CPU mode with a gloo process group, i.e. the multi-GPU code path."""
    accelerate = BIN / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed")
    out = tmp_path / "out"
    env = dict(env, ACCELERATE_USE_CPU="1")
    log = _run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no",
                "-m", "lm_eval", "--model", "kick-pruned", "--model_args",
                f"pretrained={tiny_llama_dir},method=sparsegpt,sparsity=0.5,calib={calib_txt},nsamples=4,seqlen=64",
                *task_args, "--limit", "2", "--output_path", str(out)], env, timeout=400)
    assert log.count("kick: compressing") == 1, log[-4000:]
    assert log.count("kick: loaded compressed weights from cache") == 1, log[-4000:]
    entries = list((Path(env["KICK_CACHE_DIR"]) / "entries").iterdir())
    assert len(entries) == 1
    info = _results(out)["config"]["kick_compression"]
    assert info["processes"] == {"rank": 0, "world_size": 2, "coordination": "torch.distributed + file lock"}
    assert info["measured_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_two_processes_without_cache_compress_once(tiny_llama_dir, task_args, env, tmp_path):
    """torchrun, cache=false: a private temporary cache shared by the two processes, removed afterwards."""
    torchrun = BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = dict(env, TMPDIR=str(tmp))
    log = _run([str(torchrun), "--nproc_per_node", "2", "-m", "lm_eval", "--model", "kick-rtn", "--model_args",
                f"pretrained={tiny_llama_dir},wbits=4,groupsize=32,cache=false",
                *task_args, "--limit", "1"], env, timeout=400)
    assert not list(tmp.glob("kick-mp-*")), "the temporary multi-process cache must be removed"
    assert log.count("kick: compressing") == 1, log[-4000:]
    assert log.count("kick: loaded compressed weights from cache") == 1, log[-4000:]
    assert not Path(env["KICK_CACHE_DIR"]).exists()
