"""TriviaQA ``rc`` (Joshi et al., ACL 2017) for ``kick_icr_qa_closed`` / ``kick_icr_qa_open``.

Source rows have the Hugging Face ``mandarjoshi/trivia_qa`` ``rc`` schema::

    {"question", "question_id", "question_source",
     "entity_pages": {"doc_source", "filename", "title", "wiki_context": [str]},
     "search_results": {"description", "filename", "rank", "title", "url", "search_context": [str]},
     "answer": {"aliases", "normalized_aliases", "matched_wiki_entity_name",
                "normalized_matched_wiki_entity_name", "normalized_value", "type", "value"}}

Offline: ``<data dir>/triviaqa/`` holding ``validation*.parquet`` or
``validation*.jsonl`` files in that schema (searched recursively, so the Hub
layout ``triviaqa/rc/validation-0000x-of-0000y.parquet`` works). Online: the
Hub dataset, config ``rc``, split ``validation``.

Both task variants score the same questions: those with at least one evidence
text. The open-book context follows the LLM-KICK code exactly: the first
Wikipedia text followed directly (no separator) by the first web text, cut
to 3,072 characters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kick_models.data import DataSchemaError, resolve
from kick_tasks.metrics import containment_match, exact_match, normalize_triviaqa, token_f1, unique_aliases

HF_DATASET = "mandarjoshi/trivia_qa"
HF_CONFIG = "rc"
SPLITS = ("train", "validation", "test")
CONTEXT_CHARS = 3072
CLOSED_PROMPT = "Answer these questions:\n\nQ: {question}\nA:"
OPEN_PROMPT = "Based on these texts, answer these questions:\n\nQ: {question}\nA:"

_REQUIRED = {
    "question": None,
    "question_id": None,
    "answer": ("aliases", "normalized_aliases", "value"),
    "entity_pages": ("filename", "wiki_context"),
    "search_results": ("filename", "search_context"),
}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"TriviaQA rc has no split {split!r}; choose one of {', '.join(SPLITS)}.")
    return split


def validate_row(row: Any, where: str) -> None:
    """Raise DataSchemaError naming ``where`` and the first missing field of the rc schema."""
    if not isinstance(row, dict):
        raise DataSchemaError(f"{where}: expected an object in the TriviaQA rc schema, got {type(row).__name__}")
    for key, subkeys in _REQUIRED.items():
        if key not in row:
            raise DataSchemaError(f"{where}: missing field {key!r} (TriviaQA rc schema of {HF_DATASET})")
        for sub in subkeys or ():
            if not isinstance(row[key], dict) or sub not in row[key]:
                raise DataSchemaError(f"{where}: missing field '{key}.{sub}' (TriviaQA rc schema of {HF_DATASET})")


def evidence_context(row: dict[str, Any]) -> str:
    """First Wikipedia text + first web text (the paper's order, no separator), first 3,072 characters."""
    wiki = row["entity_pages"]["wiki_context"][0] if row["entity_pages"]["filename"] else ""
    web = row["search_results"]["search_context"][0] if row["search_results"]["filename"] else ""
    return ((wiki or "") + (web or ""))[:CONTEXT_CHARS]


def to_doc(row: dict[str, Any]) -> dict[str, Any]:
    """Source row -> the compact doc the tasks use."""
    answer = row["answer"]
    aliases = unique_aliases([*answer["normalized_aliases"], *answer["aliases"], answer["value"]])
    return {
        "question_id": row["question_id"],
        "question": row["question"],
        "context": evidence_context(row),
        "aliases": aliases,
    }


def rows_to_docs(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Validate, convert, and keep the questions that have evidence text (shared by both variants)."""
    if not rows:
        raise DataSchemaError(f"{source}: no rows")
    docs = []
    for i, row in enumerate(rows):
        validate_row(row, f"{source} row {i}")
        doc = to_doc(row)
        if doc["context"].strip() and doc["aliases"]:
            docs.append(doc)
    if not docs:
        raise DataSchemaError(f"{source}: none of the {len(rows)} rows has evidence text and an answer")
    return docs


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as handle:
        for n, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataSchemaError(f"{path}: line {n} is not valid JSON ({exc})") from exc
    return rows


def read_local(root: Path, split: str) -> list[dict[str, Any]]:
    """All ``<split>*.parquet`` / ``<split>*.jsonl`` files under ``root`` (sorted), as docs."""
    files = sorted(p for ext in ("parquet", "jsonl") for p in root.rglob(f"{split}*.{ext}"))
    if not files:
        raise DataSchemaError(
            f"{root} holds no {split}*.parquet or {split}*.jsonl file; put the {HF_DATASET} '{HF_CONFIG}' "
            f"{split} split there (e.g. {root}/rc/{split}-00000-of-00001.parquet)"
        )
    docs = []
    for path in files:
        rows = _read_file(path)
        if not rows:
            raise DataSchemaError(f"{path}: the file is empty")
        docs.extend(rows_to_docs(rows, str(path)))
    return docs


def download(split: str) -> list[dict[str, Any]]:
    import datasets

    ds = datasets.load_dataset(HF_DATASET, HF_CONFIG, split=split)
    return rows_to_docs([dict(row) for row in ds], f"{HF_DATASET}/{HF_CONFIG}/{split}")


def load_split(split: str = "validation", metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    check_split(split)
    return resolve(
        name=f"TriviaQA rc {split}",
        relative="triviaqa",
        load_local=lambda root: read_local(root, split),
        load_online=lambda: download(split),
        online_description=f"Hugging Face dataset {HF_DATASET} (config {HF_CONFIG}, split {split})",
        metadata=metadata,
    )


def load(split: str = "validation", **metadata: Any):
    """lm-eval ``custom_dataset`` entry point."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(load_split(split, metadata))})


def closed_prompt(doc: dict[str, Any]) -> str:
    return CLOSED_PROMPT.format(question=doc["question"]).strip()


def open_prompt(doc: dict[str, Any]) -> str:
    """``<context>\\n\\n<instruction>``, stripped at both ends as in the paper's code."""
    return f"{doc['context']}\n\n{OPEN_PROMPT.format(question=doc['question'])}".strip()


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["aliases"][0]


def first_line(generation: str) -> str:
    """The paper's answer extraction: strip, then keep the first line."""
    return generation.strip().split("\n")[0]


def score(generation: str, aliases: list[str]) -> dict[str, float]:
    answer = first_line(generation)
    return {
        "contains_em": containment_match(answer, aliases, normalize_triviaqa),
        "exact_match": exact_match(answer, aliases, normalize_triviaqa),
        "token_f1": token_f1(answer, aliases, normalize_triviaqa),
    }


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return score(results[0], doc["aliases"])
