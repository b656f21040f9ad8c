"""Judge prompt texts: the paper's pairwise four-criteria prompt and FastChat's judge prompts."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from kick_models.data import DataSchemaError, resolve

FASTCHAT_RAW = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data"

PAIR_FOUR_CRITERIA_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
PAIR_FOUR_CRITERIA_TEMPLATE = """[Question]
{question}

[The Start of Assistant 1's Answer]
{answer_1}
[The End of Assistant 1's Answer]

[The Start of Assistant 2's Answer]
{answer_2}
[The End of Assistant 2's Answer]

[System]
We would like to request your feedback on the performance of two AI assistants in response to the user question displayed above.
Please rate each answer on four criteria: coherence, consistency, fluency and relevance. Each criterion receives a score on a scale of 1 to 10, where a higher score indicates better quality.
First output exactly two lines, one per assistant, in this format:
Assistant 1: coherence=<1-10>, consistency=<1-10>, fluency=<1-10>, relevance=<1-10>
Assistant 2: coherence=<1-10>, consistency=<1-10>, fluency=<1-10>, relevance=<1-10>
Then give a short explanation of your evaluation, avoiding any potential bias and ensuring that the order in which the answers were presented does not affect your judgment."""


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataSchemaError(f"{path}:{number} is not valid JSON: {exc}") from exc
    return rows


def fetch_jsonl(url: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Download a JSON-lines file (used for FastChat's raw files)."""
    import requests

    response = requests.get(url, timeout=timeout)
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=4)
def fastchat_judge_prompts(data_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """FastChat ``judge_prompts.jsonl`` by name (``single-v1``, ``single-math-v1-multi-turn`` ...)."""
    rows = resolve(
        "FastChat judge prompts", "mt_bench/judge_prompts.jsonl", _load_jsonl,
        lambda: fetch_jsonl(f"{FASTCHAT_RAW}/judge_prompts.jsonl"),
        online_description=f"{FASTCHAT_RAW}/judge_prompts.jsonl",
        metadata={"data_dir": data_dir} if data_dir else None)
    prompts = {row.get("name"): row for row in rows}
    for needed in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"):
        row = prompts.get(needed)
        if row is None or "prompt_template" not in row or "system_prompt" not in row:
            raise DataSchemaError(f"judge_prompts.jsonl lacks a usable {needed!r} entry (name, system_prompt, prompt_template).")
    return prompts
