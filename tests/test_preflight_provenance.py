"""Data checked before anything loads (kick sweep preflight, kick-* calibration) and provenance records."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kick_models import data
from kick_analysis import preflight

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    """A configured but empty data folder, offline: nothing can be resolved."""
    folder = tmp_path / "empty_data"
    folder.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return folder


def test_check_data_raises_one_error_listing_every_missing_data_set(empty_data_dir):
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check_data(["kick_factoid_qa", "kick_wikitext_ppl"], ["c4"])
    msg = str(err.value)
    assert msg.startswith("3 data set(s)")
    for where in ("freebaseqa/FreebaseQA-eval.json", "wikitext2/wiki.test.raw", "c4/c4_validation_2k.parquet"):
        assert str(empty_data_dir / where) in msg
    assert "raw.githubusercontent.com" in msg and "Salesforce/wikitext" in msg and "allenai/c4" in msg


def test_expand_tasks_covers_groups_and_patterns():
    assert preflight.expand_tasks(["kick"]) == [t for t in preflight.GROUP_MEMBERS if t != "kick_icr_qa_open"]
    assert preflight.expand_tasks(["kick_factoid_qa*"]) == ["kick_factoid_qa", "kick_factoid_qa_dev",
                                                            "kick_factoid_qa_train"]
    assert preflight.expand_tasks(["kickmmlu_anatomy", "hellaswag"]) == ["kickmmlu_anatomy"]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_sweep_with_missing_data_stops_before_any_config(tiny_llama_dir, empty_data_dir, tmp_path):
    """3 configs, task and calibration data missing: exit 2, ONE error naming both, no lm_eval process started
    (no config folder, no lm_eval.log, no sweep.json), nothing written."""
    out = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "kick_analysis.cli", "sweep", "--model", str(tiny_llama_dir), "--output", str(out),
         "--methods", "wanda,magnitude", "--sparsity", "0.5", "--tasks", "kick_factoid_qa,kick_wikitext_ppl",
         "--limit", "2", "--nsamples", "2", "--seqlen", "16"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("kick sweep: error:") == 1
    assert "3 data set(s)" in proc.stderr and "nothing was started" in proc.stderr
    assert str(empty_data_dir / "c4" / "c4_validation_2k.parquet") in proc.stderr
    assert str(empty_data_dir / "freebaseqa" / "FreebaseQA-eval.json") in proc.stderr
    assert _tree(out) == []  # no config folder, no lm_eval.log, no manifest: no model load was started


def _no_weights_model(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """A model folder whose config and tokenizer are fine but whose weights are missing: loading it fails."""
    folder = tmp_path / "no_weights"
    folder.mkdir()
    for f in tiny_llama_dir.iterdir():
        if not f.name.endswith(".safetensors") and f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_kick_model_resolves_calibration_before_loading_the_model(tiny_llama_dir, empty_data_dir, tmp_path):
    from kick_models.lm import KickPrunedLM

    folder = _no_weights_model(tiny_llama_dir, tmp_path)
    with pytest.raises(data.DataNotFoundError, match="C4 calibration data"):  # not the load's missing-weights error
        KickPrunedLM(pretrained=str(folder), device="cpu", method="wanda", sparsity=0.5, calib="c4", cache=False)
    with pytest.raises(OSError) as err:  # without calibration (magnitude) the model load is what fails
        KickPrunedLM(pretrained=str(folder), device="cpu", method="magnitude", sparsity=0.5, cache=False)
    assert not isinstance(err.value, data.DataNotFoundError)


def test_local_c4_calibration_records_the_stand_in(tiny_llama_dir, data_dir, monkeypatch, tmp_path, caplog):
    from kick_models.lm import KickPrunedLM

    c4_folder = data_dir
    monkeypatch.setenv(data.DATA_DIR_ENV, str(c4_folder))
    with caplog.at_level("WARNING", logger="kick_models.data"):
        lm = KickPrunedLM(pretrained=str(tiny_llama_dir), device="cpu", method="wanda", sparsity=0.5, calib="c4",
                          nsamples=2, seqlen=32, cache=False)
    record = lm.get_model_info()["kick_compression"]["calibration_data"]
    parquet = c4_folder / "c4" / "c4_validation_2k.parquet"
    assert record["location"] == "local" and record["source"] == str(parquet)
    assert "VALIDATION" in record["stand_in"] and "c4-train.00000-of-01024" in record["stand_in"]
    import pyarrow.parquet as pq

    texts = [t for t in pq.read_table(parquet, columns=["text"]).column("text").to_pylist() if t]
    assert record["records"] == len(texts)
    assert record["sha256"] == hashlib.sha256(json.dumps(texts, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()
    assert "stand-in" in caplog.text  # the run-time warning


def test_task_provenance_same_content_same_hash_and_stand_in_flag(tmp_path, monkeypatch):
    """kick_data records: local vs online copies of the same content hash alike; a WikiText-2 file
    without empty lines is flagged as a stand-in, one with them is not."""
    from kick_tasks import wikitext_ppl

    rows = ["= Title =\n", "Some text here .\n", "More text .\n"]
    for name, text in (("stripped", "".join(rows)), ("original", " \n".join(rows))):
        (tmp_path / name / "wikitext2").mkdir(parents=True)
        (tmp_path / name / "wikitext2" / "wiki.test.raw").write_text(text)
    sink: dict = {}
    wikitext_ppl.load_rows({"data_dir": str(tmp_path / "stripped"), "kick_data": sink})
    record = sink["WikiText-2 (raw) test"]
    assert record["stand_in"] and "empty lines" in record["stand_in"] and record["records"] == 3
    sink.clear()
    wikitext_ppl.load_rows({"data_dir": str(tmp_path / "original"), "kick_data": sink})
    assert sink["WikiText-2 (raw) test"]["stand_in"] is None

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    docs = [{"q": "a"}, {"q": "b"}]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.json").write_text(json.dumps(docs))
    _, local = data.resolve_with_provenance("X", "x.json", lambda p: json.loads(p.read_text()),
                                            metadata={"data_dir": str(tmp_path / "d")})
    _, online = data.resolve_with_provenance("X", "missing.json", lambda p: None, lambda: [dict(d) for d in docs],
                                             "the online copy", metadata={"data_dir": str(tmp_path / "d")})
    assert local["sha256"] == online["sha256"] and local["source"] != online["source"]
    assert (local["location"], online["location"]) == ("local", "online")


@pytest.mark.slow
def test_results_json_records_an_explicit_calibration_file(tiny_llama_dir, data_dir, tmp_path):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": f"Calibration document {i}: " + "words and more words " * 20}) + "\n"
                             for i in range(8)))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), KICK_DATA_DIR=str(data_dir))
    proc = subprocess.run(
        [sys.executable, "-m", "kick_analysis.cli", "eval", "--model", "kick-pruned", "--model_args",
         f"pretrained={tiny_llama_dir},method=wanda,sparsity=0.5,calib={calib},nsamples=2,seqlen=32,cache=false",
         "--tasks", "kick_factoid_qa", "--limit", "2", "--gen_kwargs", "max_gen_toks=2", "--output_path", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    record = results["config"]["kick_compression"]["calibration_data"]
    assert record["source"] == str(calib) and record["location"] == "local" and record["stand_in"] is None
    assert record["file_sha256"] == hashlib.sha256(calib.read_bytes()).hexdigest() and record["records"] == 8
    task_record = results["configs"]["kick_factoid_qa"]["metadata"]["kick_data"]["FreebaseQA eval"]
    eval_file = data_dir / "freebaseqa" / "FreebaseQA-eval.json"
    assert task_record["source"] == str(eval_file)
    assert task_record["records"] == len(json.loads(eval_file.read_text())["Questions"])  # real data: 4000
    assert task_record["location"] == "local"
