"""End-to-end: the real ``lm_eval`` CLI runs every kick knowledge task on a tiny model, offline.

No ``--include_path``: the tasks must be discovered by the installed autoload hook.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
LM_EVAL = str(Path(sys.executable).parent / "lm_eval")
QA_METRICS = {"contains_em,none", "exact_match,none", "token_f1,none"}


def task_name(task: str) -> str:
    """lm-eval 0.5 names a group's subtask ``<group>::<task>``; 0.4 names it ``<task>``: read both as ``<task>``."""
    return task.rsplit("::", 1)[-1]


def unqualified(out: dict) -> dict:
    """A results dict with every task named as :func:`task_name` reads it."""
    return {**out, "results": {task_name(t): v for t, v in out["results"].items()},
            "group_subtasks": {task_name(g): [task_name(t) for t in ts] for g, ts in out["group_subtasks"].items()}}


def run_lm_eval(args: list[str], data_dir: Path, out: Path, cwd: Path) -> dict:
    env = dict(os.environ, KICK_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("KICK_NO_AUTOLOAD", None)
    proc = subprocess.run(
        [LM_EVAL, "--model", "hf", "--output_path", str(out), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    files = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    assert len(files) == 1, files
    return unqualified(json.loads(Path(files[0]).read_text()))


def mixed_data_dir(root: Path, shared: Path) -> Path:
    """Real shared data where it exists, fixtures for what is not available offline (links, no copies)."""
    root.mkdir()
    for entry in shared.iterdir():
        if entry.is_dir() and entry.name != "freebaseqa":
            (root / entry.name).symlink_to(entry)
    (root / "freebaseqa").mkdir()
    (root / "freebaseqa" / "FreebaseQA-eval.json").symlink_to(shared / "freebaseqa" / "FreebaseQA-eval.json")
    for split in ("train", "dev"):
        (root / "freebaseqa" / f"FreebaseQA-{split}.json").symlink_to(FIXTURES / "freebaseqa" / f"FreebaseQA-{split}.json")
    (root / "triviaqa").symlink_to(FIXTURES / "triviaqa")
    return root


@pytest.mark.slow
def test_every_task_runs_from_the_cli_on_fixtures(tiny_llama_dir, tmp_path):
    tasks = [
        "kick_factoid_qa", "kick_factoid_qa_train", "kick_factoid_qa_dev", "kick_icr_qa_closed",
        "kick_icr_qa_open", "kick_wikitext_ppl", "kickmmlu_elementary_mathematics",
    ]
    results = run_lm_eval(
        ["--model_args", f"pretrained={tiny_llama_dir}", "--tasks", ",".join(tasks), "--limit", "2",
         "--metadata", json.dumps({"ppl_seqlen": 64}), "--log_samples"],
        FIXTURES, tmp_path / "out", tmp_path,
    )["results"]
    assert set(results) == set(tasks)
    for name in tasks[:5]:
        assert QA_METRICS <= set(results[name]), (name, results[name])
        assert all(0.0 <= results[name][m] <= 1.0 for m in QA_METRICS)
    assert results["kick_wikitext_ppl"]["token_perplexity,none"] > 1.0
    assert results["kick_wikitext_ppl"]["tokenization_exact,none"] == 1.0
    assert 0.0 <= results["kickmmlu_elementary_mathematics"]["acc,none"] <= 1.0
    samples = glob.glob(str(tmp_path / "out" / "**" / "samples_kick_wikitext_ppl_*.jsonl"), recursive=True)
    docs = [json.loads(line)["doc"] for line in Path(samples[0]).read_text().splitlines()]
    assert [d["seqlen"] for d in docs] == [64, 64]  # --metadata reached the loader


@pytest.mark.slow
def test_wildcard_runs_every_kick_task_without_duplicates(tiny_llama_dir, tmp_path, shared_data):
    data = mixed_data_dir(tmp_path / "data", shared_data)
    out = run_lm_eval(
        ["--model_args", f"pretrained={tiny_llama_dir}", "--tasks", "kick_*", "--limit", "1",
         "--gen_kwargs", "max_gen_toks=8"],
        data, tmp_path / "out", tmp_path,
    )
    results = out["results"]
    for name in ("kick_factoid_qa", "kick_factoid_qa_train", "kick_factoid_qa_dev", "kick_icr_qa_closed", "kick_icr_qa_open"):
        assert QA_METRICS <= set(results[name]), name
    assert "token_perplexity,none" in results["kick_wikitext_ppl"]
    subjects = [name for name in results if name.startswith("kickmmlu_")]
    assert len(subjects) == 57
    assert "acc,none" in results["kick_mcr_qa"]  # the size-weighted group row
    assert out["group_subtasks"]["kick_mcr_qa"] and len(out["group_subtasks"]["kick_mcr_qa"]) == 57
    assert "kick" not in results  # the suite group does not match 'kick_*'


@pytest.mark.slow
def test_kick_group_python_api(tiny_llama_dir, shared_data, tmp_path):
    import lm_eval

    import kick_tasks

    data = mixed_data_dir(tmp_path / "data", shared_data)
    tm = kick_tasks.task_manager(
        include_defaults=False, metadata={"data_dir": str(data), "pretrained": str(tiny_llama_dir), "ppl_seqlen": 128}
    )
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_llama_dir}", tasks=["kick"], limit=1, device="cpu",
        task_manager=tm, gen_kwargs="max_gen_toks=8",
    )
    out = unqualified(out)
    members = set(out["group_subtasks"]["kick"])
    assert {"kick_factoid_qa", "kick_mcr_qa", "kick_icr_qa_closed", "kick_icr_qa_open", "kick_wikitext_ppl"} <= members
    assert "acc,none" in out["results"]["kick_mcr_qa"]
    assert QA_METRICS <= set(out["results"]["kick_factoid_qa"])
