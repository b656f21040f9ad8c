"""The paper's judged protocols: exact judge messages (through a real recording HTTP server), the paper's
parsing rules, its default metrics vs kick's opt-ins, the comparator order, context fitting, cache identity.

The expected messages are built HERE from the paper's protocol files with a transcription of the paper's
``gen_prompt`` (LLM-KICK ``gpt4_judge.py``), independently of kick's code.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.judge.helpers import clean_env, free_port, start_fake, stop, write_samples

PROTOCOL = Path("llm_kick_protocol")


# ---------------------------------------------------------------- the paper's code, transcribed
def paper_gen_prompt(reviewer_jsons, prompt_jsons, cat, ques, ans1, ans2):
    """Verbatim logic of LLM-KICK's gpt4_judge.gen_prompt (both tasks use the same function)."""
    reviewer_idx = 0
    for idx, reviewer in enumerate(reviewer_jsons):
        if reviewer["category"] == cat:
            reviewer_idx = idx
            break
    prompt_id = reviewer_jsons[reviewer_idx]["prompt_id"]
    prompt_json = prompt_jsons[prompt_id - 1]
    assert prompt_json["prompt_id"] == prompt_id
    sys_prompt = prompt_json["system_prompt"]
    prompt = prompt_json["prompt_template"].format(question=ques, answer_1=ans1, answer_2=ans2, **prompt_json["defaults"])
    return sys_prompt, prompt, reviewer_idx + 1


def paper_parse_if(review):
    """LLM-KICK mt_conversation/gpt4_judge.parse_score."""
    try:
        score_pair = review.split("\n")[0]
        score_pair = score_pair.replace(",", " ")
        sp = score_pair.split(" ")
        if len(sp) == 2:
            return [float(sp[0]), float(sp[1])]
        raise Exception("Invalid score pair.")
    except Exception:
        return [-1, -1]


def paper_parse_sum(review):
    """LLM-KICK in-context_summarization/gpt4_judge.parse_score."""
    try:
        lines = review.split("\n")
        return {k: [float(lines[i].split(" ")[0]), float(lines[i].split(" ")[1])]
                for i, k in enumerate(("coherence", "consistent", "fluency", "relevance"))}
    except Exception:
        return [-1, -1]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _judge_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)


def _summary(folder: Path, task: str) -> dict:
    files = sorted(folder.glob(f"judged_{task}_*.summary.json"))
    assert files, f"no summary for {task} in {folder}"
    return json.loads(files[-1].read_text())


# ---------------------------------------------------------------- parsing, the paper's rules
@pytest.mark.parametrize("review", [
    "8 9\nAssistant 2 is better.", "8,9\nx", "7.5 10", "8, 9\nx", "8  9", "Assistant 1: 8\nAssistant 2: 9",
    "\n8 9", "8 9 10", "", "eight nine", "8 9.\nx", "10 1\r\nwhy",
])
def test_paper_pair_parsing_matches_the_paper(review):
    from kick_tasks.judge.parsing import parse_paper_pair

    expected = paper_parse_if(review)
    got = parse_paper_pair(review)
    assert (got is None and expected == [-1, -1]) or list(got) == expected


def test_paper_pair_parsing_cases():
    from kick_tasks.judge.parsing import parse_pair_robust, parse_paper_pair

    assert parse_paper_pair("8 9\nbecause") == (8.0, 9.0)
    assert parse_paper_pair("8,9") == (8.0, 9.0)          # comma -> space
    assert parse_paper_pair("8, 9") is None               # "8  9" -> three fields: invalid in the paper too
    assert parse_paper_pair("\n8 9") is None              # the first line is empty
    assert parse_paper_pair(None) is None
    # kick's tolerant parser (opt-in) reads what the paper's rejects
    assert parse_pair_robust("8, 9") == (8.0, 9.0)
    assert parse_pair_robust("\n**Assistant 1: 8/10, Assistant 2: 9/10**") == (8.0, 9.0)
    assert parse_pair_robust("Assistant 1 was better overall.") is None
    assert parse_pair_robust("Solving it.\n(3, 4) at first, finally (7, 8.5)") == (7.0, 8.5)
    assert parse_pair_robust("80 9") is None              # out of 1..10


