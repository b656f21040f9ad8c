"""Judging protocols: which prompts to send for one answer and how to turn replies into metrics.

* :class:`PairwiseFourCriteria` -- the paper's protocol: the answer and a reference answer rated
  1-10 on coherence, consistency, fluency and relevance, asked in BOTH orders to cancel position bias.
* :class:`SingleGrade` -- FastChat single-answer grading (``[[rating]]``, 1-10), with the math
  variant (reference answer) and the multi-turn variants of MT-Bench.

A protocol's ``version`` is part of every cache key: change it whenever a prompt changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .parsing import CRITERIA, parse_four_criteria, parse_rating
from .prompts import PAIR_FOUR_CRITERIA_SYSTEM, PAIR_FOUR_CRITERIA_TEMPLATE, fastchat_judge_prompts

NAN = float("nan")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class JudgeCall:
    """One request to the judge; ``protocol`` (name + version) is part of the cache key."""

    protocol: str
    messages: Messages


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else NAN


class PairwiseFourCriteria:
    """Answer vs reference, four criteria, both orders. Item keys: question, answer, reference."""

    name = "pair4c"
    version = "kick-pair4c-v1"
    metrics = ("judge_coherence", "judge_consistency", "judge_fluency", "judge_relevance",
               "judge_score", "judge_ref_score", "judge_win_rate")

    def applies(self, item: dict[str, Any]) -> bool:
        return bool(item.get("reference"))

    def calls(self, item: dict[str, Any]) -> list[JudgeCall]:
        def ask(first: str, second: str) -> JudgeCall:
            text = PAIR_FOUR_CRITERIA_TEMPLATE.format(question=item["question"], answer_1=first, answer_2=second)
            return JudgeCall(self.version, [{"role": "system", "content": PAIR_FOUR_CRITERIA_SYSTEM},
                                            {"role": "user", "content": text}])

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
        out = {f"judge_{c}": model[c] for c in CRITERIA}
        out.update(judge_score=model_score, judge_ref_score=ref_score,
                   judge_win_rate=1.0 if model_score > ref_score else 0.5 if model_score == ref_score else 0.0)
        return out, invalid


class SingleGrade:
    """FastChat single-answer grading. Item keys: question(s), answer(s), optional ref_answer(s).

    ``turn=1`` grades ``answer`` to ``question``; ``turn=2`` grades the second answer of a two-turn
    conversation (``questions``/``answers`` of length 2) with the multi-turn prompt.
    """

    version_prefix = "fastchat"

    def __init__(self, turn: int = 1, metric: str = "judge_rating", data_dir: str | None = None):
        self.turn = turn
        self.metric = metric
        self.data_dir = data_dir
        self.metrics = (metric,)

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
                          [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": text}])]

    def score(self, item: dict[str, Any], replies: list[str | None]) -> tuple[dict[str, float], int]:
        rating = parse_rating(replies[0])
        return {self.metric: NAN if rating is None else rating}, int(rating is None)
