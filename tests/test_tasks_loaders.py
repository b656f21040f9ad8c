"""Loaders of the kick knowledge tasks on fixtures in each original schema, real files, and bad input."""

import csv
import json
from pathlib import Path

import pytest

from kick_tasks import freebaseqa, mmlu, triviaqa, wikitext_ppl
from kick_models.data import DataNotFoundError, DataSchemaError

FIXTURES = Path(__file__).parent / "fixtures"
META = {"data_dir": str(FIXTURES)}


# ------------------------------------------------------------------ FreebaseQA


def test_freebaseqa_fixture_pools_aliases_of_every_parse():
    docs = freebaseqa.load_split("train", META)
    assert [d["question_id"] for d in docs] == ["FreebaseQA-train-0", "FreebaseQA-train-1", "FreebaseQA-train-2"]
    assert docs[0]["question"] == "The film '10 Things I Hate About You' is based on which Shakespeare play?"  # RawQuestion
    assert docs[0]["aliases"] == ["the taming of the shrew", "taming of the shrew"]
    assert docs[2]["aliases"] == ["leonardo da vinci", "leonardo", "da vinci"]
    assert len(freebaseqa.load_split("dev", META)) == 2
    assert len(freebaseqa.load_split("eval", META)) == 3


def test_freebaseqa_custom_dataset_entry_point():
    ds = freebaseqa.load(split="dev", version=1.0, **META)  # lm-eval passes metadata keys as kwargs
    assert list(ds) == ["dev"] and ds["dev"][1]["aliases"] == ["iron"]


def test_freebaseqa_bad_split():
    with pytest.raises(ValueError, match="no split 'test'.*train, dev, eval"):
        freebaseqa.load_split("test", META)


def _write_fbqa(tmp_path: Path, payload) -> dict:
    folder = tmp_path / "freebaseqa"
    folder.mkdir()
    text = payload if isinstance(payload, str) else json.dumps(payload)
    (folder / "FreebaseQA-eval.json").write_text(text)
    return {"data_dir": str(tmp_path)}


def test_freebaseqa_missing_field_names_file_question_and_field(tmp_path):
    payload = json.loads((FIXTURES / "freebaseqa" / "FreebaseQA-eval.json").read_text())
    del payload["Questions"][1]["RawQuestion"]
    meta = _write_fbqa(tmp_path, payload)
    with pytest.raises(DataSchemaError, match=r"FreebaseQA-eval\.json: question #1 \(FreebaseQA-eval-1\) has no field 'RawQuestion'"):
        freebaseqa.load_split("eval", meta)


def test_freebaseqa_missing_answer_names(tmp_path):
    payload = json.loads((FIXTURES / "freebaseqa" / "FreebaseQA-eval.json").read_text())
    del payload["Questions"][0]["Parses"][1]["Answers"][0]["AnswersName"]
    with pytest.raises(DataSchemaError, match="parse #1 answer #0 has no field 'AnswersName'"):
        freebaseqa.load_split("eval", _write_fbqa(tmp_path, payload))


def test_freebaseqa_wrong_top_level_schema(tmp_path):
    with pytest.raises(DataSchemaError, match="top-level object has no field 'Questions'"):
        freebaseqa.load_split("eval", _write_fbqa(tmp_path, [{"question": "q", "answer": "a"}]))


@pytest.mark.parametrize("payload, message", [("", "is empty"), ('{"Questions": []}', "holds no questions"), ("{not json", "not valid JSON")])
def test_freebaseqa_empty_or_broken_file(tmp_path, payload, message):
    with pytest.raises(DataSchemaError, match=message):
        freebaseqa.load_split("eval", _write_fbqa(tmp_path, payload))


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        freebaseqa.load_split("eval", {"data_dir": str(tmp_path / "nope")})


def test_missing_file_lists_what_was_tried(tmp_path):
    # conftest sets HF_DATASETS_OFFLINE=1, which the FreebaseQA downloader honours
    with pytest.raises(DataNotFoundError) as info:
        freebaseqa.load_split("dev", {"data_dir": str(tmp_path)})
    message = str(info.value)
    assert "freebaseqa/FreebaseQA-dev.json (missing)" in message
    assert "kelvin-jiang/FreebaseQA" in message and "offline mode" in message


