"""Preflight: resolve every data set a run needs (task data and calibration) before any model loads.

``kick sweep`` (and so ``kick demo``) calls :func:`check_data` once, before the first config starts:
each data set goes through the same resolver as the run itself (:mod:`kick_models.data`; local data
folder, else the online source), and every failure is collected into ONE :class:`PreflightError`
listing every place tried, instead of one model load + failure per config. On success it returns
the provenance records (source, stand-in, records, sha256), which the sweep prints and keeps in
``sweep.json``.

Tasks that are not kick tasks (lm-eval built-ins) are not checked here: lm-eval loads them itself.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Loader = Callable[[dict[str, Any]], Any]


class PreflightError(FileNotFoundError):
    """One or more data sets a run needs cannot be resolved (the message lists every one)."""


def _freebaseqa(split: str) -> Loader:
    def load(metadata):
        from kick_tasks import freebaseqa

        return freebaseqa.load_split(split, metadata)
    return load


def _wikitext(metadata):
    from kick_tasks import wikitext_ppl

    return wikitext_ppl.load_rows(metadata)


def _mmlu(subjects: Sequence[str] | None = None) -> Loader:
    def load(metadata):
        from kick_tasks import mmlu

        return [mmlu.load_subject(s, metadata) for s in (subjects or mmlu.SUBJECTS)]
    return load


def _triviaqa(metadata):
    from kick_tasks import triviaqa

    return triviaqa.load_split("validation", metadata)


def _summarization(buckets: Sequence[str]) -> Loader:
    def load(metadata):
        from kick_tasks import summarization

        return [summarization.load_bucket(b, metadata) for b in buckets]
    return load


def _instruction_following(metadata):
    from kick_tasks import instruction_following

    return instruction_following.load_docs(metadata)


def _mt_bench(metadata):
    from kick_tasks import mt_bench

    return mt_bench.load_docs(metadata)


def task_loaders() -> dict[str, Loader]:
    """kick task name -> the loader of its data (the same functions the tasks' ``custom_dataset`` call)."""
    from kick_tasks.mmlu import SUBJECTS

    table: dict[str, Loader] = {
        "kick_factoid_qa": _freebaseqa("eval"),
        "kick_factoid_qa_dev": _freebaseqa("dev"),
        "kick_factoid_qa_train": _freebaseqa("train"),
        "kick_mcr_qa": _mmlu(),
        "kick_icr_qa_closed": _triviaqa,
        "kick_icr_qa_open": _triviaqa,
        "kick_wikitext_ppl": _wikitext,
        "kick_summarization": _summarization(("small", "mid", "large")),
        "kick_instruction_following": _instruction_following,
        "kick_mt_bench": _mt_bench,
    }
    for bucket in ("small", "mid", "large"):
        table[f"kicksum_{bucket}"] = _summarization((bucket,))
    for subject in SUBJECTS:
        table[f"kickmmlu_{subject}"] = _mmlu((subject,))
    return table


GROUP_MEMBERS = ("kick_factoid_qa", "kick_mcr_qa", "kick_icr_qa_closed", "kick_icr_qa_open", "kick_wikitext_ppl",
                 "kick_summarization", "kick_instruction_following", "kick_mt_bench")


def expand_tasks(tasks: Iterable[str]) -> list[str]:
    """kick task names behind ``tasks`` (the ``kick`` group, patterns such as ``kick_*``); others dropped."""
    table = task_loaders()
    out: list[str] = []
    for name in tasks:
        if name == "kick":
            out += GROUP_MEMBERS
        elif name in table:
            out.append(name)
        else:
            out += fnmatch.filter(table, name)
    # a group's members are covered by the group's own loader
    if "kick_mcr_qa" in out:
        out = [t for t in out if not t.startswith("kickmmlu_")]
    if "kick_summarization" in out:
        out = [t for t in out if not t.startswith("kicksum_")]
    if "kick_icr_qa_open" in out and "kick_icr_qa_closed" in out:
        out.remove("kick_icr_qa_open")  # same data
    return list(dict.fromkeys(out))


def _describe(record: dict[str, Any]) -> str:
    text = f"{record['name']} <- {record['location']} {record['source']} ({record['records']} records, " \
           f"sha256 {record['sha256'][:12]})"
    if record.get("excerpt"):
        text += f"\n      excerpt: {record['excerpt']}"
    if record.get("stand_in"):
        text += f"\n      STAND-IN: {record['stand_in']}"
    return text


def check_data(tasks: Iterable[str], calibration_sources: Iterable[str] = (),
               metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Resolve the data of every kick task in ``tasks`` and every calibration source.

    Returns the provenance records; raises ONE :class:`PreflightError` naming every data set that
    could not be resolved and every place tried for it.
    """
    from kick_models.compress.calibration import resolve_source

    sink: dict[str, Any] = {}
    meta = {**(metadata or {}), "kick_data": sink}
    failures: list[str] = []
    records: list[dict[str, Any]] = []
    table = task_loaders()
    for task in expand_tasks(tasks):
        try:
            table[task](meta)
        except (FileNotFoundError, ValueError, OSError) as exc:
            failures.append(f"task {task}: {exc}")
    records += list(sink.values())
    for source in dict.fromkeys(calibration_sources):
        try:
            records.append(resolve_source(source)[2])
        except (FileNotFoundError, ValueError, OSError, ConnectionError) as exc:
            failures.append(f"calibration calib={source}: {exc}")
    if failures:
        raise PreflightError(
            f"{len(failures)} data set(s) needed by this run cannot be loaded; nothing was started:\n\n"
            + "\n\n".join(failures))
    return records


def describe(records: Sequence[dict[str, Any]]) -> str:
    """One line per source (records read from one folder, e.g. the 57 MMLU subjects, share a line)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["location"], r["source"]), []).append(r)
    lines = []
    for group in groups.values():
        if len(group) == 1:
            lines.append(f"  {_describe(group[0])}")
        else:
            n = sum(r["records"] or 0 for r in group)
            lines.append(f"  {group[0]['name']} and {len(group) - 1} more <- {group[0]['location']} "
                         f"{group[0]['source']} ({n} records)")
    return "\n".join(lines)


