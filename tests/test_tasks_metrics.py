"""Normalizers and QA metrics of the kick knowledge tasks (kick_tasks.metrics)."""

import pytest

from kick_tasks import freebaseqa, triviaqa
from kick_tasks.metrics import (
    containment_match,
    exact_match,
    factoid_contains,
    normalize_squad,
    normalize_triviaqa,
    squash_spaces,
    token_f1,
    unique_aliases,
)


def test_normalize_squad():
    assert normalize_squad("The  Taming of the Shrew!") == "taming of shrew"
    assert normalize_squad("  An Apple, a day. ") == "apple day"
    assert normalize_squad("don't_stop") == "dontstop"  # punctuation (incl. _) deleted, not spaced


def test_normalize_triviaqa_matches_official_rules():
    # punctuation becomes a space (not deleted), underscores become spaces, curly quotes count as punctuation
    assert normalize_triviaqa("Don't_Stop") == "don t stop"
    assert normalize_triviaqa("\u2018The\u2019 Beatles") == "beatles"
    assert normalize_triviaqa("U.S.A.") == "u s"  # the 'a' is an article once punctuation is split off


def test_squash_spaces():
    assert squash_spaces("  Sandi Toksvig ") == "sanditoksvig"


def test_unique_aliases_drops_blanks_and_duplicates():
    assert unique_aliases(["mars", "", "  ", "mars", "Mars"]) == ["mars", "Mars"]


def test_factoid_contains_continuation_rule():
    aliases = ["sandi toksvig"]
    assert factoid_contains(" Sandi Toksvig, who hosted it.", aliases) == 1.0
    assert factoid_contains(" SandiToksvig", aliases) == 1.0  # spaces removed on both sides
    assert factoid_contains(" Sue Perkins.", aliases) == 0.0
    # blank aliases must not match everything
    assert factoid_contains("anything", ["", " "]) == 0.0


def test_answer_only_in_question_does_not_count():
    """The paper searched prompt + output; kick scores the continuation only."""
    doc = {"question": "Which Shakespeare play is 'Hamlet'?", "aliases": ["hamlet"]}
    prompt = freebaseqa.doc_to_text(doc)
    continuation = " a tragedy."
    assert factoid_contains(prompt + continuation, doc["aliases"]) == 1.0  # the paper's bug
    scores = freebaseqa.process_results(doc, [continuation])
    assert scores == {"contains_em": 0.0, "exact_match": 0.0, "token_f1": 0.0}


def test_factoid_aliases_any_matches():
    doc = {"question": "q", "aliases": ["leonardo da vinci", "da vinci", "leonardo"]}
    scores = freebaseqa.process_results(doc, [" Leonardo."])
    assert scores["contains_em"] == 1.0
    assert scores["exact_match"] == 1.0
    assert scores["token_f1"] == 1.0


def test_exact_match_and_f1_values():
    assert exact_match("The Taming of the Shrew.", ["taming of the shrew"]) == 1.0
    assert exact_match("Taming", ["taming of the shrew"]) == 0.0
    # pred tokens {taming}, gold {taming, of, shrew}: P=1, R=1/3 -> F1 = 0.5
    assert token_f1("Taming", ["the taming of the shrew"]) == pytest.approx(0.5)
    # max over aliases
    assert token_f1("william shakespeare wrote it", ["shakespeare", "william shakespeare"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("", ["x"]) == 0.0
    assert exact_match("x", []) == 0.0


def test_containment_match_both_directions():
    aliases = ["William Shakespeare"]
    assert containment_match("It was William Shakespeare.", aliases) == 1.0  # alias in prediction
    assert containment_match("Shakespeare", aliases) == 1.0  # prediction in alias
    assert containment_match("Marlowe", aliases) == 0.0


def test_containment_empty_prediction_scores_zero():
    """The paper's code counted an empty answer as correct ("" in alias)."""
    assert containment_match("", ["paris"]) == 0.0
    assert containment_match(" the . ", ["paris"]) == 0.0  # normalizes to ""


def test_triviaqa_first_line_extraction():
    doc = {"aliases": ["paris", "Paris, France"]}
    assert triviaqa.first_line("\n\n Paris\nQ: next") == "Paris"
    assert triviaqa.process_results(doc, ["\n Paris, France\nblah"]) == {"contains_em": 1.0, "exact_match": 1.0, "token_f1": 1.0}
    scores = triviaqa.process_results(doc, [" The city of Paris\n"])
    assert scores["contains_em"] == 1.0 and scores["exact_match"] == 0.0
    assert 0.0 < scores["token_f1"] < 1.0
