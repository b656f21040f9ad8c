"""The paper's judged protocols, exactly as LLM-KICK's ``gpt4_judge.py`` ran them.

Files (the paper's release, unchanged): ``<data dir>/llm_kick_protocol/{instruction_following,
summarization}/{prompt,reviewer}.jsonl`` (else the paper's GitHub copy). For one question:

* :func:`gen_prompt` picks the reviewer whose ``category`` equals the question's (none: the first
  reviewer), its ``prompt_id`` picks the prompt, and the messages are ``[system: system_prompt,
  user: prompt_template.format(question, answer_1=<comparator>, answer_2=<evaluated model>, **defaults)]``;
* the judge samples at the paper's temperature (0.2 for instruction following; 0.1 for summarization:
  its ``get_eval`` hard-codes 0.1 although its ``reviewer.jsonl`` says 0.2) with 1,024 tokens;
* the review is parsed by the paper's rules (:mod:`.parsing`); an unparseable review is left out.

kick's opt-ins (``KICK_JUDGE_ORDERS=both``, ``KICK_JUDGE_EXTRAS=robust``) add metrics under their
own names (``*_debiased``, ``*_robust``) and never change the paper's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from kick_models.data import DataSchemaError, resolve

from .parsing import (CRITERIA, parse_four_pairs_robust, parse_pair_robust, parse_paper_four_pairs,
                      parse_paper_pair)
from .protocols import NAN, JudgeCall

PAPER_RAW = "https://raw.githubusercontent.com/VITA-Group/llm-kick/main"
#: protocol folder in the data dir -> folder of the paper's repository
PAPER_FOLDERS = {"instruction_following": "mt_conversation/table",
                 "summarization": "in-context_summarization/json_utils"}
#: the judge temperature the paper's ``get_eval`` hard-codes per task
PAPER_TEMPERATURE = {"instruction_following": 0.2, "summarization": 0.1}
PAPER_MAX_TOKENS = 1024  # gpt4_judge.py --max-tokens default (and reviewer.jsonl)


@dataclass(frozen=True)
class PaperProtocolFiles:
    task: str
    prompts: tuple[dict[str, Any], ...]
    reviewers: tuple[dict[str, Any], ...]


def _fetch(url: str):
    from .prompts import fetch_jsonl

    return fetch_jsonl(url)


def protocol_file(task: str, name: str, metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``llm_kick_protocol/<task>/<name>`` through the data resolver (else the paper's GitHub copy)."""
    from .task_glue import read_jsonl

    url = f"{PAPER_RAW}/{PAPER_FOLDERS[task]}/{name}"
    return resolve(f"the paper's {task} protocol file {name}", f"llm_kick_protocol/{task}/{name}",
                   read_jsonl, lambda: _fetch(url), online_description=url, metadata=metadata)


_LOADED: dict[str, PaperProtocolFiles] = {}


def load_protocol(task: str, metadata: dict[str, Any] | None = None) -> PaperProtocolFiles:
    """Read and check the paper's prompt/reviewer files of ``task``; remembered for this process (a task's
    ``load`` reads them with its ``--metadata``, the judge then reuses them)."""
    if metadata is None and task in _LOADED:
        return _LOADED[task]
    prompts = protocol_file(task, "prompt.jsonl", metadata)
    reviewers = protocol_file(task, "reviewer.jsonl", metadata)
    for number, prompt in enumerate(prompts, 1):
        missing = [k for k in ("prompt_id", "system_prompt", "prompt_template", "defaults") if k not in prompt]
        if missing or prompt["prompt_id"] != number:
            raise DataSchemaError(f"the paper's {task} prompt.jsonl line {number} is not the paper's format "
                                  f"(missing {missing} or prompt_id != {number}).")
    for reviewer in reviewers:
        if "category" not in reviewer or "prompt_id" not in reviewer:
            raise DataSchemaError(f"the paper's {task} reviewer.jsonl lacks category/prompt_id: {reviewer}.")
    files = PaperProtocolFiles(task, tuple(prompts), tuple(reviewers))
    _LOADED[task] = files
    return files


def gen_prompt(files: PaperProtocolFiles, category: str, question: str, answer_1: str,
               answer_2: str) -> tuple[str, str, int]:
    """The paper's ``gen_prompt``: (system prompt, user prompt, reviewer id)."""
    reviewer_idx = 0  # default to the general category (index 0)
    for idx, reviewer in enumerate(files.reviewers):
        if reviewer["category"] == category:
            reviewer_idx = idx
            break
    prompt_id = files.reviewers[reviewer_idx]["prompt_id"]
    prompt_json = files.prompts[prompt_id - 1]
    assert prompt_json["prompt_id"] == prompt_id
    prompt = prompt_json["prompt_template"].format(question=question, answer_1=answer_1, answer_2=answer_2,
                                                   **prompt_json["defaults"])
    return prompt_json["system_prompt"], prompt, reviewer_idx + 1


