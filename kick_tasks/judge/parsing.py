"""Verdict parsing. Every parser returns ``None`` for an unparseable verdict (never raises).

* the paper's rules (``gpt4_judge.py`` of LLM-KICK): :func:`parse_paper_pair` (instruction following:
  the first line, commas to spaces, exactly two numbers) and :func:`parse_paper_four_pairs`
  (summarization: the first four lines, each read as ``X Y``);
* FastChat's rule for ``[[rating]]`` (:func:`parse_rating_fastchat`: the first ``[[x]]``, else the
  first ``[x]``);
* kick's tolerant parsers (opt-in, metric names ``*_robust``): :func:`parse_pair_robust`,
  :func:`parse_four_pairs_robust`, :func:`parse_rating`, :func:`parse_four_criteria`.
"""

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


# ---------------------------------------------------------------- the paper's and FastChat's rules
_FASTCHAT_ONE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_FASTCHAT_ONE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def parse_paper_pair(review: str | None) -> tuple[float, float] | None:
    """LLM-KICK ``parse_score`` (instruction following): ``review.split("\\n")[0]``, commas -> spaces,
    ``split(" ")`` must give exactly two fields, both ``float``-able; (Assistant 1, Assistant 2)."""
    if not isinstance(review, str):
        return None
    fields = review.split("\n")[0].replace(",", " ").split(" ")
    if len(fields) != 2:
        return None
    try:
        return float(fields[0]), float(fields[1])
    except ValueError:
        return None


def parse_paper_four_pairs(review: str | None) -> tuple[dict[str, float], dict[str, float]] | None:
    """LLM-KICK ``parse_score`` (summarization): lines 1-4 are coherence, consistency, fluency,
    relevance; each line's ``split(" ")[0]`` / ``[1]`` are Assistant 1's / Assistant 2's score
    (anything after the second field is ignored, as there). Any failure -> None."""
    if not isinstance(review, str):
        return None
    lines = review.split("\n")
    if len(lines) < 4:
        return None
    first: dict[str, float] = {}
    second: dict[str, float] = {}
    try:
        for name, line in zip(CRITERIA, lines[:4]):
            fields = line.split(" ")
            first[name], second[name] = float(fields[0]), float(fields[1])
    except (ValueError, IndexError):
        return None
    return first, second


def parse_rating_fastchat(text: str | None) -> float | None:
    """FastChat ``run_judge_single``: the FIRST ``[[x]]``, else the first ``[x]``; none -> invalid (-1 there)."""
    if not isinstance(text, str):
        return None
    match = _FASTCHAT_ONE.search(text) or _FASTCHAT_ONE_BACKUP.search(text)
    return float(match.group(1)) if match else None


# ---------------------------------------------------------------- kick's tolerant variants (opt-in)
_PAIR_LINE = re.compile(r"^\W*(?:assistant\s*1\s*[:=]?\s*)?\**\s*" + _NUM + r"\s*(?:/\s*10)?\s*\**\s*(?:[,;/|]|and|vs\.?)?"
                        r"\s*(?:assistant\s*2\s*[:=]?\s*)?\**\s*" + _NUM + r"\s*(?:/\s*10)?\W*$", re.IGNORECASE)


def _pair_in(line: str) -> tuple[float, float] | None:
    match = _PAIR_LINE.match(line.strip())
    if not match:
        return None
    a, b = float(match.group(1)), float(match.group(2))
    return (a, b) if _in_range(a) and _in_range(b) else None


_TUPLE = re.compile(r"\(\s*" + _NUM + r"\s*,\s*" + _NUM + r"\s*\)")


def parse_pair_robust(review: str | None) -> tuple[float, float] | None:
    """The first non-blank line if it holds just two scores (tolerates markdown, ``8/10``, ``Assistant 1: 8,
    Assistant 2: 9``, leading blank lines), else the LAST ``(x, y)`` tuple of the review (the paper's math
    prompt asks for a Python tuple at the end, which its first-line rule never reads); scores in 1..10."""
    if not isinstance(review, str):
        return None
    first = next((line for line in review.splitlines() if line.strip()), "")
    pair = _pair_in(first) if first else None
    if pair is None:
        tuples = _TUPLE.findall(review)
        if tuples:
            a, b = float(tuples[-1][0]), float(tuples[-1][1])
            pair = (a, b) if _in_range(a) and _in_range(b) else None
    return pair


def parse_four_pairs_robust(review: str | None) -> tuple[dict[str, float], dict[str, float]] | None:
    """The first four lines that hold two scores each (blank lines and criterion labels such as
    ``Coherence: 8 9`` tolerated), in the order coherence, consistency, fluency, relevance."""
    if not isinstance(review, str):
        return None
    pairs = []
    for line in review.splitlines():
        body = re.sub(r"^\W*(?:" + "|".join(CRITERIA) + r"|consistent)\W*", "", line.strip(), flags=re.IGNORECASE)
        pair = _pair_in(body) if body else None
        if pair is not None:
            pairs.append(pair)
            if len(pairs) == 4:
                break
        elif pairs and line.strip():
            return None  # the four lines must be consecutive (blank lines aside)
    if len(pairs) < 4:
        return None
    return ({c: p[0] for c, p in zip(CRITERIA, pairs)}, {c: p[1] for c, p in zip(CRITERIA, pairs)})
