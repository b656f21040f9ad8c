"""Glue between the kick judged tasks and the judge: judge-free answer stats + process_results helper."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from kick_models.data import DataSchemaError


def answer_stats(text: str) -> dict[str, float]:
    """Judge-free stats of one answer: length in words and whether it is empty."""
    words = len(text.split())
    return {"words": float(words), "empty_rate": 1.0 if words == 0 else 0.0}


def first_response(results: Sequence[Any]) -> str:
    """lm-eval hands ``process_results`` a list with one generated string per request."""
    value = results[0] if results else ""
    while isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return value if isinstance(value, str) else str(value)


def write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines to a temporary sibling, then move it into place (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """A JSON-lines file; :class:`DataSchemaError` naming the line for bad JSON or a missing field."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataSchemaError(f"{path}:{number} is not valid JSON ({exc}).") from exc
            missing = [key for key in required if key not in row]
            if missing:
                raise DataSchemaError(f"{path}:{number} lacks the field(s) {missing}; expected {list(required)}.")
            rows.append(row)
    return rows