def _messages(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else NAN


class PaperPairwise:
    """The paper's pairwise judge for one task. Item keys: ``question`` (the paper's question text),
    ``category``, ``answer`` (evaluated model), ``comparator`` (Assistant 1's answer).

    ``orders="both"`` also asks with the answers swapped (adds ``*_debiased``); ``robust=True`` also
    parses every reply with kick's tolerant parser (adds ``*_robust``)."""

    def __init__(self, task: str, orders: str = "one", robust: bool = False, metadata: dict[str, Any] | None = None):
        if task not in PAPER_FOLDERS:
            raise ValueError(f"no paper protocol for {task!r}")
        self.task = task
        self.orders = orders
        self.robust = robust
        self.metadata = metadata
        self._files: PaperProtocolFiles | None = None
        self.four = task == "summarization"
        self.version = f"llm-kick-{task}-v1"
        self.temperature = PAPER_TEMPERATURE[task]
        base = (tuple(f"judge_{c}" for c in CRITERIA) if self.four else ()) + ("judge_score", "judge_ref_score")
        names = list(base)
        if orders == "both":
            names += [f"{m}_debiased" for m in base] + ["judge_win_rate_debiased"]
        if robust:
            names += [f"{m}_robust" for m in base] + ["judge_invalid_rate_robust"]
        self.metrics = tuple(names)

    @property
    def files(self) -> PaperProtocolFiles:
        if self._files is None:
            self._files = load_protocol(self.task, self.metadata)
        return self._files

    def applies(self, item: dict[str, Any]) -> bool:
        return bool(item.get("comparator"))

    def messages(self, item: dict[str, Any], swapped: bool = False) -> list[dict[str, str]]:
        first, second = (item["answer"], item["comparator"]) if swapped else (item["comparator"], item["answer"])
        system, user, _ = gen_prompt(self.files, item.get("category", ""), item["question"], first, second)
        return _messages(system, user)

    def calls(self, item: dict[str, Any]) -> list[JudgeCall]:
        orders = (False, True) if self.orders == "both" else (False,)
        return [JudgeCall(self.version, self.messages(item, swapped), self.temperature, PAPER_MAX_TOKENS)
                for swapped in orders]

    def _parse(self, reply: str | None, robust: bool):
        """(comparator scores, model scores) as dicts {criterion or "overall": score}, or None."""
        if self.four:
            parsed = (parse_four_pairs_robust if robust else parse_paper_four_pairs)(reply)
        else:
            pair = (parse_pair_robust if robust else parse_paper_pair)(reply)
            parsed = None if pair is None else ({"overall": pair[0]}, {"overall": pair[1]})
        return parsed

    def _metrics(self, model: dict[str, float] | None, ref: dict[str, float] | None, suffix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        if self.four:
            for c in CRITERIA:
                out[f"judge_{c}{suffix}"] = model[c] if model else NAN
        out[f"judge_score{suffix}"] = _mean(model.values()) if model else NAN
        out[f"judge_ref_score{suffix}"] = _mean(ref.values()) if ref else NAN
        return out

    def score(self, item: dict[str, Any], replies: list[str | None]) -> tuple[dict[str, float], int]:
        """The paper's metrics from the first (paper-order) reply; the opt-ins from the rest."""
        forward = self._parse(replies[0], robust=False)
        invalid = int(forward is None)
        out = self._metrics(forward[1] if forward else None, forward[0] if forward else None)
        if self.orders == "both":
            backward = self._parse(replies[1], robust=False)
            invalid += int(backward is None)
            if forward and backward:  # model = Assistant 2 forward, Assistant 1 backward
                keys = forward[1].keys()
                model = {k: (forward[1][k] + backward[0][k]) / 2 for k in keys}
                ref = {k: (forward[0][k] + backward[1][k]) / 2 for k in keys}
                out.update(self._metrics(model, ref, "_debiased"))
                m, r = out["judge_score_debiased"], out["judge_ref_score_debiased"]
                out["judge_win_rate_debiased"] = 1.0 if m > r else 0.5 if m == r else 0.0
            else:
                out.update(self._metrics(None, None, "_debiased"))
                out["judge_win_rate_debiased"] = NAN
        if self.robust:
            loose = self._parse(replies[0], robust=True)
            out.update(self._metrics(loose[1] if loose else None, loose[0] if loose else None, "_robust"))
            out["judge_invalid_rate_robust"] = float(loose is None)
        return out, invalid


@functools.lru_cache(maxsize=16)
def protocols_for(task: str, settings=None) -> tuple:
    """The paper's pairwise judge of ``task``, plus the opt-ins the judge settings ask for, each with its own
    metric names: ``four_criteria`` (kick's pairwise prompt, ``judge4c_*``) and, for instruction following,
    ``rating`` (FastChat single-answer grading, ``judge_rating``)."""
    from .protocols import PairwiseFourCriteria, SingleGrade

    extras = settings.extra_set if settings else frozenset()
    chosen: list = [PaperPairwise(task, orders=settings.orders if settings else "one", robust="robust" in extras)]
    if "four_criteria" in extras:
        chosen.append(PairwiseFourCriteria())
    if "rating" in extras and task == "instruction_following":
        chosen.append(SingleGrade(turn=1, metric="judge_rating", robust="robust" in extras))
    return tuple(chosen)
