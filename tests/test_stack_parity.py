"""Two lm-eval stacks, one result: the same literal commands give EQUAL metric values on both.

ci/lmeval05-stack.sh runs this file on lm-eval 0.5.0.dev1 with ``KICK_REFERENCE_BIN`` naming the bin folder
of the newest 0.4 stack (``.venv/bin`` from scripts/setup.sh: lm-eval 0.4.13). Each test runs the literal
command once with the reference stack's console script and once with this stack's, on the same tiny model,
data, calibration file and recording judge server (tests/fixtures/judge), and compares what they wrote:

* every task family (``--tasks 'kick_*'``: factoid, MCR, ICR closed/open, WikiText-2 perplexity,
  summarization and instruction following judged through the local server, MT-Bench) under ``kick-pruned``;
* every model class (``kick-gptq``, ``kick-rtn``, ``kick-bnb``, ``kick-quant``) on a generated-answer and a perplexity task;
* ``kick sweep`` of two configs and ``kick report`` over it.

Task names are compared without lm-eval 0.5's ``<group>::`` qualifier (its only naming difference); the
judge requests both stacks sent must be the same requests.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.judge.helpers import clean_env, free_port, start_fake, stop
from test_tasks_e2e import FIXTURES, mixed_data_dir, task_name

REFERENCE_BIN = os.environ.get("KICK_REFERENCE_BIN")
THIS_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.skipif(not REFERENCE_BIN, reason="KICK_REFERENCE_BIN (the other stack's bin folder) is not set; "
                                                 "ci/lmeval05-stack.sh sets it to .venv/bin"),
]


def _stack(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "python"), "-c", "import importlib.metadata as m; print(m.version('lm-eval'))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def stacks():
    ref, this = Path(REFERENCE_BIN), THIS_BIN
    versions = {"reference": _stack(ref), "this": _stack(this)}
    assert versions["reference"] != versions["this"], f"both stacks run lm-eval {versions['this']}"
    return {"reference": ref, "this": this}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The real data where it is here (judged tasks need it), the fixtures otherwise."""
    shared = ROOT.parent / "shared" / "data"
    if not shared.is_dir():
        return FIXTURES
    return mixed_data_dir(tmp_path_factory.mktemp("data") / "data", shared)


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. Paris is the capital of France. " * 100)
    return str(path)


def _env(tmp: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    # PYTHONPATH: both stacks run THIS checkout's kick (the reference venv may hold another editable install).
    return clean_env(KICK_DATA_DIR=str(data_dir), KICK_CACHE_DIR=str(tmp / "kick-cache"), OMP_NUM_THREADS="1",
                     PYTHONPATH=str(ROOT), **extra)


def _run(cmd: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[:3])} failed:\n" + (proc.stdout + proc.stderr)[-5000:]
    return proc