def test_freebaseqa_real_eval_has_4000_questions(shared_data):
    docs = freebaseqa.load_split("eval", {"data_dir": str(shared_data)})
    assert len(docs) == 4000
    assert all(d["aliases"] and d["question"] for d in docs)
    assert sum(len(d["aliases"]) > 1 for d in docs) > 100  # several parses / names per question are pooled


# ------------------------------------------------------------------ MMLU


def test_mmlu_fixture_csv_layout():
    splits = mmlu.load_subject("elementary_mathematics", META)
    assert sorted(splits) == ["dev", "test", "validation"]
    assert len(splits["dev"]) == 5 and len(splits["test"]) == 3 and len(splits["validation"]) == 1
    assert splits["test"][2] == {
        "question": "What is 2 ** 3?", "subject": "elementary_mathematics", "choices": ["6", "9", "8", "5"], "answer": 2,
    }


def test_mmlu_bad_subject():
    with pytest.raises(ValueError, match="no subject 'astrology'"):
        mmlu.load_subject("astrology", META)


def _mmlu_dir(tmp_path: Path, test_rows=None, test_text=None) -> dict:
    for split in ("dev", "test"):
        (tmp_path / "mmlu" / split).mkdir(parents=True)
    src = FIXTURES / "mmlu" / "dev" / "elementary_mathematics_dev.csv"
    (tmp_path / "mmlu" / "dev" / "elementary_mathematics_dev.csv").write_text(src.read_text())
    path = tmp_path / "mmlu" / "test" / "elementary_mathematics_test.csv"
    if test_text is not None:
        path.write_text(test_text)
    else:
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows(test_rows)
    return {"data_dir": str(tmp_path)}


def test_mmlu_wrong_column_count(tmp_path):
    meta = _mmlu_dir(tmp_path, [["q", "a", "b", "c", "d", "A"], ["question", "A", "B", "C", "D"]])
    with pytest.raises(DataSchemaError, match=r"elementary_mathematics_test\.csv: row 2 has 5 columns; expected 6"):
        mmlu.load_subject("elementary_mathematics", meta)


def test_mmlu_header_row_is_rejected(tmp_path):
    meta = _mmlu_dir(tmp_path, [["question", "A", "B", "C", "D", "answer"]])
    with pytest.raises(DataSchemaError, match="row 1: answer column is 'answer'"):
        mmlu.load_subject("elementary_mathematics", meta)


def test_mmlu_empty_file(tmp_path):
    with pytest.raises(DataSchemaError, match="is empty"):
        mmlu.load_subject("elementary_mathematics", _mmlu_dir(tmp_path, test_text=""))


def test_mmlu_missing_split_file(tmp_path):
    meta = _mmlu_dir(tmp_path, [["q", "a", "b", "c", "d", "A"]])
    with pytest.raises(DataSchemaError, match=r"anatomy_dev\.csv is missing"):
        mmlu.load_subject("anatomy", meta)


def test_mmlu_real_test_has_14042_questions(shared_data):
    meta = {"data_dir": str(shared_data)}
    totals = {"dev": 0, "validation": 0, "test": 0}
    for subject in mmlu.SUBJECTS:
        for split, docs in mmlu.load_subject(subject, meta).items():
            totals[split] += len(docs)
    assert len(mmlu.SUBJECTS) == 57
    assert totals == {"dev": 285, "validation": 1531, "test": 14042}


# ------------------------------------------------------------------ TriviaQA


