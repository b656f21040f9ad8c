"""LLM-KICK instruction following: the 80 Vicuna-bench questions, judged by an LLM.

Data: ``<KICK_DATA_DIR>/vicuna_bench/question.jsonl`` (else FastChat's copy on GitHub), the
paper's GPT-3.5 answers ``vicuna_bench/answer_gpt-3.5-turbo.jsonl`` (LLM-KICK release, local
only: without them the pairwise protocol is skipped) and the GPT-4 reference answers for the
math/coding questions ``vicuna_bench/reference_answer_gpt-4.jsonl`` (else FastChat's copy).

Judging: the paper's pairwise four-criteria rating against the GPT-3.5 answer in both orders,
plus FastChat single-answer grading (``single-v1``; ``single-math-v1`` with the GPT-4 reference
for math/coding). Judge-free: answer length and empty-output rate.
"""

from __future__ import annotations

import logging
from typing import Any

from kick_tasks.data import resolve
from kick_tasks.judge import session
from kick_tasks.judge.prompts import FASTCHAT_RAW, fetch_jsonl
from kick_tasks.judge.protocols import PairwiseFourCriteria, SingleGrade
from kick_tasks.judge.task_glue import answer_stats, first_response, read_jsonl

log = logging.getLogger(__name__)
ONLINE = f"{FASTCHAT_RAW}/vicuna_bench"
PROTOCOLS = (PairwiseFourCriteria(), SingleGrade(turn=1, metric="judge_rating"))


def _reference_answers(metadata: dict[str, Any] | None) -> dict[int, str]:
    rows = resolve("Vicuna-bench GPT-4 reference answers", "vicuna_bench/reference_answer_gpt-4.jsonl",
                   lambda p: read_jsonl(p, ("question_id", "choices")),
                   lambda: fetch_jsonl(f"{ONLINE}/reference_answer/gpt-4.jsonl"),
                   online_description=f"{ONLINE}/reference_answer/gpt-4.jsonl", metadata=metadata)
    return {int(r["question_id"]): r["choices"][0]["turns"][0] for r in rows}


def _gpt35_answers(metadata: dict[str, Any] | None) -> dict[int, str]:
    try:
        rows = resolve("the paper's GPT-3.5 answers to Vicuna-bench", "vicuna_bench/answer_gpt-3.5-turbo.jsonl",
                       lambda p: read_jsonl(p, ("question_id", "text")), metadata=metadata)
    except FileNotFoundError as exc:
        log.warning("%s\n-> the pairwise protocol against GPT-3.5 is skipped; single-answer grading still runs.",
                    str(exc).splitlines()[0])
        return {}
    return {int(r["question_id"]): r["text"] for r in rows}


def load_docs(metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    questions = resolve("Vicuna-bench questions", "vicuna_bench/question.jsonl",
                        lambda p: read_jsonl(p, ("question_id", "category", "turns")),
                        lambda: fetch_jsonl(f"{ONLINE}/question.jsonl"),
                        online_description=f"{ONLINE}/question.jsonl", metadata=metadata)
    reference = _gpt35_answers(metadata)
    ref_answers = _reference_answers(metadata)
    return [{"question_id": int(q["question_id"]), "category": q["category"], "question": q["turns"][0],
             "reference": reference.get(int(q["question_id"]), ""),
             "ref_answer": ref_answers.get(int(q["question_id"]), "")} for q in questions]


def load(**metadata: Any):
    """lm-eval ``custom_dataset``: ``{"test": Dataset}``; also checks the judge settings."""
    import datasets

    docs = load_docs(metadata)
    session.configure(metadata)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["question"]


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["reference"]


def judge_item(doc: dict[str, Any], answer: str) -> dict[str, Any]:
    return {"question": doc["question"], "answer": answer, "reference": doc.get("reference") or "",
            "ref_answer": doc.get("ref_answer") or ""}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    answer = first_response(results).strip()
    out = answer_stats(answer)
    out.update(session.judge_doc(judge_item(doc, answer), PROTOCOLS))
    return out
