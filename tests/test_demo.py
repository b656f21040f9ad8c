"""`kick demo` (the README's main job) end to end, on a tiny random model instead of SmolLM2 (slow),
and the data it ships (kick_analysis/demo_data)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kick_models import data
from kick_tasks import freebaseqa

ROOT = Path(__file__).resolve().parents[1]
DEMO = data.DEMO_DATA_DIR


def _demo(args: list[str], cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != data.DATA_DIR_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env_extra or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "kick_analysis.cli", "demo", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_demo_data_is_small_licensed_and_matches_its_manifest():
    manifest = json.loads((DEMO / "MANIFEST.json").read_text())
    files = manifest["files"]
    assert set(files) == {"freebaseqa/FreebaseQA-eval.json", "c4/c4_validation_2k.parquet", "wikitext2/wiki.test.raw"}
    total = 0
    for relative, entry in files.items():
        path = DEMO / relative
        total += path.stat().st_size
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], relative
        license_text = (DEMO / entry["license_file"]).read_text()
        assert entry["license"] in license_text and "Attribution" in license_text
    assert total < 1_000_000  # well under 2 MB
    docs = freebaseqa.load_split("eval", {"data_dir": str(DEMO)})
    assert len(docs) == 100


@pytest.mark.slow
def test_the_wheel_ships_the_demo_data(tmp_path):
    import zipfile

    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("kick_eval-*.whl"))).namelist())
    manifest = json.loads((DEMO / "MANIFEST.json").read_text())
    for relative, entry in manifest["files"].items():
        assert f"kick_analysis/demo_data/{relative}" in names and f"kick_analysis/demo_data/{entry['license_file']}" in names
    assert "kick_analysis/demo_data/MANIFEST.json" in names


def test_demo_data_is_an_unchanged_excerpt_of_the_full_data(shared_data):
    """Same first 100 questions, a prefix of the WikiText-2 file, the first C4 documents."""
    import pyarrow.parquet as pq

    assert freebaseqa.load_split("eval", {"data_dir": str(DEMO)}) == \
        freebaseqa.load_split("eval", {"data_dir": str(shared_data)})[:100]
    full = (shared_data / "wikitext2" / "wiki.test.raw").read_text()
    part = (DEMO / "wikitext2" / "wiki.test.raw").read_text()
    assert full.startswith(part) and len(part) > 250_000
    c4 = pq.read_table(DEMO / "c4" / "c4_validation_2k.parquet").to_pylist()
    assert c4 == pq.read_table(shared_data / "c4" / "c4_validation_2k.parquet").slice(0, len(c4)).to_pylist()


def test_the_tasks_never_fall_back_to_the_demo_data(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataNotFoundError, match=r"\$KICK_DATA_DIR unset") as err:
        freebaseqa.load_split("eval")
    assert "demo_data" not in str(err.value)


def test_demo_refuses_a_limit_beyond_the_embedded_data(tmp_path):
    proc = _demo(["--limit", "500", "--pretrained", "unused-model-id"], cwd=tmp_path)
    assert proc.returncode == 2 and "holds 100 FreebaseQA questions" in proc.stderr


@pytest.mark.slow
def test_demo_runs_anywhere_on_the_embedded_data(tiny_llama_dir, tmp_path):
    """From an empty folder, KICK_DATA_DIR unset, offline, no data folder beside it: the demo completes
    with the comparison table, and every result says its data is the embedded excerpt."""
    work = tmp_path / "anywhere"
    work.mkdir()
    proc = _demo(["--pretrained", str(tiny_llama_dir), "--limit", "4", "--nsamples", "2", "--seqlen", "32",
                  "--ppl_seqlen", "64", "--max_gen_toks", "4"], cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the excerpt shipped with kick" in proc.stdout
    out = work / "runs" / "demo"
    assert "| dense |" in proc.stdout and "| wanda-s50 |" in proc.stdout  # the comparison table, printed
    for slug in ("dense", "wanda-s50"):
        results = json.loads(next((out / "sweep" / slug).rglob("results_*.json")).read_text())
        fqa = results["configs"]["kick_factoid_qa"]["metadata"]["kick_data"]["FreebaseQA eval"]
        assert fqa["location"] == "embedded demo data" and fqa["records"] == 100
        assert fqa["source"] == str(DEMO / "freebaseqa" / "FreebaseQA-eval.json")
        wiki = results["configs"]["kick_wikitext_ppl"]["metadata"]["kick_data"]["WikiText-2 (raw) test"]
        assert wiki["stand_in"] and "excerpt" in wiki["excerpt"]
    # generation at batch 16, perplexity 4 windows per forward; the dense baseline through kick's scoring (kick-hf)
    dense_cfg = json.loads(next((out / "sweep" / "dense").rglob("results_*.json")).read_text())["config"]
    args = dense_cfg["model_args"]  # a dict from lm-eval 0.4.10, the command-line string before
    assert dense_cfg["model"] == "kick-hf"
    assert "score_batch_size=4" in args if isinstance(args, str) else args["score_batch_size"] == 4
    assert str(dense_cfg["batch_size"]) == "16"
    calib = json.loads(next((out / "sweep" / "wanda-s50").rglob("results_*.json")).read_text())
    record = calib["config"]["kick_compression"]["calibration_data"]
    assert record["source"] == str(DEMO / "c4" / "c4_validation_2k.parquet") and record["records"] == 200
    assert "VALIDATION" in record["stand_in"]
    manifest = json.loads((out / "sweep" / "sweep.json").read_text())
    assert {r["name"] for r in manifest["data"]} == {"FreebaseQA eval", "WikiText-2 (raw) test", "C4 calibration data"}
    md = (out / "report" / "leaderboard.md").read_text()
    assert f"Model(s): `{tiny_llama_dir.name}`" in md and "## Data" in md and "stand-in" in md
    rows = list(csv.DictReader(open(out / "report" / "summary.csv")))
    assert {(r["config"], r["task"]) for r in rows} >= {("dense", "kick_factoid_qa"), ("wanda-s50", "kick_wikitext_ppl")}
    assert (out / "report" / "report.html").stat().st_size > 1000

    # kick compare warns when two runs were scored on different data: the same run with another FreebaseQA copy
    other = tmp_path / "other"
    shutil.copytree(out / "sweep" / "wanda-s50", other)
    path = next(other.rglob("results_*.json"))
    results = json.loads(path.read_text())
    results["configs"]["kick_factoid_qa"]["metadata"]["kick_data"]["FreebaseQA eval"]["sha256"] = "0" * 64
    path.write_text(json.dumps(results))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmp_ = subprocess.run([sys.executable, "-m", "kick_analysis.cli", "compare", str(out / "sweep" / "dense"), str(other)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert cmp_.returncode == 0, cmp_.stderr
    assert "different FreebaseQA eval data" in cmp_.stderr and "WARNING: the runs used different" in cmp_.stdout
    assert "embedded demo data" in cmp_.stdout


@pytest.mark.slow
def test_demo_uses_a_configured_data_dir(tiny_llama_dir, data_dir, tmp_path):
    proc = _demo(["--pretrained", str(tiny_llama_dir), "--limit", "3", "--nsamples", "2", "--seqlen", "32",
                  "--ppl_seqlen", "64", "--max_gen_toks", "4", "--out", str(tmp_path / "demo")], cwd=tmp_path,
                 env_extra={data.DATA_DIR_ENV: str(data_dir)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"data from {data_dir}" in proc.stdout
    results = json.loads(next((tmp_path / "demo" / "sweep" / "dense").rglob("results_*.json")).read_text())
    assert results["configs"]["kick_factoid_qa"]["metadata"]["kick_data"]["FreebaseQA eval"]["records"] == len(
        json.loads((data_dir / "freebaseqa" / "FreebaseQA-eval.json").read_text())["Questions"])  # real data: 4000