@pytest.mark.parametrize("review", [
    "8 9\n7 6\n5 4\n3 2\nExplanation", "8 9 extra\n7 6\n5 4\n3 2", "8, 9\n7 6\n5 4\n3 2", "8 9\n7 6\n5 4",
    "Coherence: 8 9\n7 6\n5 4\n3 2", "8 9\n7 6\n\n5 4\n3 2", "",
])
def test_paper_four_pairs_parsing_matches_the_paper(review):
    from kick_tasks.judge.parsing import CRITERIA, parse_paper_four_pairs

    expected = paper_parse_sum(review)
    got = parse_paper_four_pairs(review)
    if expected == [-1, -1]:
        assert got is None
    else:
        first, second = got
        paper_keys = ("coherence", "consistent", "fluency", "relevance")
        assert [[first[c], second[c]] for c in CRITERIA] == [expected[k] for k in paper_keys]


def test_four_pairs_robust_and_fastchat_rating():
    from kick_tasks.judge.parsing import parse_four_pairs_robust, parse_rating_fastchat

    first, second = parse_four_pairs_robust("Coherence: 8 9\nConsistency: 7, 6\n\nFluency: 5 4\nRelevance: 3 2\nx")
    assert list(first.values()) == [8, 7, 5, 3] and list(second.values()) == [9, 6, 4, 2]
    assert parse_four_pairs_robust("8 9\nblah\n7 6\n5 4\n3 2") is None
    # FastChat: the FIRST [[x]], else the first [x]; no verdict -> invalid
    assert parse_rating_fastchat("first [[3]] then [[9]]") == 3.0
    assert parse_rating_fastchat("Rating: [7] and [[2]]") == 2.0
    assert parse_rating_fastchat("Rating: [7]") == 7.0
    assert parse_rating_fastchat("Rating: 7/10") is None


# ---------------------------------------------------------------- protocol objects, metrics
def test_paper_metrics_by_default_opt_ins_only_when_asked(data_dir):
    from kick_tasks import instruction_following as inf, summarization as sm
    from kick_tasks.judge.settings import settings_from

    env = {"KICK_JUDGE_BASE_URL": "http://127.0.0.1:9/v1", "KICK_JUDGE_MODEL": "m"}
    default = settings_from(None, environ=env)
    assert [p.metrics for p in inf.protocols(default)] == [("judge_score", "judge_ref_score")]
    assert sm.protocols(default)[0].metrics == ("judge_coherence", "judge_consistency", "judge_fluency",
                                                "judge_relevance", "judge_score", "judge_ref_score")
    both = settings_from({"judge_orders": "both", "judge_extras": "robust,rating"}, environ=env)
    names = [m for p in inf.protocols(both) for m in p.metrics]
    assert {"judge_score", "judge_score_debiased", "judge_win_rate_debiased", "judge_score_robust",
            "judge_rating"} <= set(names)
    item = {"question": "Q?", "category": "generic", "answer": "model", "comparator": "gpt35"}
    protocol = inf.protocols(both)[0]
    calls = protocol.calls(item)
    assert len(calls) == 2 and [c.temperature for c in calls] == [0.2, 0.2]
    # order 1: comparator is Assistant 1; order 2: swapped. A judge that adds +2 to position 1:
    scores, invalid = protocol.score(item, ["8 6\nx", "8 6\nx"])
    assert invalid == 0 and scores["judge_score"] == 6.0 and scores["judge_ref_score"] == 8.0
    assert scores["judge_score_debiased"] == scores["judge_ref_score_debiased"] == 7.0
    assert scores["judge_win_rate_debiased"] == 0.5
    scores, invalid = protocol.score(item, ["8, 6\nx", "8 6"])  # the paper rejects "8, 6"; robust reads it
    assert invalid == 1 and math.isnan(scores["judge_score"]) and scores["judge_score_robust"] == 6.0
    with pytest.raises(Exception, match="orders"):
        settings_from({"judge_orders": "three"}, environ=env)
    with pytest.raises(Exception, match="unknown judge extras"):
        settings_from({"judge_extras": "magic"}, environ=env)


def test_cache_identity_ignores_the_local_port():
    from kick_tasks.judge.settings import settings_from

    ident = [settings_from(None, environ={}, base_url=url, model="judge-7b").identity()
             for url in ("http://127.0.0.1:8000/v1", "http://localhost:9123/v1/", "http://[::1]:7000/v1")]
    assert len(set(ident)) == 1
    remote = settings_from(None, environ={}, base_url="https://api.example.com/v1", model="judge-7b").identity()
    other = settings_from(None, environ={}, base_url="https://api.other.com/v1", model="judge-7b").identity()
    assert remote != other and remote != ident[0]


