"""Judging protocols: which prompts to send for one answer and how to turn replies into metrics.

* the paper's own pairwise protocols live in :mod:`.paper` (the defaults of the LLM-KICK tasks);
* :class:`PairwiseFourCriteria` -- kick's opt-in (``KICK_JUDGE_EXTRAS=four_criteria``, metrics
  ``judge4c_*``): the answer and a reference rated 1-10 on coherence, consistency, fluency and
  relevance, asked in BOTH orders to cancel position bias;
* :class:`SingleGrade` -- FastChat single-answer grading (``[[rating]]``, parsed as FastChat does,
  temperature 0, 2,048 judge tokens), with the math and multi-turn variants of MT-Bench.

A protocol's ``version`` is part of every cache key: change it whenever a prompt changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .parsing import CRITERIA, parse_four_criteria, parse_rating, parse_rating_fastchat
from .prompts import PAIR_FOUR_CRITERIA_SYSTEM, PAIR_FOUR_CRITERIA_TEMPLATE, fastchat_judge_prompts

NAN = float("nan")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class JudgeCall:
    """One request to the judge; ``protocol`` (name + version) is part of the cache key.

    ``temperature`` / ``max_tokens`` are the protocol's own sampling settings (the user's
    ``KICK_JUDGE_TEMPERATURE`` / ``KICK_JUDGE_MAX_TOKENS`` override them)."""

    protocol: str
    messages: Messages
    temperature: float = 0.0
    max_tokens: int = 1024


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else NAN


class PairwiseFourCriteria:
    """kick's opt-in: answer vs reference, four criteria, both orders. Item keys: question, answer,
    reference. Metric names ``<prefix>coherence`` ... ``<prefix>win_rate`` (default prefix ``judge4c_``)."""

    name = "pair4c"
    version = "kick-pair4c-v1"

    def __init__(self, prefix: str = "judge4c_"):
        self.prefix = prefix
        self.metrics = tuple(prefix + m for m in ("coherence", "consistency", "fluency", "relevance",
                                                   "score", "ref_score", "win_rate"))

    def applies(self, item: dict[str, Any]) -> bool:
        return bool(item.get("reference"))

    def calls(self, item: dict[str, Any]) -> list[JudgeCall]:
        def ask(first: str, second: str) -> JudgeCall:
            text = PAIR_FOUR_CRITERIA_TEMPLATE.format(question=item["question"], answer_1=first, answer_2=second)
            return JudgeCall(self.version, [{"role": "system", "content": PAIR_FOUR_CRITERIA_SYSTEM},
                                            {"role": "user", "content": text}], 0.0, 512)

        return [ask(item["answer"], item["reference"]), ask(item["reference"], item["answer"])]

    def score(self, item: dict[str, Any], replies: list[str | None]) -> tuple[dict[str, float], int]:
        """Metrics (NaN when either order is unparseable) and the number of invalid verdicts."""
        forward, backward = (parse_four_criteria(r) for r in replies)
        invalid = int(forward is None) + int(backward is None)
        if forward is None or backward is None:
            return {m: NAN for m in self.metrics}, invalid
        model = {c: (forward[0][c] + backward[1][c]) / 2 for c in CRITERIA}   # model is 1st, then 2nd
        ref = {c: (forward[1][c] + backward[0][c]) / 2 for c in CRITERIA}
        model_score, ref_score = _mean(list(model.values())), _mean(list(ref.values()))
        p = self.prefix
        out = {f"{p}{c}": model[c] for c in CRITERIA}
        out.update({f"{p}score": model_score, f"{p}ref_score": ref_score,
                    f"{p}win_rate": 1.0 if model_score > ref_score else 0.5 if model_score == ref_score else 0.0})
        return out, invalid


class SingleGrade:
    """FastChat single-answer grading. Item keys: question(s), answer(s), optional ref_answer(s).

    ``turn=1`` grades ``answer`` to ``question``; ``turn=2`` grades the second answer of a two-turn
    conversation (``questions``/``answers`` of length 2) with the multi-turn prompt.
    """

    version_prefix = "fastchat"
    max_tokens = 2048  # FastChat gen_judgment: chat_completion_openai(..., temperature=0, max_tokens=2048)

    def __init__(self, turn: int = 1, metric: str = "judge_rating", data_dir: str | None = None, robust: bool = False):
        self.turn = turn
        self.metric = metric
        self.data_dir = data_dir
        self.robust = robust
        self.metrics = (metric,) + ((f"{metric}_robust",) if robust else ())

    def applies(self, item: dict[str, Any]) -> bool:
        return self.turn == 1 or len(item.get("answers") or []) >= 2

    def _prompt_name(self, item: dict[str, Any]) -> str:
        math_variant = bool(item.get("ref_answers") or item.get("ref_answer"))
        base = "single-math-v1" if math_variant else "single-v1"
        return base + ("-multi-turn" if self.turn == 2 else "")

    def calls(self, item: dict[str, Any]) -> list[JudgeCall]:
        name = self._prompt_name(item)
        prompt = fastchat_judge_prompts(self.data_dir)[name]
        if self.turn == 1:
            fields = {"question": item["question"], "answer": item["answer"],
                      "ref_answer_1": item.get("ref_answer") or (item.get("ref_answers") or [""])[0]}
        else:
            q, a = item["questions"], item["answers"]
            refs = list(item.get("ref_answers") or ["", ""]) + ["", ""]
            fields = {"question_1": q[0], "question_2": q[1], "answer_1": a[0], "answer_2": a[1],
                      "ref_answer_1": refs[0], "ref_answer_2": refs[1]}
        text = prompt["prompt_template"].format(**fields)
        return [JudgeCall(f"{self.version_prefix}-{name}",
                          [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": text}],
                          0.0, self.max_tokens)]

    def score(self, item: dict[str, Any], replies: list[str | None]) -> tuple[dict[str, float], int]:
        """FastChat's parse (the first ``[[x]]``, else ``[x]``); with ``robust`` also kick's tolerant one."""
        rating = parse_rating_fastchat(replies[0])
        out = {self.metric: NAN if rating is None else rating}
        if self.robust:
            loose = parse_rating(replies[0])
            out[f"{self.metric}_robust"] = NAN if loose is None else loose
        return out, int(rating is None)
