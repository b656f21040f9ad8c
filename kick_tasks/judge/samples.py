"""Reading lm-eval ``samples_<task>_<time>.jsonl`` files and mapping a task to its judging recipe."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from kick_tasks.judge.task_glue import first_response, read_jsonl
from kick_tasks.names import samples_task

#: task name (prefix) -> (module, function: JudgeSettings -> protocols)
RECIPES: list[tuple[str, str, str]] = [
    ("kick_mt_bench_turn2", "kick_tasks.mt_bench", "protocols_both"),
    ("kick_mt_bench", "kick_tasks.mt_bench", "protocols_turn1"),
    ("kick_instruction_following", "kick_tasks.instruction_following", "protocols"),
    ("kicksum_", "kick_tasks.summarization", "protocols"),
    ("kick_summarization", "kick_tasks.summarization", "protocols"),
]


def task_of(path: Path) -> str:
    """The task of a samples file (lm-eval 0.5's ``<group>::<task>`` read as ``<task>``)."""
    task = samples_task(path.name)
    if task is None:
        raise ValueError(f"{path.name} is not an lm-eval samples file name (samples_<task>_<time>.jsonl); "
                         "pass --task to say which task it holds.")
    return task


def recipe(task: str):
    """(judge_item function, protocols function of the judge settings) for a task name; ValueError for
    tasks without a judge."""
    for prefix, module_name, attribute in RECIPES:
        if task == prefix or (prefix.endswith("_") and task.startswith(prefix)):
            module = importlib.import_module(module_name)
            return module.judge_item, getattr(module, attribute)
    known = ", ".join(p + ("*" if p.endswith("_") else "") for p, _, _ in RECIPES)
    raise ValueError(f"task {task!r} has no judging recipe; judged tasks: {known}.")


def find_samples(paths: list[Path]) -> list[Path]:
    """Files as given; folders searched recursively for judged tasks' samples files."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(path.rglob("samples_*.jsonl")):
                try:
                    recipe(task_of(candidate))
                except ValueError:
                    continue
                found.append(candidate)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist.")
    return found


def load_samples(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path, ("doc_id", "doc", "filtered_resps"))
    for row in rows:
        row["answer"] = first_response(row["filtered_resps"]).strip()
    return rows