# ---------------------------------------------------------------- exact messages through a real server
def _vicuna_expected(data_dir: Path, picks: list[dict], answers: list[str]) -> list[dict]:
    folder = data_dir / PROTOCOL / "instruction_following"
    reviewers, prompts = _jsonl(folder / "reviewer.jsonl"), _jsonl(folder / "prompt.jsonl")
    questions = {q["question_id"]: q for q in _jsonl(folder / "question.jsonl")}
    gpt35 = {a["question_id"]: a["text"] for a in _jsonl(data_dir / "vicuna_bench" / "answer_gpt-3.5-turbo.jsonl")}
    out = []
    for doc, answer in zip(picks, answers):
        q = questions[doc["question_id"]]
        system, user, _ = paper_gen_prompt(reviewers, prompts, q["category"], q["text"], gpt35[q["question_id"]], answer)
        out.append({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                    "temperature": 0.2, "max_tokens": 1024})
    return out


def _summary_expected(data_dir: Path, picks: list[dict], answers: list[str], comparator) -> list[dict]:
    folder = data_dir / PROTOCOL / "summarization"
    reviewers, prompts = _jsonl(folder / "reviewer.jsonl"), _jsonl(folder / "prompt.jsonl")
    questions = {q["question_id"]: q for q in _jsonl(folder / "new_question.jsonl")}
    out = []
    for doc, answer in zip(picks, answers):
        q = questions[doc["question_id"]]
        text = q["text"].split("@highlight")[0]  # kick's default: the leaked references cut off
        system, user, _ = paper_gen_prompt(reviewers, prompts, q["category"], text, comparator(doc), answer)
        out.append({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                    "temperature": 0.1, "max_tokens": 1024})
    return out


def test_kick_sends_the_papers_exact_messages(data_dir, tmp_path):
    from kick_tasks import instruction_following as inf, summarization as sm

    vicuna = inf.load_docs()
    picks = []
    for category in ("coding", "math", "generic", "knowledge"):       # prompts 2, 3, 1 and 1 (no reviewer)
        picks += [d for d in vicuna if d["category"] == category][:2]
    stories = [d for bucket in sm.BUCKETS for d in sm.load_bucket(bucket)[:2]]
    sm.attach_comparator(stories, {})
    assert {d["comparator"] for d in stories} == {"highlights"}
    answers_v = [f"Model answer {i}, with {{braces}} and \\n." for i in range(len(picks))]
    answers_s = [f"Summary {i}." for i in range(len(stories))]
    files = [write_samples(tmp_path / "samples_kick_instruction_following_2026-01-01T00-00-00.000001.jsonl",
                           picks, answers_v)]
    for bucket in sm.BUCKETS:
        chosen = [(d, a) for d, a in zip(stories, answers_s) if d["bucket"] == bucket]
        files.append(write_samples(tmp_path / f"samples_kicksum_{bucket}_2026-01-01T00-00-00.000001.jsonl",
                                   [d for d, _ in chosen], [a for _, a in chosen]))
    port, record = free_port(), tmp_path / "requests.jsonl"
    server = start_fake(port, record=record)
    try:
        result = _judge_cli([*map(str, files), "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "gpt-4",
                             "--cache", str(tmp_path / "c.sqlite"), "--concurrency", "1"],
                            clean_env(KICK_DATA_DIR=str(data_dir)))
    finally:
        stop(server)
    assert result.returncode == 0, result.stderr[-3000:]
    sent = [{k: body[k] for k in ("messages", "temperature", "max_tokens")} for body in _jsonl(record)]
    expected = _vicuna_expected(data_dir, picks, answers_v) + _summary_expected(
        data_dir, stories, answers_s, lambda d: "\n".join(d["highlights"]))
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, sent)) == sorted(map(key, expected))        # exactly these, nothing else
    assert all(body["model"] == "gpt-4" for body in _jsonl(record))
    prompt_ids = [paper_gen_prompt(_jsonl(data_dir / PROTOCOL / "instruction_following" / "reviewer.jsonl"),
                                   _jsonl(data_dir / PROTOCOL / "instruction_following" / "prompt.jsonl"),
                                   d["category"], "", "", "")[2] for d in picks]
    assert sorted(set(prompt_ids)) == [1, 2, 3]
    # the scores are the paper's parse of the replies: comparator = X, model = Y
    summary = _summary(tmp_path, "kick_instruction_following")
    replies = [json.loads(line)["judge_replies"][0]
               for line in Path(summary["per_sample_file"]).read_text().splitlines()]
    pairs = [p for p in map(paper_parse_if, replies) if p != [-1, -1]]   # the paper leaves invalid ones out
    n_math = sum(d["category"] == "math" for d in picks)
    assert len(pairs) == len(picks) - n_math   # the math prompt asks for a final "(x, y)" tuple: the paper's rule misses it
    assert summary["metrics"]["judge_score"] == pytest.approx(sum(p[1] for p in pairs) / len(pairs))
    assert summary["metrics"]["judge_ref_score"] == pytest.approx(sum(p[0] for p in pairs) / len(pairs))
    assert summary["metrics"]["judge_invalid_rate"] == pytest.approx(n_math / len(picks))
    assert not [k for k in summary["metrics"] if "debiased" in k or "robust" in k or "rating" in k]
    assert summary["judge_requests"] == [json.dumps({"max_tokens": 1024, "protocol": "llm-kick-instruction_following-v1",
                                                     "temperature": 0.2}, sort_keys=True)]
    assert set(summary["by_category"]) >= {"coding", "math", "generic", "knowledge"}
    small = _summary(tmp_path, "kicksum_small")
    assert small["comparator"] == ["highlights"]
    rows = [json.loads(line) for line in Path(small["per_sample_file"]).read_text().splitlines()]
    parsed = [paper_parse_sum(r["judge_replies"][0]) for r in rows]
    assert small["metrics"]["judge_coherence"] == pytest.approx(sum(p["coherence"][1] for p in parsed) / len(parsed))
    assert small["metrics"]["judge_score"] == pytest.approx(
        sum(sum(v[1] for v in p.values()) / 4 for p in parsed) / len(parsed))


