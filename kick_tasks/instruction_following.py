"""LLM-KICK instruction following: the 80 Vicuna-bench questions, judged by an LLM the paper's way.

Data: ``<KICK_DATA_DIR>/vicuna_bench/question.jsonl`` (else FastChat's copy on GitHub); the paper's
GPT-3.5 answers ``vicuna_bench/answer_gpt-3.5-turbo.jsonl`` (else the paper's ``mt_conversation/answer.jsonl``
on GitHub); the paper's judge prompts ``llm_kick_protocol/instruction_following/{prompt,reviewer}.jsonl``.

Judging (default, the paper's ``gpt4_judge.py``): per category the paper's prompt (``coding`` -> 2,
``math`` -> 3, any other -> 1), GPT-3.5's answer as Assistant 1 and the evaluated model's as Assistant 2,
one order, judge temperature 0.2 and 1,024 tokens, the first line of the review parsed as ``X Y``.
Metrics ``judge_score`` (the paper's "Ours"), ``judge_ref_score`` ("ChatGpt score"), ``judge_invalid_rate``.
kick's opt-ins (``KICK_JUDGE_ORDERS=both``, ``KICK_JUDGE_EXTRAS=robust,four_criteria,rating``) add
metrics under their own names. Judge-free: answer length and empty-output rate.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from kick_models.data import resolve
from kick_tasks.judge import paper, session
from kick_tasks.judge.prompts import FASTCHAT_RAW, fetch_jsonl
from kick_tasks.judge.settings import JudgeSettings
from kick_tasks.judge.task_glue import answer_stats, first_response, read_jsonl

ONLINE = f"{FASTCHAT_RAW}/vicuna_bench"
PAPER_ANSWERS = f"{paper.PAPER_RAW}/mt_conversation/answer.jsonl"
TASK = "instruction_following"
log = logging.getLogger(__name__)
#: generation settings of the YAML (recorded by lm-eval in results["configs"][task]["generation_kwargs"])
GEN_KWARGS = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 1024}


def protocols(settings: JudgeSettings | None = None) -> tuple:
    """The paper's pairwise judge, plus the opt-ins ``settings`` asks for (each with its own metrics)."""
    return paper.protocols_for(TASK, settings)


def _reference_answers(metadata: dict[str, Any] | None) -> dict[int, str]:
    rows = resolve("Vicuna-bench GPT-4 reference answers", "vicuna_bench/reference_answer_gpt-4.jsonl",
                   lambda p: read_jsonl(p, ("question_id", "choices")),
                   lambda: fetch_jsonl(f"{ONLINE}/reference_answer/gpt-4.jsonl"),
                   online_description=f"{ONLINE}/reference_answer/gpt-4.jsonl", metadata=metadata)
    return {int(r["question_id"]): r["choices"][0]["turns"][0] for r in rows}


@functools.lru_cache(maxsize=4)
def _gpt35_rows(data_dir: str | None) -> tuple[tuple[int, str], ...]:
    metadata = {"data_dir": data_dir} if data_dir else None
    rows = resolve("the paper's GPT-3.5 answers to Vicuna-bench (the comparator, Assistant 1)",
                   "vicuna_bench/answer_gpt-3.5-turbo.jsonl", lambda p: read_jsonl(p, ("question_id", "text")),
                   lambda: fetch_jsonl(PAPER_ANSWERS), online_description=PAPER_ANSWERS, metadata=metadata)
    return tuple((int(r["question_id"]), r["text"]) for r in rows)


def gpt35_answers(metadata: dict[str, Any] | None = None) -> dict[int, str]:
    """The paper's GPT-3.5 answers by question id (local data dir, else the paper's GitHub copy)."""
    return dict(_gpt35_rows((metadata or {}).get("data_dir")))


def load_docs(metadata: dict[str, Any] | None = None, judged: bool = True) -> list[dict[str, Any]]:
    """The 80 questions with the paper's comparator answer (``reference``) and FastChat's GPT-4 reference
    (``ref_answer``, math/coding; for the opt-in ``rating``). They go into the docs (and so into
    ``--log_samples``) even without a judge, so ``kick judge`` can judge later; missing files are an error
    only when ``judged``."""
    questions = resolve("Vicuna-bench questions", "vicuna_bench/question.jsonl",
                        lambda p: read_jsonl(p, ("question_id", "category", "turns")),
                        lambda: fetch_jsonl(f"{ONLINE}/question.jsonl"),
                        online_description=f"{ONLINE}/question.jsonl", metadata=metadata)
    try:
        reference = gpt35_answers(metadata)
        ref_answers = _reference_answers(metadata)
    except FileNotFoundError as exc:
        if judged:
            raise
        log.warning("%s\n-> no comparator in the docs; `kick judge` will look the answers up when it judges.",
                    str(exc).splitlines()[0])
        reference, ref_answers = {}, {}
    return [{"question_id": int(q["question_id"]), "category": q["category"], "question": q["turns"][0],
             "reference": reference.get(int(q["question_id"]), ""),
             "ref_answer": ref_answers.get(int(q["question_id"]), "")} for q in questions]


def load(**metadata: Any):
    """lm-eval ``custom_dataset``: ``{"test": Dataset}``; with a judge configured, the judge settings, the
    paper's protocol files and the comparator answers are checked here, before any generation."""
    import datasets

    settings = session.configure(metadata)
    docs = load_docs(metadata, judged=settings.enabled)
    if settings.enabled:
        paper.load_protocol(TASK, metadata)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["question"]


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["reference"]


def judge_item(doc: dict[str, Any], answer: str) -> dict[str, Any]:
    """What the judge sees: the question (the paper's ``text``), its category, the comparator and the answer."""
    comparator = doc.get("reference") or gpt35_answers().get(int(doc["question_id"]), "")
    return {"question": doc["question"], "category": doc.get("category", ""), "answer": answer,
            "comparator": comparator, "reference": comparator,
            "ref_answer": doc.get("ref_answer") or ""}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    answer = first_response(results).strip()
    out = answer_stats(answer)
    out.update(session.judge_doc(judge_item(doc, answer), protocols(session.current_settings())))
    return out
