"""kick_models.data: local data dir first, then online, else an error that lists what was tried."""

from __future__ import annotations

import pytest

from kick_models import data


def test_local_dir_wins_over_online(tmp_path, monkeypatch):
    (tmp_path / "thing").mkdir()
    (tmp_path / "thing" / "x.txt").write_text("local")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    online_calls = []
    got = data.resolve("thing", "thing/x.txt", lambda p: p.read_text(), lambda: online_calls.append(1) or "online")
    assert got == "local" and online_calls == []


def test_metadata_data_dir_overrides_env(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, text in ((a, "from-env"), (b, "from-metadata")):
        d.mkdir()
        (d / "f.txt").write_text(text)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(a))
    assert data.resolve("f", "f.txt", lambda p: p.read_text(), metadata={"data_dir": str(b)}) == "from-metadata"


def test_falls_back_to_online_when_entry_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    assert data.resolve("thing", "thing/x.txt", lambda p: "local", lambda: "online") == "online"


def test_missing_data_dir_is_an_error_not_a_silent_download(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "typo"))
    with pytest.raises(data.DataNotFoundError, match="does not exist"):
        data.resolve("thing", "x", lambda p: "local", lambda: "online")


def test_error_lists_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))

    def offline():
        raise ConnectionError("no route to host")

    with pytest.raises(data.DataNotFoundError) as err:
        data.resolve("FreebaseQA eval", "freebaseqa/FreebaseQA-eval.json", lambda p: "x", offline, "github raw file")
    msg = str(err.value)
    assert str(tmp_path / "freebaseqa" / "FreebaseQA-eval.json") in msg
    assert "github raw file" in msg and "ConnectionError" in msg and "no route to host" in msg
    assert "KICK_DATA_DIR" in msg


def test_no_data_dir_configured_is_reported(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(data.DataNotFoundError, match=r"\$KICK_DATA_DIR unset"):
        data.resolve("thing", "x", lambda p: "local", None)


def test_provenance_lands_in_the_metadata_sink_with_the_stand_in_warning(tmp_path, caplog):
    (tmp_path / "x.txt").write_text("a\nb\n")
    sink: dict = {}
    with caplog.at_level("WARNING", logger="kick_models.data"):
        got = data.resolve("thing", "x.txt", lambda p: p.read_text(), metadata={"data_dir": str(tmp_path),
                                                                              "kick_data": sink},
                           local_stand_in="not the paper's copy")
    record = sink["thing"]
    assert got == "a\nb\n" and record["records"] == 2 and record["source"] == str(tmp_path / "x.txt")
    assert record["stand_in"] == "not the paper's copy" and record["location"] == "local" and record["excerpt"] is None
    import hashlib

    assert record["sha256"] == hashlib.sha256(b"a\nb\n").hexdigest()
    assert "stand-in" in caplog.text and "not the paper's copy" in caplog.text


def test_the_embedded_demo_data_is_flagged_as_an_excerpt():
    sink: dict = {}
    data.resolve("FreebaseQA eval", "freebaseqa/FreebaseQA-eval.json", lambda p: p.read_bytes()[:10].decode(),
                 metadata={"data_dir": str(data.DEMO_DATA_DIR), "kick_data": sink})
    record = sink["FreebaseQA eval"]
    assert record["location"] == "embedded demo data" and "first 100 of 4,000" in record["excerpt"]