def _results(folder: Path) -> dict:
    files = sorted(folder.rglob("results_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def _metrics(results: dict) -> dict[tuple[str, str], object]:
    """``{(task, "metric,filter"): value}`` of every task and group (stderr included)."""
    return {(task_name(t), k): v for t, entry in results["results"].items() for k, v in entry.items() if "," in k}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _assert_equal_metrics(ref: dict, this: dict) -> int:
    rm, tm = _metrics(ref), _metrics(this)
    assert set(rm) == set(tm), {"only reference": sorted(set(rm) - set(tm))[:20],
                                "only this": sorted(set(tm) - set(rm))[:20]}
    differ = {k: (rm[k], tm[k]) for k in rm if not _same(rm[k], tm[k])}
    assert not differ, differ
    return len(rm)


def _lm_eval_on_both(stacks, tmp: Path, data_dir: Path, model: str, model_args: str, tasks: str,
                     extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> dict[str, dict]:
    out = {}
    for name, bin_dir in stacks.items():
        folder = tmp / name
        env = _env(folder, data_dir, **(extra_env or {}).get(name, {}))
        _run([str(bin_dir / "lm_eval"), "--model", model, "--model_args", model_args, "--device", "cpu",
              "--tasks", tasks, "--limit", "1", "--gen_kwargs", "max_gen_toks=8",
              "--metadata", json.dumps({"ppl_seqlen": 64}), "--output_path", str(folder / "out"), "--log_samples",
              *(extra_args or [])], env)
        out[name] = _results(folder / "out")
    return out


def test_every_kick_task_under_kick_pruned_gives_equal_metrics(stacks, tiny_llama_dir, data_dir, calib, tmp_path):
    """The acceptance command: ``lm_eval --model kick-pruned --tasks 'kick_*'`` with a recording judge."""
    port = free_port()
    record = tmp_path / "judge_requests.jsonl"
    server = start_fake(port, record=record)
    judge = {name: {"KICK_JUDGE_BASE_URL": f"http://127.0.0.1:{port}/v1", "KICK_JUDGE_MODEL": "gpt-4",
                    "OPENAI_API_KEY": "sk-parity", "KICK_JUDGE_CACHE": str(tmp_path / f"judge-{name}.sqlite")}
             for name in stacks}
    try:
        runs = {}
        for name in stacks:  # one stack after the other, so each stack's judge requests are told apart
            runs.update(_lm_eval_on_both({name: stacks[name]}, tmp_path, data_dir, "kick-pruned",
                                         f"pretrained={tiny_llama_dir},method=wanda,sparsity=0.5,calib={calib},"
                                         "nsamples=4,seqlen=64", "kick_*", extra_env=judge))
            (tmp_path / f"requests-{name}.jsonl").write_text(record.read_text() if record.exists() else "")
            record.unlink(missing_ok=True)
    finally:
        stop(server)
    ref, this = runs["reference"], runs["this"]
    tasks = {task_name(t) for t in this["results"]}
    families = {"kick_factoid_qa", "kick_mcr_qa", "kickmmlu_anatomy", "kick_icr_qa_closed", "kick_icr_qa_open",
                "kick_wikitext_ppl"}
    if data_dir is not FIXTURES:
        families |= {"kick_summarization", "kicksum_small", "kick_instruction_following", "kick_mt_bench"}
    assert families <= tasks, families - tasks
    assert _assert_equal_metrics(ref, this) > 100
    assert this["results"]["kick_factoid_qa"]["token_f1,none"] == ref["results"]["kick_factoid_qa"]["token_f1,none"]
    if data_dir is not FIXTURES:  # the judged metrics came from the judge, through the same requests
        assert "judge_score,none" in this["results"]["kick_instruction_following"]
        assert "judge_rating,none" in this["results"]["kick_mt_bench"]
        sent = {name: sorted(json.loads(line)["messages"][-1]["content"] for line in
                             (tmp_path / f"requests-{name}.jsonl").read_text().splitlines()) for name in stacks}
        assert sent["this"] and sent["this"] == sent["reference"]
    for key in ("measured_sparsity", "block_sparsity_per_block", "calibration_fingerprint"):
        assert this["config"]["kick_compression"][key] == ref["config"]["kick_compression"][key], key


@pytest.mark.parametrize("model,args", [
    ("kick-gptq", "wbits=4,groupsize=32,calib={calib},nsamples=4,seqlen=64"),
    ("kick-rtn", "wbits=4,groupsize=32"),
    ("kick-bnb", "method=nf4"),
    ("kick-quant", "scheme=W8A8"),  # int8 weights, dynamic per-token int8 activations (compressed-tensors)
    ("kick-quant", "scheme=NVFP4A16"),
])
def test_every_model_class_gives_equal_metrics(stacks, tiny_llama_dir, data_dir, calib, tmp_path, model, args):
    if model == "kick-bnb":
        pytest.importorskip("bitsandbytes")
    runs = _lm_eval_on_both(stacks, tmp_path, data_dir, model,
                            f"pretrained={tiny_llama_dir}," + args.format(calib=calib),
                            "kick_factoid_qa,kick_wikitext_ppl")
    assert _assert_equal_metrics(runs["reference"], runs["this"]) >= 10
    ref, this = (runs[n]["config"]["kick_compression"] for n in ("reference", "this"))
    assert this["model_class"] == model and this["bits_per_weight"] == ref["bits_per_weight"]


def _report_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_kick_sweep_and_report_give_equal_tables(stacks, tiny_llama_dir, data_dir, calib, tmp_path):
    """``kick sweep`` (dense + Wanda 50%) then ``kick report`` on each stack: the same summary table."""
    rows = {}
    for name, bin_dir in stacks.items():
        env = _env(tmp_path / name, data_dir)
        sweep = tmp_path / name / "sweep"
        _run([str(bin_dir / "kick"), "sweep", "--model", str(tiny_llama_dir), "--name", "tiny", "--output", str(sweep),
              "--methods", "wanda", "--sparsity", "0.5", "--calib", calib, "--nsamples", "4", "--seqlen", "64",
              "--tasks", "kick_factoid_qa,kick_mcr_qa", "--limit", "2", "--device", "cpu"], env)
        manifest = json.loads((sweep / "sweep.json").read_text())
        assert [(c["slug"], c["status"]) for c in manifest["configs"]] == [("dense", "done"), ("wanda-s50", "done")]
        _run([str(bin_dir / "kick"), "report", str(sweep), "--out", str(tmp_path / name / "report")], env)
        rows[name] = _report_rows(tmp_path / name / "report")
    ref, this = rows["reference"], rows["this"]
    assert {r["task"] for r in this} >= {"kick_factoid_qa", "kick_mcr_qa", "kickmmlu_anatomy"}
    varying = {"run", "folder", "path", "results", "seconds", "compression_seconds"}
    strip = [{k: v for k, v in r.items() if k not in varying} for r in ref], \
            [{k: v for k, v in r.items() if k not in varying} for r in this]
    assert strip[0] == strip[1]
    assert any(r["metric"] == "token_f1" for r in this)
