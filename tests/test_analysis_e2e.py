"""End-to-end: real lm_eval runs of a tiny random model -> kick compare / kick report / kick sweep (slow)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kick_analysis import compare as cmp
from kick_analysis import report as rep
from kick_analysis.results_io import load_samples, load_single_run

ROOT = Path(__file__).resolve().parents[1]

MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tasks")
    choices = ["Paris", "London", "Rome", "Berlin"]
    with open(d / "qa.jsonl", "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"question": f"Q{i}: which city {i}?", "answer": choices[i % 4],
                                 "choices": choices, "label": i % 4}) + "\n")
    (d / "tiny_mc.yaml").write_text(MC_YAML.format(data=d / "qa.jsonl"))
    (d / "tiny_gen.yaml").write_text(GEN_YAML.format(data=d / "qa.jsonl"))
    (d / "calib.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    return d


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _lm_eval(model: str, model_args: str, tasks: str, include: Path, out: Path, limit: int = 12) -> None:
    cmd = [sys.executable, "-m", "kick_analysis.cli", "eval", "--model", model, "--model_args", model_args,
           "--tasks", tasks, "--include_path", str(include), "--output_path", str(out), "--log_samples",
           "--limit", str(limit), "--device", "cpu"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_compare_and_report_dense_vs_pruned(tiny_llama_dir, tiny_tasks, tmp_path, capsys):
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    _lm_eval("hf", f"pretrained={tiny_llama_dir}", "tiny_mc,tiny_gen", tiny_tasks, dense)
    _lm_eval("kick-pruned", f"pretrained={tiny_llama_dir},method=magnitude,sparsity=0.5,cache=false",
             "tiny_mc,tiny_gen", tiny_tasks, pruned)

    out_json = tmp_path / "cmp.json"
    assert cmp.main([str(dense), str(pruned), "--output", str(out_json), "--resamples", "300"]) == 0
    text = capsys.readouterr().out
    assert "retention" in text and "agreement" in text and "McNemar p" in text
    report = json.loads(out_json.read_text())
    mc = report["tasks"]["tiny_mc"]
    # recompute the paired counts straight from the two samples files
    d_run, p_run = load_single_run(dense), load_single_run(pruned)
    d_acc = {s["doc_id"]: s["acc"] for s in load_samples(d_run.samples_files["tiny_mc"])}
    p_acc = {s["doc_id"]: s["acc"] for s in load_samples(p_run.samples_files["tiny_mc"])}
    assert mc["n_matched"] == 12 == len(d_acc)
    assert mc["lost"] == sum(1 for k in d_acc if d_acc[k] == 1 and p_acc[k] == 0)
    assert mc["gained"] == sum(1 for k in d_acc if d_acc[k] == 0 and p_acc[k] == 1)
    assert mc["dense_score"] == pytest.approx(sum(d_acc.values()) / 12)
    assert 0.0 <= mc["agreement"] <= 1.0 and 0.0 < mc["mcnemar_p"] <= 1.0
    assert report["tasks"]["tiny_gen"]["metric"] == "exact_match"

    out = tmp_path / "report"
    assert rep.main([str(dense), str(pruned), "--out", str(out), "--no-plots", "--resamples", "300"]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "retention" in md and "agreement" in md and "McNemar p" in md
    assert "| magnitude 50% | 50% (50.0%) |" in md  # label + measured sparsity from the model class's summary
    rows = list(csv.DictReader(open(out / "summary.csv")))
    row = next(r for r in rows if r["method"] == "magnitude" and r["task"] == "tiny_mc" and r["metric"] == "acc")
    assert float(row["measured_sparsity"]) == pytest.approx(0.5, abs=0.01)
    assert row["mcnemar_p"] != "" and float(row["mcnemar_p"]) == pytest.approx(mc["mcnemar_p"])


def _sweep_cmd(model: Path, out: Path, tasks: Path) -> list[str]:
    return [sys.executable, "-m", "kick_analysis.cli", "sweep", "--model", str(model), "--output", str(out),
            "--methods", "magnitude,wanda", "--sparsity", "0.3,0.6", "--calib", str(tasks / "calib.txt"),
            "--nsamples", "2", "--seqlen", "32", "--tasks", "tiny_mc", "--include_path", str(tasks),
            "--limit", "4", "--device", "cpu"]


@pytest.mark.slow
def test_sweep_kill_resume_and_report(tiny_llama_dir, tiny_tasks, tmp_path):
    out = tmp_path / "sweep"
    cmd = _sweep_cmd(tiny_llama_dir, out, tiny_tasks)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*/.kick_done.json")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    log1 = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, log1
    done_first = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/.kick_done.json")}
    assert "dense" in done_first and len(done_first) < 5, log1
    manifest = json.loads((out / "sweep.json").read_text())
    assert {c["slug"]: c["status"] for c in manifest["configs"]}["dense"] == "done"
    assert "interrupted" in {c["status"] for c in manifest["configs"]}

    proc2 = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert f"({len(done_first)} already done, skipped)" in proc2.stderr
    slugs = ["dense", "magnitude-s30", "magnitude-s60", "wanda-s30", "wanda-s60"]
    for slug in slugs:
        assert (out / slug / ".kick_done.json").is_file()
        assert len(list((out / slug).rglob("results_*.json"))) == 1
        assert len(list((out / slug).rglob("samples_tiny_mc_*.jsonl"))) == 1
    for slug, mtime in done_first.items():  # not redone
        assert (out / slug / ".kick_done.json").stat().st_mtime_ns == mtime
    manifest = json.loads((out / "sweep.json").read_text())
    assert [c["slug"] for c in manifest["configs"]] == slugs
    assert all(c["status"] == "done" for c in manifest["configs"])

    # third run: nothing left to do
    proc3 = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc3.returncode == 0 and "(5 already done, skipped)" in proc3.stderr

    report_dir = tmp_path / "report"
    assert rep.main([str(out), "--out", str(report_dir), "--html", "--resamples", "200"]) == 0
    rows = list(csv.DictReader(open(report_dir / "summary.csv")))
    assert sorted({r["config"] for r in rows}) == sorted(slugs)
    assert len(rows) == 5  # one task, one metric (acc) per config
    md_rows = [line for line in (report_dir / "leaderboard.md").read_text().splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in md_rows[1:]] == slugs
    from PIL import Image

    pngs = list(report_dir.glob("*.png"))
    assert {"score_vs_sparsity_tiny_mc.png", "quant_vs_prune_tiny_mc.png",
            "retention_vs_sparsity_tiny_mc.png"} <= {p.name for p in pngs}
    for p in pngs:
        with Image.open(p) as im:
            im.verify()


def test_sweep_bad_input_before_running(tiny_llama_dir, tiny_tasks, tmp_path, capsys):
    from kick_analysis import sweep

    base = ["--model", str(tiny_llama_dir), "--output", str(tmp_path / "s"), "--include_path", str(tiny_tasks),
            "--tasks", "tiny_mc"]
    cases = {
        "unknown method": (["--methods", "prune_me"], "unknown method"),
        "unknown task": (["--tasks", "no_such_task"], "unknown task"),
        "empty range": (["--sparsity", "0.6:0.2:0.1"], "is empty"),
        "zero step": (["--sparsity", "0.1:0.5:0"], "step must be > 0"),
        "sparsity >= 1": (["--sparsity", "0.5,1.0"], "must be in [0, 1)"),
        "bad N:M": (["--nm", "4:2"], "sparsity_type"),
        "bad wbits": (["--methods", "gptq", "--wbits", "5"], "wbits"),
        "reserved passthrough": (["--sparsity", "0.5", "--", "--tasks", "x"], "sets --model"),
        "score batch 0": (["--sparsity", "0.5", "--score_batch_size", "0"], "must be a positive integer"),
        "score batch in model_args": (["--sparsity", "0.5", "--model_args", "score_batch_size=2"],
                                      "give it as --score_batch_size"),
    }
    for name, (extra, msg) in cases.items():
        argv = base + extra
        assert sweep.main(argv) == 2, name
        assert msg in capsys.readouterr().err, name
    assert not (tmp_path / "s").exists()  # nothing ran
    missing = ["--model", str(tmp_path / "no-such-model")] + base[2:] + ["--sparsity", "0.5"]
    assert sweep.main(missing) == 2
    assert "local path that does not exist" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()

    assert sweep.parse_range("0:0.7:0.1") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert sweep.parse_range("0.1:0.6:0.2") == [0.1, 0.3, 0.5]
    assert sweep.parse_range("0.1:0.3:0.1,0.5") == [0.1, 0.2, 0.3, 0.5]

    # an output folder holding another model's sweep is refused unless --force
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"model": "other", "model_args": {}}))
    assert sweep.main(base + ["--sparsity", "0.5", "--dry-run"]) == 2
    assert "different model" in capsys.readouterr().err
    assert sweep.main(base + ["--sparsity", "0.5", "--dry-run", "--force"]) == 0
    plan = capsys.readouterr().out
    assert "dense:" in plan and "magnitude-s50:" in plan and "--log_samples" in plan
    # --score_batch_size: every config scores at most N sequences per forward; the baseline runs as kick-hf
    assert sweep.main(base + ["--sparsity", "0.5", "--dry-run", "--force", "--score_batch_size", "2"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert "--model kick-hf" in lines["dense"] and "--model kick-pruned" in lines["magnitude-s50"]
    assert all("score_batch_size=2" in lines[slug] for slug in ("dense", "magnitude-s50"))
