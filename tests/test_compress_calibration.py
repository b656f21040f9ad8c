"""Calibration windows from real files (txt/jsonl/parquet), the shared C4 parquet, and clear errors."""

from __future__ import annotations

import json
import logging
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny import make_tokenizer

from kick_models.compress.calibration import (
    CalibrationDataError,
    fingerprint,
    load_calibration,
    windows_from_documents,
)
from kick_models.compress.config import CalibrationConfig
from kick_models.data import DataNotFoundError

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches".split()


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _docs(n: int, seed: int = 0, words: tuple[int, int] = (5, 200)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


def _is_window_of(window: torch.Tensor, ids: torch.Tensor) -> bool:
    n = window.numel()
    return any(torch.equal(ids[i:i + n], window) for i in range(ids.numel() - n + 1))


def test_txt_file_gives_windows_of_the_token_stream(tmp_path, tok):
    text = "\n".join(_docs(30))
    path = tmp_path / "calib.txt"
    path.write_text(text)
    x = load_calibration(CalibrationConfig(str(path), nsamples=5, seqlen=32, seed=1), tok)
    assert x.shape == (5, 32) and x.dtype == torch.long
    ids = tok(text, return_tensors="pt").input_ids[0]
    assert all(_is_window_of(row, ids) for row in x)
    again = load_calibration(CalibrationConfig(str(path), nsamples=5, seqlen=32, seed=1), tok)
    other = load_calibration(CalibrationConfig(str(path), nsamples=5, seqlen=32, seed=2), tok)
    assert torch.equal(x, again) and not torch.equal(x, other)
    assert fingerprint(x) == fingerprint(again) != fingerprint(other)
    assert fingerprint(x) != fingerprint(x.to(torch.int32))  # dtype is part of the fingerprint


def test_jsonl_and_parquet_documents_follow_wanda_sampling(tmp_path, tok):
    docs = _docs(40, seed=3)
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n")
    parquet = tmp_path / "calib.parquet"
    pq.write_table(pa.table({"text": docs, "url": ["u"] * len(docs)}), parquet)
    a = load_calibration(CalibrationConfig(str(jsonl), nsamples=6, seqlen=48, seed=0), tok)
    b = load_calibration(CalibrationConfig(str(parquet), nsamples=6, seqlen=48, seed=0), tok)
    assert torch.equal(a, b)
    # Independent re-implementation of Wanda's get_c4 loop (random.seed + randint draws).
    random.seed(0)
    expected = []
    for _ in range(6):
        while True:
            i = random.randint(0, len(docs) - 1)
            enc = tok(docs[i], return_tensors="pt").input_ids
            if enc.shape[1] > 48:
                break
        j = random.randint(0, enc.shape[1] - 48 - 1)
        expected.append(enc[0, j:j + 48])
    assert torch.equal(a, torch.stack(expected))


def test_too_short_text_error_reports_token_count(tmp_path, tok):
    path = tmp_path / "short.txt"
    path.write_text("a tiny text")
    n = tok("a tiny text", return_tensors="pt").input_ids.shape[1]
    with pytest.raises(CalibrationDataError, match=rf"has {n} tokens; one window of seqlen=64 needs at least 65"):
        load_calibration(CalibrationConfig(str(path), nsamples=2, seqlen=64), tok)


def test_documents_all_shorter_than_seqlen_names_the_longest(tmp_path, tok):
    docs = _docs(10, words=(3, 8))
    longest = max(tok(d, return_tensors="pt").input_ids.shape[1] for d in docs)
    with pytest.raises(CalibrationDataError, match=rf"None of the 10 .*\(the longest has {longest} tokens"):
        windows_from_documents(docs, tok, nsamples=2, seqlen=500, seed=0)


def test_missing_empty_and_bad_schema_files(tmp_path, tok):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(CalibrationDataError, match="empty"):
        load_calibration(CalibrationConfig(str(empty), nsamples=1, seqlen=8), tok)
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("")
    with pytest.raises(CalibrationDataError, match="empty"):
        load_calibration(CalibrationConfig(str(empty_jsonl), nsamples=1, seqlen=8), tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'text'"):
        load_calibration(CalibrationConfig(str(bad), nsamples=1, seqlen=8), tok)
    no_text = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"body": ["x"]}), no_text)
    with pytest.raises(ValueError, match="'text' column"):
        load_calibration(CalibrationConfig(str(no_text), nsamples=1, seqlen=8), tok)


def test_seqlen_capped_at_max_positions_with_warning(tmp_path, tok, caplog):
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(_docs(20)))
    with caplog.at_level(logging.WARNING, logger="kick_models.compress.calibration"):
        x = load_calibration(CalibrationConfig(str(path), nsamples=3, seqlen=4096), tok, max_positions=40)
    assert x.shape == (3, 40)
    assert "exceeds the model's max positions 40" in caplog.text


def test_c4_from_the_data_folder_parquet(data_dir, tok, monkeypatch, caplog):
    monkeypatch.setenv("KICK_DATA_DIR", str(data_dir))
    with caplog.at_level(logging.WARNING, logger="kick_models.compress.calibration"):
        x = load_calibration(CalibrationConfig("c4", nsamples=4, seqlen=128, seed=0), tok)
    assert x.shape == (4, 128)
    assert "stand-in" in caplog.text and "VALIDATION" in caplog.text
    texts = pq.read_table(data_dir / "c4" / "c4_validation_2k.parquet", columns=["text"]).column("text").to_pylist()
    random.seed(0)
    i = random.randint(0, len(texts) - 1)  # the first document drawn
    while tok(texts[i], return_tensors="pt").input_ids.shape[1] <= 128:
        i = random.randint(0, len(texts) - 1)
    assert _is_window_of(x[0], tok(texts[i], return_tensors="pt").input_ids[0])


def test_wikitext2_offline_never_uses_the_test_split(data_dir, tok, monkeypatch):
    assert (data_dir / "wikitext2" / "wiki.test.raw").exists()
    monkeypatch.setenv("KICK_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataNotFoundError) as err:
        load_calibration(CalibrationConfig("wikitext2", nsamples=2, seqlen=64), tok)
    msg = str(err.value)
    assert "wiki.train.raw" in msg and "never the test file" in msg and "calib=c4" in msg


def test_wikitext2_train_file_in_a_data_dir(tmp_path, tok, monkeypatch):
    (tmp_path / "wikitext2").mkdir()
    lines = [" = Title = ", ""] + _docs(30)
    (tmp_path / "wikitext2" / "wiki.train.raw").write_text("\n".join(lines))
    monkeypatch.setenv("KICK_DATA_DIR", str(tmp_path))
    x = load_calibration(CalibrationConfig("wikitext2", nsamples=3, seqlen=32, seed=0), tok)
    assert x.shape == (3, 32)
