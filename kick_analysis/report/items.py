"""``kick report`` per-item view: which items a compressed config lost (the dense model right, the compressed
one wrong) and gained (the reverse) against its dense baseline, with the question, the reference answers and
both models' outputs.

The pairing and the per-item scores are :mod:`kick_analysis.compare`'s (``compare_runs(..., keep_pairs=True)``):
an item is "right" when the task's primary metric is 1 for it. Tasks scored continuously (judge ratings) have
no lost/gained items; perplexity tasks have no items at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kick_analysis.compare import choice_texts, chosen_answer, item_score

#: Longest text kept per field (question, output); longer texts end in an ellipsis (a few-shot prompt can
#: run to pages, and a study holds thousands of items).
MAX_TEXT = 3000
#: Most reference answers kept per item (TriviaQA lists dozens of aliases).
MAX_REFERENCES = 12

_QUESTION_KEYS = ("question", "query", "problem", "instruction", "prompt", "input", "text")
_REFERENCE_KEYS = ("aliases", "answers", "references", "reference", "answer")
_OPTION = re.compile(r"^option (\d+)$")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "\u2026"


def _text(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _prompt(sample: dict[str, Any]) -> str:
    args = sample.get("arguments") or {}
    first = next(iter(args.values()), None) if isinstance(args, dict) else (args[0] if args else None)
    if isinstance(first, dict):
        return str(first.get("arg_0", ""))
    return str(first[0]) if isinstance(first, (list, tuple)) and first else ""


def sample_question(sample: dict[str, Any]) -> str:
    """The question as the dataset states it (a ``question``-like field of the doc), else the prompt."""
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    for key in _QUESTION_KEYS:
        if isinstance(doc.get(key), str) and doc[key].strip():
            return _clip(doc[key])
    if isinstance(doc.get("turns"), list) and doc["turns"] and isinstance(doc["turns"][0], str):
        return _clip(doc["turns"][0])
    return _clip(_prompt(sample))


def _option_text(sample: dict[str, Any], index: int) -> str:
    """An option as shown to a reader: its label, with the doc's choice text when the label is a letter."""
    options = choice_texts(sample)
    label = options[index].strip() if index < len(options) else str(index)
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    choices = doc.get("choices")
    if isinstance(choices, list) and len(choices) == len(options) and str(choices[index]).strip() != label:
        return f"{label}. {choices[index]}"
    return label


def sample_references(sample: dict[str, Any], output_type: str | None) -> list[str]:
    """The reference answers: the correct option for multiple choice; else the doc's answer list (aliases,
    answers, ...) or lm-eval's ``target``."""
    if output_type == "multiple_choice":
        try:
            return [_option_text(sample, int(str(sample.get("target")).strip()))]
        except ValueError:
            return [_text(sample.get("target"))]
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    refs: list[str] = []
    for key in _REFERENCE_KEYS:
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            refs = [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            refs = list(value)
        if refs:
            break
    if not refs and sample.get("target") not in (None, ""):
        target = sample["target"]
        refs = [str(t) for t in target] if isinstance(target, list) else [_text(target)]
    more = len(refs) - MAX_REFERENCES
    return [_clip(r) for r in refs[:MAX_REFERENCES]] + ([f"(+{more} more)"] if more > 0 else [])


def sample_output(sample: dict[str, Any], output_type: str | None, metric: str | None) -> str:
    """What the model answered: the chosen option for multiple choice, the (filtered) generation otherwise."""
    if output_type == "multiple_choice":
        m = _OPTION.match(chosen_answer(sample, output_type, metric))
        if m:
            return _option_text(sample, int(m.group(1)))
    return _clip(_text(sample.get("filtered_resps")))


def flipped_items(task: str, result: dict[str, Any], output_type: str | None) -> list[dict[str, Any]]:
    """The lost and gained items of one task's :func:`~kick_analysis.compare.compare_samples` result
    (computed with ``keep_pairs``), dense order; an empty list unless its per-item metric is binary."""
    if result.get("kind") != "binary" or not result.get("pairs"):
        return []
    metric = result["metric"]
    out = []
    for dense, compressed in result["pairs"]:
        before, after = item_score(dense, metric), item_score(compressed, metric)
        if before == after:
            continue
        out.append({
            "task": task,
            "doc_id": dense.get("doc_id"),
            "change": "lost" if before == 1.0 else "gained",
            "question": sample_question(dense),
            "references": sample_references(dense, output_type),
            "dense_output": sample_output(dense, output_type, metric),
            "compressed_output": sample_output(compressed, output_type, metric),
        })
    return out
