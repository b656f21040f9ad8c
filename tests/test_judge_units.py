"""Unit tests of the judge package and the judged tasks' data/prompt code (no servers)."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from kick_models.data import DataNotFoundError
from kick_tasks.judge.cache import JudgeCache, cache_key
from kick_tasks.judge.errors import JudgeConfigError
from kick_tasks.judge.parsing import parse_four_criteria, parse_pair_verdict, parse_rating
from kick_tasks.judge.protocols import PairwiseFourCriteria, SingleGrade
from kick_tasks.judge.settings import settings_from


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize("text,expected", [
    ("Explanation... Rating: [[7]]", 7.0),
    ("[[8.5]]", 8.5),
    ("first [[3]] then final [[9]]", 9.0),
    ("Rating: [6]", 6.0),
    ("**Rating:** 4/10", 4.0),
    ("Rating: [[11]]", None),
    ("Rating: [[0]]", None),
    ("no verdict here", None),
    ("", None),
    (None, None),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


def test_parse_four_criteria_tolerant_formats():
    text = ("**Assistant 1**: Coherence: 8/10, Consistency = 7, fluency=9, relevance: 6\n"
            "Assistant 2 - coherence 5, consistency 4, fluency 3, relevance 2\nbecause ...")
    first, second = parse_four_criteria(text)
    assert first == {"coherence": 8, "consistency": 7, "fluency": 9, "relevance": 6}
    assert second == {"coherence": 5, "consistency": 4, "fluency": 3, "relevance": 2}


@pytest.mark.parametrize("text", [
    "Assistant 1: coherence=8, consistency=7, fluency=9",              # criterion missing, no assistant 2
    "Assistant 1: coherence=8, consistency=7, fluency=9, relevance=6",  # assistant 2 missing
    "Assistant 1: coherence=80, consistency=7, fluency=9, relevance=6\n"
    "Assistant 2: coherence=8, consistency=7, fluency=9, relevance=6",  # out of range
    "banana", "", None,
])
def test_parse_four_criteria_invalid(text):
    assert parse_four_criteria(text) is None


def test_parse_pair_verdict():
    assert parse_pair_verdict("... [[A]]") == "A"
    assert parse_pair_verdict("[[C]]") == "C"
    assert parse_pair_verdict("[[A]] or [[B]]") is None
    assert parse_pair_verdict("A") is None


# ---------------------------------------------------------------- protocols
def _verdict(a, b):
    fmt = "Assistant {n}: coherence={0}, consistency={1}, fluency={2}, relevance={3}"
    return fmt.format(*a, n=1) + "\n" + fmt.format(*b, n=2)


def test_pairwise_both_orders_cancel_position():
    protocol = PairwiseFourCriteria()
    item = {"question": "Q?", "answer": "model answer", "reference": "reference answer"}
    calls = protocol.calls(item)
    assert len(calls) == 2
    # order 1: model is Assistant 1; order 2: model is Assistant 2
    assert calls[0].messages[1]["content"].index("model answer") < calls[0].messages[1]["content"].index("reference answer")
    assert calls[1].messages[1]["content"].index("reference answer") < calls[1].messages[1]["content"].index("model answer")
    # a judge that always favours position 1 by +2: model and reference end up equal
    replies = [_verdict((8, 8, 8, 8), (6, 6, 6, 6)), _verdict((8, 8, 8, 8), (6, 6, 6, 6))]
    scores, invalid = protocol.score(item, replies)
    assert invalid == 0
    assert scores["judge4c_score"] == scores["judge4c_ref_score"] == 7.0   # kick's opt-in: its own names
    assert scores["judge4c_win_rate"] == 0.5
    replies = [_verdict((9, 7, 5, 3), (2, 2, 2, 2)), _verdict((4, 4, 4, 4), (7, 7, 7, 7))]
    scores, invalid = protocol.score(item, replies)
    assert scores["judge4c_coherence"] == 8.0 and scores["judge4c_relevance"] == 5.0
    assert scores["judge4c_score"] == pytest.approx(6.5) and scores["judge4c_ref_score"] == 3.0
    assert scores["judge4c_win_rate"] == 1.0


def test_pairwise_one_bad_order_is_invalid_not_a_crash():
    protocol = PairwiseFourCriteria()
    item = {"question": "Q", "answer": "a", "reference": "r"}
    scores, invalid = protocol.score(item, [_verdict((5, 5, 5, 5), (5, 5, 5, 5)), "nonsense"])
    assert invalid == 1 and math.isnan(scores["judge4c_score"])
    assert not protocol.applies({"question": "Q", "answer": "a", "reference": ""})


def test_single_grade_uses_fastchat_prompts(data_dir):
    plain = SingleGrade(turn=1).calls({"question": "Why?", "answer": "Because."})[0]
    assert plain.protocol == "fastchat-single-v1"
    assert "[[rating]]" in plain.messages[1]["content"] and "Because." in plain.messages[1]["content"]
    math_call = SingleGrade(turn=1).calls({"question": "2+2?", "answer": "5", "ref_answer": "4"})[0]
    assert math_call.protocol == "fastchat-single-math-v1" and "4" in math_call.messages[1]["content"]
    item = {"questions": ["q1", "q2"], "answers": ["a1-own", "a2"], "ref_answers": []}
    turn2 = SingleGrade(turn=2).calls(item)[0]
    assert turn2.protocol == "fastchat-single-v1-multi-turn"
    assert "a1-own" in turn2.messages[1]["content"] and "a2" in turn2.messages[1]["content"]
    assert SingleGrade(turn=1).score({}, ["Rating: [[6]]"]) == ({"judge_rating": 6.0}, 0)
    assert plain.max_tokens == 2048 and plain.temperature == 0.0          # FastChat's gen_judgment settings
    assert SingleGrade(turn=1).score({}, ["[[3]] ... final [[9]]"])[0] == {"judge_rating": 3.0}   # FastChat: first
    scores, bad = SingleGrade(turn=1).score({}, ["whatever"])
    assert bad == 1 and math.isnan(scores["judge_rating"])


# ---------------------------------------------------------------- settings
def test_settings_from_env_and_metadata():
    env = {"KICK_JUDGE_BASE_URL": "http://127.0.0.1:9/v1", "KICK_JUDGE_MODEL": "m", "KICK_JUDGE_CONCURRENCY": "3"}
    s = settings_from(None, environ=env)
    assert (s.backend, s.model, s.concurrency, s.api_key_env) == ("openai", "m", 3, "OPENAI_API_KEY")
    s2 = settings_from({"judge_model": "other", "judge_api_key_env": "MY_KEY"}, environ=env)
    assert s2.model == "other" and s2.api_key_env == "MY_KEY"
    assert s.identity() != s2.identity()
    assert not settings_from(None, environ={}).enabled


@pytest.mark.parametrize("metadata,env,fragment", [
    ({"judge_api_key": "sk-x"}, {}, "API keys must never"),
    ({}, {"KICK_JUDGE_BACKEND": "openai", "KICK_JUDGE_MODEL": "m"}, "needs a base URL"),
    ({}, {"KICK_JUDGE_BASE_URL": "127.0.0.1:8000", "KICK_JUDGE_MODEL": "m"}, "not an http"),
    ({}, {"KICK_JUDGE_BASE_URL": "http://x/v1"}, "needs a model"),
    ({}, {"KICK_JUDGE_BACKEND": "claude"}, "unknown"),
    ({}, {"KICK_JUDGE_BASE_URL": "http://x/v1", "KICK_JUDGE_MODEL": "m", "KICK_JUDGE_API_KEY_ENV": "sk-abc def"},
     "must NAME"),
])
def test_settings_errors(metadata, env, fragment):
    with pytest.raises(JudgeConfigError, match=fragment):
        settings_from(metadata, environ=env)


# ---------------------------------------------------------------- cache
def test_cache_persists_and_separates_judges(tmp_path):
    path = tmp_path / "judge.sqlite"
    messages = [{"role": "user", "content": "rate this"}]
    k1 = cache_key("openai|http://a/v1|m", "p-v1", messages, {"max_tokens": 8})
    k2 = cache_key("openai|http://b/v1|m", "p-v1", messages, {"max_tokens": 8})
    k3 = cache_key("openai|http://a/v1|m", "p-v2", messages, {"max_tokens": 8})
    assert len({k1, k2, k3}) == 3
    cache = JudgeCache(path)
    assert cache.get(k1) is None
    cache.put(k1, "openai|http://a/v1|m", "p-v1", "[[5]]")
    cache.close()
    reopened = JudgeCache(path)
    assert reopened.get(k1) == "[[5]]" and reopened.get(k2) is None
    assert (reopened.hits, reopened.misses, len(reopened)) == (1, 1, 1)
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(judgements)")]
    assert columns == ["key", "identity", "protocol", "response", "created"]


# ---------------------------------------------------------------- task data and prompts
def test_summarization_prompt_has_no_highlights(data_dir):
    from kick_tasks import summarization

    docs = {b: summarization.load_bucket(b) for b in summarization.BUCKETS}
    # one doc per story file of each bucket (the real data: 30 each)
    assert [len(docs[b]) for b in summarization.BUCKETS] == [
        len(list((data_dir / "cnn_stories" / b).glob("*.story"))) for b in summarization.BUCKETS]
    for bucket, bucket_docs in docs.items():
        for doc in bucket_docs:
            prompt = summarization.doc_to_text(doc)
            assert prompt.startswith(summarization.INSTRUCTIONS[bucket] + "\n\n")
            assert "@highlight" not in prompt
            assert doc["highlights"] and prompt == doc["paper_text"].split("@highlight")[0]
    raw = (data_dir / "cnn_stories" / "small" / f"{docs['small'][0]['story_id']}.story").read_text()
    assert docs["small"][0]["highlights"][0] in raw


def test_parse_story_format():
    from kick_tasks.summarization import parse_story

    story, highlights = parse_story("Line one.\n\nLine two.\n\n@highlight\n\nFirst point\n\n@highlight\n\nSecond point\n")
    assert story == "Line one.\n\nLine two." and highlights == ["First point", "Second point"]


def test_summarization_without_data_explains(tmp_path, monkeypatch):
    from kick_tasks import summarization

    monkeypatch.setenv("KICK_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="no canonical download"):
        summarization.load_bucket("small")
    with pytest.raises(ValueError, match="unknown summarization bucket"):
        summarization.load_bucket("huge")


def test_rouge_and_stats():
    from kick_tasks.judge.task_glue import answer_stats
    from kick_tasks.summarization import rouge

    same = rouge("the cat sat on the mat", "the cat sat on the mat")
    assert same == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge("dogs bark", "the cat sat")["rouge1"] == 0.0
    assert answer_stats("  ") == {"words": 0.0, "empty_rate": 1.0}
    assert answer_stats("two words") == {"words": 2.0, "empty_rate": 0.0}


def test_vicuna_and_mt_bench_docs(data_dir):
    from kick_tasks import instruction_following, mt_bench

    def lines(path):  # counted from the files (the real data: 80 questions each, 10 and 30 references)
        return [json.loads(line) for line in (data_dir / path).read_text().splitlines() if line.strip()]

    vicuna = instruction_following.load_docs()
    assert len(vicuna) == len(lines("vicuna_bench/question.jsonl")) and all(d["reference"] for d in vicuna)
    assert sum(bool(d["ref_answer"]) for d in vicuna) == len(lines("vicuna_bench/reference_answer_gpt-4.jsonl"))
    mt = mt_bench.load_docs()
    assert len(mt) == len(lines("mt_bench/question.jsonl")) and all(len(d["turns"]) == 2 for d in mt)
    with_refs = [d for d in mt if d["ref_answers"]]
    assert len(with_refs) == len(lines("mt_bench/reference_answer_gpt-4.jsonl"))
    assert {d["category"] for d in with_refs} == {"math", "reasoning", "coding"}


def test_turn2_prompt_contains_own_turn1_answer(tiny_llama_dir):
    from lm_eval.models.huggingface import HFLM

    from kick_tasks.mt_bench import turn2_context, turn2_messages

    doc = {"turns": ["Write a haiku.", "Now make it rhyme."]}
    own = "Autumn wind whispers / model answer 42"
    assert turn2_messages(doc, own)[1] == {"role": "assistant", "content": own}
    lm = HFLM(pretrained=str(tiny_llama_dir), device="cpu")
    chat = turn2_context(doc, own, lm, apply_chat_template=True)
    assert chat == ("<|im_start|>user\nWrite a haiku.<|im_end|>\n<|im_start|>assistant\n" + own +
                    "<|im_end|>\n<|im_start|>user\nNow make it rhyme.<|im_end|>\n<|im_start|>assistant\n")
    plain = turn2_context(doc, own, None, apply_chat_template=False)
    assert plain.startswith("Write a haiku." + own) and plain.endswith("Now make it rhyme.")


def test_task_names_and_wildcard():
    from kick_tasks import task_manager

    tm = task_manager(include_defaults=False)
    matched = tm.match_tasks(["kick_*"])
    for name in ("kick_summarization", "kick_instruction_following", "kick_mt_bench"):
        assert name in matched
    assert not [m for m in matched if m.startswith("kicksum_")]  # no group/subtask double match
    from lm_eval.tasks import get_task_dict

    mine = [m for m in matched if m in ("kick_summarization", "kick_instruction_following", "kick_mt_bench")]
    task_dict = get_task_dict(mine, tm)  # raises "Duplicate task" on a naming clash
    assert len(task_dict) == 3