def test_debiased_metrics_only_when_asked(data_dir, tmp_path):
    from kick_tasks import instruction_following as inf

    docs = inf.load_docs()[:3]
    samples = write_samples(tmp_path / "samples_kick_instruction_following_2026-01-01T00-00-00.000001.jsonl",
                            docs, ["a", "b", "c"])
    port, record = free_port(), tmp_path / "requests.jsonl"
    server = start_fake(port, record=record)
    try:
        env = clean_env(KICK_DATA_DIR=str(data_dir))
        base = [str(samples), "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "judge",
                "--cache", str(tmp_path / "c.sqlite")]
        plain = _judge_cli(base + ["--output-dir", str(tmp_path / "plain")], env)
        both = _judge_cli(base + ["--output-dir", str(tmp_path / "both")],
                          clean_env(KICK_DATA_DIR=str(data_dir), KICK_JUDGE_ORDERS="both", KICK_JUDGE_EXTRAS="robust"))
    finally:
        stop(server)
    assert plain.returncode == 0 and both.returncode == 0, plain.stderr + both.stderr
    m_plain = _summary(tmp_path / "plain", "kick_instruction_following")["metrics"]
    m_both = _summary(tmp_path / "both", "kick_instruction_following")["metrics"]
    assert set(m_plain) == {"judge_score", "judge_ref_score", "judge_invalid_rate"}
    assert {"judge_score_debiased", "judge_ref_score_debiased", "judge_win_rate_debiased",
            "judge_score_robust"} <= set(m_both)
    assert m_both["judge_score"] == m_plain["judge_score"]            # the paper's figure is unchanged
    sent = _jsonl(record)
    assert len(sent) == 3 + 3       # the paper-order prompts were cached; only the swapped order was new
    first_answers = [body["messages"][1]["content"].split("[The Start of Assistant 1's Answer]\n", 1)[1][:1]
                     for body in sent[3:]]
    assert sorted(first_answers) == ["a", "b", "c"]                  # model's answer now Assistant 1


