"""FreebaseQA (Jiang et al., NAACL 2019) for ``kick_factoid_qa``: loader, prompt, scoring.

Data: the official v1.0 JSON files ``FreebaseQA-{train,dev,eval}.json``,
read from ``<data dir>/freebaseqa/`` (see :mod:`kick_models.data`) or downloaded
from the FreebaseQA GitHub repository. One doc per question::

    {"question_id", "question" (RawQuestion), "processed_question", "aliases": [str]}

``aliases`` pools every ``AnswersName`` of every answer of every parse of the
question (deduplicated, first-seen order). The LLM-KICK code used only
``Parses[0].Answers[0].AnswersName``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from kick_models.data import DataSchemaError, resolve
from kick_tasks.metrics import exact_match, factoid_contains, token_f1, unique_aliases

SPLITS = ("train", "dev", "eval")
ONLINE_URL = "https://raw.githubusercontent.com/kelvin-jiang/FreebaseQA/main/FreebaseQA-{split}.json"
PROMPT = "Please give answer to this question: {question}\nThe answer is"


def check_split(split: str) -> str:
    """Return ``split`` if it is a FreebaseQA split, else raise a ValueError naming the valid ones."""
    if split not in SPLITS:
        raise ValueError(f"FreebaseQA has no split {split!r}; choose one of {', '.join(SPLITS)}.")
    return split


def _require(obj: Any, key: str, where: str, source: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataSchemaError(
            f"{source}: {where} has no field {key!r} (expected the official FreebaseQA v1.0 JSON schema: "
            '{"Questions": [{"Question-ID", "RawQuestion", "ProcessedQuestion", '
            '"Parses": [{"Answers": [{"AnswersName": [...]}]}]}]})'
        )
    return obj[key]


def parse_questions(payload: Any, source: str) -> list[dict[str, Any]]:
    """Official v1.0 JSON payload -> list of docs; raises DataSchemaError naming the missing field."""
    questions = _require(payload, "Questions", "the top-level object", source)
    if not isinstance(questions, list):
        raise DataSchemaError(f"{source}: 'Questions' must be a list, got {type(questions).__name__}")
    if not questions:
        raise DataSchemaError(f"{source}: 'Questions' is empty; the file holds no questions")
    docs = []
    for i, question in enumerate(questions):
        where = f"question #{i}"
        qid = _require(question, "Question-ID", where, source)
        where = f"question #{i} ({qid})"
        raw = _require(question, "RawQuestion", where, source)
        processed = question.get("ProcessedQuestion", raw)
        aliases: list[str] = []
        for j, parse in enumerate(_require(question, "Parses", where, source)):
            for k, answer in enumerate(_require(parse, "Answers", f"{where} parse #{j}", source)):
                aliases.extend(_require(answer, "AnswersName", f"{where} parse #{j} answer #{k}", source))
        aliases = unique_aliases(aliases)
        if not aliases:
            raise DataSchemaError(f"{source}: {where} has no answer names in any parse")
        docs.append({"question_id": qid, "question": raw, "processed_question": processed, "aliases": aliases})
    return docs


def read_json_file(path: Path) -> list[dict[str, Any]]:
    """Read one official FreebaseQA JSON file."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.strip():
        raise DataSchemaError(f"{path}: the file is empty")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataSchemaError(f"{path}: not valid JSON ({exc})") from exc
    return parse_questions(payload, str(path))


def download(split: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Fetch ``FreebaseQA-<split>.json`` from the FreebaseQA GitHub repository.

    Honours the Hugging Face offline switches (``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE``):
    a user who asked for offline data loading gets no download here either.
    """
    url = ONLINE_URL.format(split=split)
    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            raise ConnectionError(f"offline mode ({flag}={os.environ[flag]}); not downloading {url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL)
        payload = json.loads(response.read().decode("utf-8"))
    return parse_questions(payload, url)


def load_split(split: str = "eval", metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Docs of one split: local ``freebaseqa/FreebaseQA-<split>.json``, else GitHub, else DataNotFoundError."""
    check_split(split)
    return resolve(
        name=f"FreebaseQA {split}",
        relative=f"freebaseqa/FreebaseQA-{split}.json",
        load_local=read_json_file,
        load_online=lambda: download(split),
        online_description=ONLINE_URL.format(split=split),
        metadata=metadata,
    )


def load(split: str = "eval", **metadata: Any):
    """lm-eval ``custom_dataset`` entry point: ``{split: datasets.Dataset}``."""
    import datasets

    docs = load_split(split, metadata)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict[str, Any]) -> str:
    """The paper's prompt (trailing space dropped; see README)."""
    return PROMPT.format(question=doc["question"])


def doc_to_target(doc: dict[str, Any]) -> str:
    """First alias (only used for display; scoring uses every alias)."""
    return doc["aliases"][0]


def score(continuation: str, aliases: list[str]) -> dict[str, float]:
    """All factoid scores of one generated continuation."""
    return {
        "contains_em": factoid_contains(continuation, aliases),
        "exact_match": exact_match(continuation, aliases),
        "token_f1": token_f1(continuation, aliases),
    }


def answer_line(continuation: str) -> str:
    """The answer: leading whitespace/newlines stripped FIRST, then the first line.

    A stop rule ``until: "\\n"`` applied to the raw continuation would turn an answer that starts
    with a newline (``"\\nParis"``, common after ``The answer is``) into an empty string; the task
    therefore stops only at EOS / 32 tokens and cuts the first line here (as the TriviaQA task does)."""
    return continuation.lstrip().split("\n", 1)[0]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval hook: ``results[0]`` is the generated continuation (prompt not included)."""
    return score(answer_line(results[0]), doc["aliases"])
