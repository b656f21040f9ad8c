"""LLM-KICK in-context summarization: the paper's 90 CNN stories in three length buckets.

Docs come from ``<KICK_DATA_DIR>/cnn_stories/{small,mid,large}/<id>.story`` (CNN/DailyMail
``.story`` format: the article, then ``@highlight`` lines each followed by one reference highlight).
The prompt is the paper's instruction followed by the story WITHOUT the highlights (the paper's
prompts leaked them). Judge-free metrics: ROUGE-1/2/L F1 against the highlights, answer length,
empty-output rate. Judge metrics (when a judge is configured): the paper's pairwise four-criteria
rating against the highlights, asked in both orders.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from kick_tasks.data import DataNotFoundError, DataSchemaError, resolve
from kick_tasks.judge import session
from kick_tasks.judge.protocols import PairwiseFourCriteria
from kick_tasks.judge.task_glue import answer_stats, first_response

INSTRUCTION = ("Summarize the given story in less than 150 words while preserving high coherence, consistency, "
               "fluency, and relevance.")
BUCKETS = ("small", "mid", "large")
PROTOCOLS = (PairwiseFourCriteria(),)


def parse_story(text: str) -> tuple[str, list[str]]:
    """Split a ``.story`` file into (story without highlights, highlights)."""
    story_lines: list[str] = []
    highlights: list[str] = []
    expect_highlight = False
    seen_marker = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "@highlight":
            expect_highlight, seen_marker = True, True
            continue
        if expect_highlight:
            if stripped:
                highlights.append(stripped)
                expect_highlight = False
            continue
        if not seen_marker:
            story_lines.append(line.rstrip())
    story = "\n".join(story_lines).strip()
    while "\n\n\n" in story:
        story = story.replace("\n\n\n", "\n\n")
    return story, highlights


def _read_bucket(folder: Path, bucket: str) -> list[dict[str, Any]]:
    files = sorted(folder.glob("*.story"))
    if not files:
        raise DataSchemaError(f"{folder} holds no .story files (expected the {bucket} bucket of the 90 CNN stories).")
    docs = []
    for path in files:
        story, highlights = parse_story(path.read_text(encoding="utf-8"))
        if not story or not highlights:
            raise DataSchemaError(f"{path} is not a CNN .story file (needs the article and @highlight lines).")
        docs.append({"story_id": path.stem, "bucket": bucket, "story": story, "highlights": highlights})
    return docs


def _no_online_copy():
    raise DataNotFoundError(
        "the paper's 90 stories are a selection from the CNN/DailyMail release with no canonical download of "
        "their own; get the cnn_stories/{small,mid,large}/<id>.story folders (LLM-KICK release) into your data dir")


def check_bucket(bucket: str) -> None:
    if bucket not in BUCKETS:
        raise ValueError(f"unknown summarization bucket {bucket!r}; use one of {', '.join(BUCKETS)}.")


def load_bucket(bucket: str, metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    check_bucket(bucket)
    return resolve(f"CNN stories ({bucket})", f"cnn_stories/{bucket}", lambda p: _read_bucket(p, bucket),
                   _no_online_copy, online_description="no online source", metadata=metadata)


def load(bucket: str = "small", **metadata: Any):
    """lm-eval ``custom_dataset``: ``{"test": Dataset}`` of one bucket; also checks the judge settings."""
    import datasets

    docs = load_bucket(bucket, metadata)
    session.configure(metadata)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict[str, Any]) -> str:
    return f"{INSTRUCTION}\n\n{doc['story']}"


def doc_to_target(doc: dict[str, Any]) -> str:
    return "\n".join(doc["highlights"])


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 (stemmed, rouge-score package)."""
    scores = _scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")}


def judge_item(doc: dict[str, Any], answer: str) -> dict[str, Any]:
    """What the judge sees: the prompt, the model's summary and the reference highlights."""
    return {"question": doc_to_text(doc), "answer": answer, "reference": doc_to_target(doc)}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    answer = first_response(results).strip()
    out = {**rouge(answer, doc_to_target(doc)), **answer_stats(answer)}
    out.update(session.judge_doc(judge_item(doc, answer), PROTOCOLS))
    return out