# ---------------------------------------------------------------- comparator order, generated summaries
def test_summary_comparator_order_and_kick_judge_summaries(data_dir, tmp_path, monkeypatch):
    from kick_tasks import summarization as sm

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(sm.REFERENCE_ENV, raising=False)
    docs = sm.load_bucket("small")
    assert sm.attach_comparator([dict(d) for d in docs], {}) == "highlights"
    port, record = free_port(), tmp_path / "requests.jsonl"
    server = start_fake(port, record=record)
    try:
        env = clean_env(KICK_DATA_DIR=str(data_dir), XDG_CACHE_HOME=str(tmp_path / "xdg"))
        made = subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", "summaries", "--base-url",
                               f"http://127.0.0.1:{port}/v1", "--model", "gpt-3.5-turbo", "--no-progress"],
                              env=env, capture_output=True, text=True, timeout=300)
        again = subprocess.run([sys.executable, "-m", "kick_tasks.judge.cli", "summaries", "--base-url",
                                f"http://127.0.0.1:{port + 0}/v1", "--model", "gpt-3.5-turbo", "--no-progress"],
                               env=env, capture_output=True, text=True, timeout=300)
    finally:
        stop(server)
    assert made.returncode == 0 and again.returncode == 0, made.stderr + again.stderr
    sent = _jsonl(record)
    questions = {q["question_id"]: q["text"] for q in _jsonl(data_dir / PROTOCOL / "summarization" / "new_question.jsonl")}
    assert len(sent) == len(questions)                                 # the rerun came from the cache
    assert sorted(b["messages"][1]["content"] for b in sent) == sorted(t.split("@highlight")[0] for t in questions.values())
    assert {b["messages"][0]["content"] for b in sent} == {"You are a helpful assistant."}
    generated = _jsonl(tmp_path / "xdg" / "kick" / "reference_summaries.jsonl")
    assert len(generated) == len(questions) and {g["model"] for g in generated} == {"gpt-3.5-turbo"}
    texts = {g["question_id"]: g["text"] for g in generated}
    cached_docs = [dict(d) for d in docs]
    assert sm.attach_comparator(cached_docs, {}) == "generated:gpt-3.5-turbo"
    assert cached_docs[0]["comparator_text"] == texts[cached_docs[0]["question_id"]]
    user = tmp_path / "mine.jsonl"
    user.write_text("".join(json.dumps({"question_id": d["question_id"], "text": f"mine {d['question_id']}"}) + "\n"
                            for d in docs))
    mine = [dict(d) for d in docs]
    assert sm.attach_comparator(mine, {"summary_reference_file": str(user)}) == f"file:{user}"
    assert mine[0]["comparator_text"] == f"mine {mine[0]['question_id']}"
    assert sm.judge_item(mine[0], "x")["comparator"] == mine[0]["comparator_text"]
    user.write_text(json.dumps({"question_id": docs[0]["question_id"], "text": "only one"}) + "\n")
    with pytest.raises(ValueError, match="lack question_id"):
        sm.attach_comparator([dict(d) for d in docs], {"summary_reference_file": str(user)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sm.attach_comparator([dict(d) for d in docs], {"summary_reference_file": str(tmp_path / "nope.jsonl")})


# ---------------------------------------------------------------- questions, highlights, context
def test_story_builder_reproduces_the_papers_questions(data_dir):
    from kick_tasks import summarization as sm

    paper = _jsonl(data_dir / PROTOCOL / "summarization" / "new_question.jsonl")
    docs = {d["question_id"]: d for b in sm.BUCKETS for d in sm.load_bucket(b)}
    assert sorted(docs) == sorted(q["question_id"] for q in paper)   # every question has its story
    for q in paper:
        doc = docs[q["question_id"]]
        assert doc["paper_text"] == q["text"] and doc["bucket"] == q["category"]   # character for character
        assert doc["question"] == q["text"].split("@highlight")[0] and "@highlight" not in doc["question"]
        assert "@highlight" in q["text"] and doc["highlights"][0] in q["text"]
    keep = sm.load_bucket("large", {"summarization_highlights": "keep"})
    assert all(d["question"] == d["paper_text"] and "@highlight" in d["question"] for d in keep)
    with pytest.raises(ValueError, match="summarization_highlights"):
        sm.load_bucket("small", {"summarization_highlights": "maybe"})


def test_long_story_is_cut_never_the_instruction(data_dir, tiny_llama_dir):
    from transformers import AutoTokenizer

    from kick_tasks import summarization as sm

    docs = sm.load_bucket("large")
    originals = [d["question"] for d in docs]
    n = sm.fit_to_context(docs, {"pretrained": str(tiny_llama_dir), "max_gen_toks": 8})   # a 512-token model
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    overhead = len(tok.apply_chat_template([{"role": "user", "content": ""}], tokenize=True, add_generation_prompt=True,
                                           return_dict=False))
    assert n == sum(d["truncated"] for d in docs) and n >= 0.8 * len(docs)   # large stories exceed 512 tokens
    for doc, original in zip(docs, originals):
        assert doc["question"].startswith(sm.INSTRUCTIONS["large"] + "\n\n")
        assert original.startswith(doc["question"])
        assert len(tok(doc["question"]).input_ids) + overhead + 8 <= 512
        assert (doc["question"] != original) == bool(doc["truncated"])
    untouched = sm.load_bucket("small")
    assert sm.fit_to_context(untouched, {}) == 0                       # no model known: nothing cut
    result = sm.process_results(docs[0], ["A summary."])
    assert result["truncated_rate"] == 1.0 if docs[0]["truncated"] else 0.0


def test_freebaseqa_answer_starting_with_a_newline_is_kept():
    from kick_tasks import freebaseqa

    doc = {"question": "q", "aliases": ["paris"]}
    assert freebaseqa.answer_line("\n\n  Paris.\nMore text") == "Paris."
    assert freebaseqa.process_results(doc, ["\nParis"])["contains_em"] == 1.0
    assert freebaseqa.process_results(doc, [" London\nParis"])["contains_em"] == 0.0   # first line only