def _fixture_rows() -> list[dict]:
    path = FIXTURES / "triviaqa" / "rc" / "validation-00000-of-00001.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_triviaqa_fixture_filter_and_context():
    docs = {d["question_id"]: d for d in triviaqa.load_split("validation", META)}
    assert sorted(docs) == ["fx_1", "fx_2", "fx_3", "fx_4", "fx_6"]  # fx_5 has no evidence text
    rows = {r["question_id"]: r for r in _fixture_rows()}
    # wiki first, then web, no separator (the paper's code), 3,072 characters in total
    assert len(docs["fx_1"]["context"]) == 3072
    assert docs["fx_1"]["context"] == rows["fx_1"]["entity_pages"]["wiki_context"][0][:3072]
    assert docs["fx_2"]["context"] == (
        "Hamlet is a tragedy written by William Shakespeare.Shakespeare wrote Hamlet around 1600."
    )
    assert docs["fx_3"]["context"] == rows["fx_3"]["search_results"]["search_context"][0]  # web only
    assert docs["fx_4"]["context"] == rows["fx_4"]["entity_pages"]["wiki_context"][0]  # wiki only
    assert docs["fx_2"]["aliases"] == ["william shakespeare", "shakespeare", "bard", "William Shakespeare", "Shakespeare", "The Bard"]


def test_triviaqa_parquet_files_load_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "triviaqa" / "rc"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_fixture_rows()), folder / "validation-00000-of-00001.parquet")
    assert triviaqa.load_split("validation", {"data_dir": str(tmp_path)}) == triviaqa.load_split("validation", META)


def _trivia_dir(tmp_path: Path, rows: list[dict] | None, text: str | None = None) -> dict:
    folder = tmp_path / "triviaqa"
    folder.mkdir()
    body = text if text is not None else "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "validation.jsonl").write_text(body)
    return {"data_dir": str(tmp_path)}


def test_triviaqa_missing_nested_field(tmp_path):
    rows = _fixture_rows()
    del rows[2]["answer"]["normalized_aliases"]
    with pytest.raises(DataSchemaError, match=r"validation\.jsonl row 2: missing field 'answer.normalized_aliases'"):
        triviaqa.load_split("validation", _trivia_dir(tmp_path, rows))


def test_triviaqa_wrong_schema(tmp_path):
    rows = [{"question": "q?", "question_id": "x", "answer": "a"}]  # the rc.nocontext-like flat schema is not enough
    with pytest.raises(DataSchemaError, match="missing field 'answer.aliases'"):
        triviaqa.load_split("validation", _trivia_dir(tmp_path, rows))


def test_triviaqa_empty_file_and_no_files(tmp_path):
    with pytest.raises(DataSchemaError, match="is empty"):
        triviaqa.load_split("validation", _trivia_dir(tmp_path, None, text=""))
    with pytest.raises(DataSchemaError, match="no train\\*.parquet or train\\*.jsonl"):
        triviaqa.load_split("train", {"data_dir": str(tmp_path)})


def test_triviaqa_bad_split():
    with pytest.raises(ValueError, match="no split 'dev'"):
        triviaqa.load_split("dev", META)


# ------------------------------------------------------------------ WikiText-2


def test_wikitext_raw_rows_match_hub_layout():
    rows = wikitext_ppl.load_rows(META)
    assert rows[0] == "" and rows[1] == " = Fixture Island = \n" and rows[2] == ""
    assert all(r == "" or r.endswith("\n") for r in rows)
    text = wikitext_ppl.join_rows(rows)
    assert text.startswith("\n\n = Fixture Island = \n\n\n\n\n Fixture Island is")


def test_wikitext_empty_file(tmp_path):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text("\n \n")
    with pytest.raises(DataSchemaError, match="is empty"):
        wikitext_ppl.load_rows({"data_dir": str(tmp_path)})


def test_wikitext_real_text_loads(shared_data):
    rows = wikitext_ppl.load_rows({"data_dir": str(shared_data)})
    assert sum(1 for r in rows if r) == 2891
    assert rows[0].startswith(" = Robert Boulter = ")
    assert len(wikitext_ppl.join_rows(rows)) > 1_000_000


def test_wikitext_needs_a_tokenizer_source():
    with pytest.raises(ValueError, match="names no model"):
        wikitext_ppl.tokenizer_from_metadata({"data_dir": str(FIXTURES)})