def metadata_from_lm_eval_args(args: Sequence[str]) -> dict[str, Any]:
    """The ``--metadata`` JSON among lm_eval arguments (its ``data_dir`` counts for the resolver)."""
    import json

    for i, arg in enumerate(args):
        value = None
        if arg == "--metadata" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--metadata="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                return {}
            return parsed if isinstance(parsed, dict) else {}
    return {}


def calibration_sources(configs) -> list[str]:
    """Calibration sources of the sweep configs that need one (their defaults filled by the compression core)."""
    from kick_models.compress.config import parser_for

    sources = []
    for c in configs:
        if c.method == "dense":
            continue
        args = dict(c.compression_args)
        cfg = parser_for(c.model)(args)[0]
        if cfg.needs_calibration and cfg.calibration is not None and not getattr(cfg, "sparsity", None) == 0:
            sources.append(cfg.calibration.source)
    return list(dict.fromkeys(sources))


def sweep_preflight(configs, tasks: Sequence[str], lm_eval_args: Sequence[str]) -> list[dict[str, Any]]:
    """``kick sweep``: check every data set of ``tasks`` and of the configs' calibration, print where each
    comes from (stand-ins flagged), return the records; a :class:`PreflightError` if any is missing."""
    import sys
    import time

    t0 = time.perf_counter()
    records = check_data(tasks, calibration_sources(configs), metadata_from_lm_eval_args(lm_eval_args))
    if records:
        print(f"kick sweep: data resolved in {time.perf_counter() - t0:.1f}s:\n{describe(records)}", file=sys.stderr)
    return records
