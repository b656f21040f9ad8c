"""Answer normalizers and QA metrics shared by the kick knowledge tasks.

Three families of scores, each a pure function of (prediction, aliases):

* the LLM-KICK papers' scores, reproduced rule for rule (with their bugs fixed,
  see each docstring):
  - :func:`factoid_contains` (FreebaseQA): an alias, lower-cased and with all
    spaces removed, is a substring of the prediction treated the same way;
  - :func:`containment_match` (TriviaQA): after TriviaQA normalization, the
    prediction contains an alias or an alias contains the prediction;
* SQuAD-style strict scores: :func:`exact_match` and :func:`token_f1` (max over
  aliases) with a pluggable normalizer (:func:`normalize_squad` by default,
  :func:`normalize_triviaqa` for TriviaQA).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable

Normalizer = Callable[[str], str]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SQUAD_PUNCT = set(string.punctuation)
_TRIVIAQA_PUNCT = set(string.punctuation + "\u2018\u2019\u00b4`")


def normalize_squad(text: str) -> str:
    """SQuAD v1.1 normalization: lower case, drop punctuation, articles and extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _SQUAD_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_triviaqa(text: str) -> str:
    """The official TriviaQA normalization (also the LLM-KICK code's).

    Underscores become spaces, lower case, punctuation (plus the quote marks
    ``‘ ’ ´ `` ` ``) becomes a space, articles are dropped, whitespace collapsed.
    """
    text = text.replace("_", " ").lower()
    text = "".join(" " if ch in _TRIVIAQA_PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split()).strip()


def squash_spaces(text: str) -> str:
    """The LLM-KICK FreebaseQA rule: lower case and remove every space character."""
    return text.strip().replace(" ", "").lower()


def unique_aliases(aliases: Iterable[str]) -> list[str]:
    """Aliases in first-seen order without duplicates or empty/blank strings."""
    seen: dict[str, None] = {}
    for alias in aliases:
        if isinstance(alias, str) and alias.strip() and alias not in seen:
            seen[alias] = None
    return list(seen)


def factoid_contains(prediction: str, aliases: Iterable[str]) -> float:
    """LLM-KICK's FreebaseQA score: 1.0 if a squashed alias occurs in the squashed prediction.

    Pass the model's GENERATED CONTINUATION only. The paper's code searched the
    whole decoded output, prompt included, so an answer that merely appears in
    the question counted as correct; scoring the continuation fixes that. Blank
    aliases are ignored (an empty string is contained in everything).
    """
    squashed = squash_spaces(prediction)
    for alias in unique_aliases(aliases):
        needle = squash_spaces(alias)
        if needle and needle in squashed:
            return 1.0
    return 0.0


def containment_match(prediction: str, aliases: Iterable[str], normalize: Normalizer = normalize_triviaqa) -> float:
    """LLM-KICK's TriviaQA "exact match": normalized prediction contains an alias or vice versa.

    Fix over the paper's code: an empty (normalized) prediction scores 0; there
    ``"" in alias`` made every empty answer correct.
    """
    pred = normalize(prediction)
    if not pred:
        return 0.0
    for alias in unique_aliases(aliases):
        gold = normalize(alias)
        if gold and (gold in pred or pred in gold):
            return 1.0
    return 0.0


def exact_match(prediction: str, aliases: Iterable[str], normalize: Normalizer = normalize_squad) -> float:
    """1.0 if the normalized prediction equals any normalized alias."""
    pred = normalize(prediction)
    return float(any(pred == normalize(alias) for alias in unique_aliases(aliases)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, aliases: Iterable[str], normalize: Normalizer = normalize_squad) -> float:
    """SQuAD token-level F1 of the normalized prediction, maximised over aliases."""
    pred_tokens = normalize(prediction).split()
    best = 0.0
    for alias in unique_aliases(aliases):
        best = max(best, _f1(pred_tokens, normalize(alias).split()))
    return best
