"""What a sweep leaves on disk, shared by the sweep driver and its executors (below both of them).

The per-config done marker, the error type of bad sweep input, atomic JSON writes, finding a config's
lm-eval results file, and durations printed as ``1m05s``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DONE_MARKER = ".kick_done.json"


class SweepError(ValueError):
    """Bad sweep input (message says what and how to fix it)."""


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def results_file(folder: Path) -> Path | None:
    """The newest lm-eval ``results_*.json`` under a config's folder."""
    files = sorted(folder.rglob("results_*.json"))
    return files[-1] if files else None


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"
