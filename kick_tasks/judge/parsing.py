"""Robust verdict parsing. Every parser returns ``None`` for an unparseable verdict (never raises)."""

from __future__ import annotations

import re

CRITERIA = ("coherence", "consistency", "fluency", "relevance")
_NUM = r"(\d+(?:\.\d+)?)"
_RATING_BRACKETS = re.compile(r"\[\[\s*" + _NUM + r"\s*(?:/\s*10\s*)?\]\]")
_RATING_SINGLE_BRACKET = re.compile(r"\[\s*" + _NUM + r"\s*(?:/\s*10\s*)?\]")
_RATING_WORD = re.compile(r"rating\s*[:=]?\s*\**\s*" + _NUM + r"(?:\s*/\s*10)?", re.IGNORECASE)


def _in_range(value: float, low: float = 1.0, high: float = 10.0) -> bool:
    return low <= value <= high


def parse_rating(text: str | None) -> float | None:
    """FastChat single-answer grading: ``[[7]]`` (falls back to ``[7]`` / ``Rating: 7``); 1..10."""
    if not text:
        return None
    for pattern in (_RATING_BRACKETS, _RATING_SINGLE_BRACKET, _RATING_WORD):
        matches = pattern.findall(text)
        if matches:
            value = float(matches[-1])  # the final verdict comes last
            return value if _in_range(value) else None
    return None


def parse_pair_verdict(text: str | None) -> str | None:
    """FastChat pairwise verdict: ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). Ambiguous -> None."""
    if not text:
        return None
    found = set(re.findall(r"\[\[\s*([ABC])\s*\]\]", text))
    return found.pop() if len(found) == 1 else None


def _criteria_in(segment: str) -> dict[str, float] | None:
    scores: dict[str, float] = {}
    for name in CRITERIA:
        match = re.search(name + r"\s*\**\s*[:=\-]?\s*\**\s*" + _NUM + r"(?:\s*/\s*10)?", segment, re.IGNORECASE)
        if match is None:
            return None
        value = float(match.group(1))
        if not _in_range(value):
            return None
        scores[name] = value
    return scores


def parse_four_criteria(text: str | None) -> tuple[dict[str, float], dict[str, float]] | None:
    """The pairwise four-criteria verdict: scores of Assistant 1 and Assistant 2.

    Expected (tolerant to case, ``:``/``=``, markdown bold, ``/10``)::

        Assistant 1: coherence=8, consistency=7, fluency=9, relevance=8
        Assistant 2: coherence=6, consistency=6, fluency=7, relevance=5
    """
    if not text:
        return None
    parts = re.split(r"assistant\s*([12])\s*\**\s*[:\-]?", text, flags=re.IGNORECASE)
    # parts = [before, "1", seg1, "2", seg2, ...]; take the first segment for each assistant that parses
    found: dict[str, dict[str, float]] = {}
    for i in range(1, len(parts) - 1, 2):
        which, segment = parts[i], parts[i + 1]
        if which not in found:
            scores = _criteria_in(segment)
            if scores is not None:
                found[which] = scores
    if "1" in found and "2" in found:
        return found["1"], found["2"]
    return None
