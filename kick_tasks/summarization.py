"""LLM-KICK in-context summarization: the paper's 90 CNN stories in three length buckets.

Docs: the paper's questions (``llm_kick_protocol/summarization/new_question.jsonl``: ``question_id``,
``text``, ``category``), each matched with its ``cnn_stories/<bucket>/<id>.story`` file, which gives the
``@highlight`` references. :func:`paper_question_text` rebuilds the paper's text from the story file
character for character (its ``generate_question.py``: instruction, blank line, the stripped lines of the
file joined with nothing); a mismatch is an error.

Prompt: the paper's text. Its stories still hold the ``@highlight`` lines (the references); by default
they are cut off (``summarization_highlights=drop``; ``keep`` sends the paper's text unchanged). A prompt
longer than the model's context keeps its instruction: the story body is cut (``truncated_rate``).

Judging (default, the paper's ``gpt4_judge.py``): the paper's prompt of the doc's bucket, the comparator
as Assistant 1, the model as Assistant 2, one order, temperature 0.1, 1,024 tokens, the first four lines
parsed as ``X Y`` pairs (coherence, consistency, fluency, relevance). Comparator, first found: a summaries
file the user names (``summary_reference_file`` / ``KICK_SUMMARY_REFERENCE_FILE``: JSONL ``question_id``,
``text``), the summaries ``kick judge summaries`` generated and cached, else the highlights; each doc
records which (``comparator``). Judge-free: ROUGE-1/2/L against the highlights, length, empty rate.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from kick_models.data import DataNotFoundError, DataSchemaError, resolve
from kick_tasks.judge import paper, session
from kick_tasks.judge.settings import JudgeSettings
from kick_tasks.judge.summary_file import default_path
from kick_tasks.judge.task_glue import answer_stats, first_response, read_jsonl

log = logging.getLogger(__name__)

TASK = "summarization"
INSTRUCTION = ("Summarize the given story in less than 150 words while preserving high coherence, consistency, "
               "fluency, and relevance.")
#: the paper's generate_question.py says "story" for the small bucket and "news" for mid and large
INSTRUCTIONS = {"small": INSTRUCTION, "mid": INSTRUCTION.replace("given story", "given news"),
                "large": INSTRUCTION.replace("given story", "given news")}
BUCKETS = ("small", "mid", "large")
HIGHLIGHT = "@highlight"
HIGHLIGHT_MODES = ("drop", "keep")
REFERENCE_ENV = "KICK_SUMMARY_REFERENCE_FILE"
#: generation settings of the YAML (lm-eval records them in results["configs"][task]["generation_kwargs"])
GEN_KWARGS = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 1024}


def protocols(settings: JudgeSettings | None = None) -> tuple:
    """The paper's pairwise judge, plus the opt-ins ``settings`` asks for (each with its own metrics)."""
    return paper.protocols_for(TASK, settings)


# ----------------------------------------------------------------------------- stories and questions

def parse_story(text: str) -> tuple[str, list[str]]:
    """Split a ``.story`` file into (story without highlights, highlights)."""
    story_lines: list[str] = []
    highlights: list[str] = []
    expect_highlight = False
    seen_marker = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == HIGHLIGHT:
            expect_highlight, seen_marker = True, True
            continue
        if expect_highlight:
            if stripped:
                highlights.append(stripped)
                expect_highlight = False
            continue
        if not seen_marker:
            story_lines.append(line.rstrip())
    story = "\n".join(story_lines).strip()
    while "\n\n\n" in story:
        story = story.replace("\n\n\n", "\n\n")
    return story, highlights


def paper_question_text(bucket: str, raw: str) -> str:
    """The paper's question for a story file (``generate_question.py``): the bucket's instruction, a blank
    line, then every line of the file stripped and joined with nothing (``@highlight`` lines included).
    ``raw`` is the file read in text mode (universal newlines), as the paper's ``readlines`` saw it."""
    return INSTRUCTIONS[bucket] + "\n\n" + "".join(line.strip() for line in raw.split("\n"))


def drop_highlights(text: str) -> str:
    """The paper's question without its leaked references: everything from the first ``@highlight`` on."""
    return text.split(HIGHLIGHT, 1)[0]


def _read_bucket(folder: Path, bucket: str) -> list[dict[str, Any]]:
    files = sorted(folder.glob("*.story"))
    if not files:
        raise DataSchemaError(f"{folder} holds no .story files (expected the {bucket} bucket of the 90 CNN stories).")
    docs = []
    for path in files:
        raw = path.read_text(encoding="utf-8")
        story, highlights = parse_story(raw)
        if not story or not highlights:
            raise DataSchemaError(f"{path} is not a CNN .story file (needs the article and @highlight lines).")
        docs.append({"story_id": path.stem, "bucket": bucket, "story": story, "highlights": highlights,
                     "paper_text": paper_question_text(bucket, raw)})
    return docs


def _no_online_copy():
    raise DataNotFoundError(
        "the paper's 90 stories are a selection from the CNN/DailyMail release with no canonical download of "
        "their own; get the cnn_stories/{small,mid,large}/<id>.story folders (LLM-KICK release) into your data dir")


def check_bucket(bucket: str) -> None:
    if bucket not in BUCKETS:
        raise ValueError(f"unknown summarization bucket {bucket!r}; use one of {', '.join(BUCKETS)}.")


def highlight_mode(metadata: dict[str, Any] | None) -> str:
    mode = str((metadata or {}).get("summarization_highlights")
               or os.environ.get("KICK_SUMMARIZATION_HIGHLIGHTS") or "drop").lower()
    if mode not in HIGHLIGHT_MODES:
        raise ValueError(f"summarization_highlights={mode!r}: use 'drop' (default: the @highlight references are cut "
                         "from the prompt) or 'keep' (the paper's prompt unchanged, references included).")
    return mode


def load_bucket(bucket: str, metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The bucket's docs in the paper's question order: ``question_id``, ``question`` (the prompt),
    ``paper_text``, ``story``, ``highlights``, ``highlights_in_prompt``."""
    check_bucket(bucket)
    stories = resolve(f"CNN stories ({bucket})", f"cnn_stories/{bucket}", lambda p: _read_bucket(p, bucket),
                      _no_online_copy, online_description="no online source", metadata=metadata)
    questions = paper.protocol_file(TASK, "new_question.jsonl", metadata)
    by_text = {doc["paper_text"]: doc for doc in stories}
    mode = highlight_mode(metadata)
    docs = []
    for q in questions:
        if q.get("category") != bucket:
            continue
        story = by_text.get(q["text"])
        if story is None:
            raise DataSchemaError(
                f"the paper's summarization question {q['question_id']} ({bucket}) matches no story file in "
                f"cnn_stories/{bucket}: the stories or new_question.jsonl are not the paper's.")
        question = q["text"] if mode == "keep" else drop_highlights(q["text"])
        docs.append({**story, "question_id": int(q["question_id"]), "question": question,
                     "highlights_in_prompt": mode == "keep"})
    if len(docs) != len(stories):
        raise DataSchemaError(f"cnn_stories/{bucket} holds {len(stories)} stories but the paper has {len(docs)} "
                              f"{bucket} questions.")
    return docs


# ----------------------------------------------------------------------------- the comparator

def _summaries_file(path: Path) -> dict[int, dict[str, Any]]:
    return {int(row["question_id"]): row for row in read_jsonl(path, ("question_id", "text"))}


def attach_comparator(docs: list[dict[str, Any]], metadata: dict[str, Any] | None) -> str:
    """Give each doc ``comparator_text`` and ``comparator`` (where it came from); returns the source.

    Order: the user's file (``summary_reference_file`` / ``$KICK_SUMMARY_REFERENCE_FILE``), the summaries
    ``kick judge summaries`` generated (its cache file), the highlights."""
    user_file = (metadata or {}).get("summary_reference_file") or os.environ.get(REFERENCE_ENV)
    rows, source = None, "highlights"
    if user_file:
        path = Path(os.path.expanduser(str(user_file)))
        if not path.is_file():
            raise FileNotFoundError(f"the summaries file {path} (summary_reference_file / ${REFERENCE_ENV}) does not "
                                    "exist; give a JSONL file of question_id, text (e.g. the paper's GPT-3.5 summaries).")
        rows, source = _summaries_file(path), f"file:{path}"
    elif default_path().is_file():
        rows = _summaries_file(default_path())
        models = sorted({str(r.get("model", "?")) for r in rows.values()})
        source = f"generated:{','.join(models)}"
    if rows is not None:
        missing = [d["question_id"] for d in docs if d["question_id"] not in rows]
        if missing:
            raise DataSchemaError(f"the comparator summaries ({source}) lack question_id(s) {missing[:10]}"
                                  f"{' ...' if len(missing) > 10 else ''}; complete the file (e.g. rerun "
                                  "`kick judge summaries`).")
    for doc in docs:
        doc["comparator"] = source
        doc["comparator_text"] = rows[doc["question_id"]]["text"] if rows is not None else "\n".join(doc["highlights"])
    return source


# ----------------------------------------------------------------------------- context fitting

def _tokenizer(metadata: dict[str, Any]):
    name = metadata.get("tokenizer") or metadata.get("pretrained")
    if not isinstance(name, str) or not name:
        return None
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": metadata["gguf_file"]} if metadata.get("gguf_file") else {}
    try:
        return AutoTokenizer.from_pretrained(os.path.expanduser(name), **kwargs)
    except Exception as exc:  # a model the tokenizer cannot load from here: no fitting, said once
        log.warning("summarization: could not load the tokenizer of %r (%s); prompts are not fitted to the "
                    "context (pass --metadata '{\"max_length\": N, \"tokenizer\": ...}' to fit them).", name, exc)
        return None


def _context_length(metadata: dict[str, Any], tokenizer) -> int | None:
    if metadata.get("max_length"):
        return int(metadata["max_length"])
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(os.path.expanduser(str(metadata.get("pretrained"))))
        return int(getattr(config, "max_position_embeddings", 0)) or None
    except Exception:
        return None


def fit_to_context(docs: list[dict[str, Any]], metadata: dict[str, Any] | None) -> int:
    """Cut story bodies so that prompt + chat-template overhead + ``max_gen_toks`` fit the model's context.

    lm-eval would otherwise cut the START of a long prompt (left truncation) and the instruction with it.
    The model's tokenizer and context come from the model arguments lm-eval passes as task metadata
    (``pretrained``, ``max_length``; ``tokenizer`` to override); without them nothing is cut. The room
    kept for the answer is ``max_gen_toks`` of ``--metadata`` if given, else the YAML's 1,024 capped at half
    the context. Returns the number of truncated docs; each doc gets ``truncated`` (0/1)."""
    metadata = metadata or {}
    for doc in docs:
        doc["truncated"] = 0.0
    tokenizer = _tokenizer(metadata)
    context = _context_length(metadata, tokenizer) if tokenizer is not None else None
    if tokenizer is None or not context:
        return 0
    if metadata.get("max_gen_toks"):
        max_gen = int(metadata["max_gen_toks"])
    else:  # the YAML's limit, but never more than half the context (lm-eval's --gen_kwargs do not reach here)
        max_gen = min(GEN_KWARGS["max_gen_toks"], context // 2)
    overhead = 0
    if getattr(tokenizer, "chat_template", None):
        try:
            overhead = len(tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=True,
                                                         add_generation_prompt=True, return_dict=False))
        except Exception:
            overhead = 64
    budget = context - max_gen - overhead - 8  # 8: BOS and tokenizer-boundary slack
    count = 0
    for doc in docs:
        prompt = doc["question"]
        ids = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        if len(ids["input_ids"]) <= budget:
            continue
        head = INSTRUCTIONS[doc["bucket"]] + "\n\n"
        if budget <= len(tokenizer(head, add_special_tokens=False)["input_ids"]) + 16:
            raise ValueError(f"summarization: the model's context ({context} tokens) minus max_gen_toks ({max_gen}) "
                             "leaves no room for a story; lower max_gen_toks.")
        cut = ids["offset_mapping"][budget - 1][1]
        doc["question"] = prompt[:cut]
        doc["truncated"] = 1.0
        count += 1
    return count


# ----------------------------------------------------------------------------- lm-eval hooks

def load(bucket: str = "small", **metadata: Any):
    """lm-eval ``custom_dataset``: ``{"test": Dataset}`` of one bucket; checks the judge settings and the
    paper's protocol files (with a judge) before generation, picks the comparator, fits the prompts."""
    import datasets

    settings = session.configure(metadata)
    docs = load_bucket(bucket, metadata)
    source = attach_comparator(docs, metadata)
    if settings.enabled:
        paper.load_protocol(TASK, metadata)
        log.warning("kicksum_%s: the judge compares each summary with the %s (Assistant 1)%s.", bucket,
                    "highlights" if source == "highlights" else f"summaries of {source}",
                    " -- no summaries file: give summary_reference_file or run `kick judge summaries`"
                    if source == "highlights" else "")
    truncated = fit_to_context(docs, metadata)
    if truncated:
        log.warning("kicksum_%s: %d of %d stories cut to fit the model's context (metric truncated_rate).",
                    bucket, truncated, len(docs))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["question"]


def doc_to_target(doc: dict[str, Any]) -> str:
    return "\n".join(doc["highlights"])


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 (stemmed, rouge-score package)."""
    scores = _scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")}


def judge_item(doc: dict[str, Any], answer: str) -> dict[str, Any]:
    """What the judge sees: the question as the model got it (before any context cut), the bucket, the
    comparator's summary (Assistant 1) and the model's (Assistant 2)."""
    question = doc.get("paper_text") or doc.get("question") or f"{INSTRUCTIONS[doc['bucket']]}\n\n{doc['story']}"
    if not doc.get("highlights_in_prompt", False):
        question = drop_highlights(question)
    comparator = doc.get("comparator_text") or "\n".join(doc["highlights"])
    return {"question": question, "category": doc["bucket"], "answer": answer, "comparator": comparator,
            "reference": comparator}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    answer = first_response(results).strip()
    out = {**rouge(answer, doc_to_target(doc)), **answer_stats(answer),
           "truncated_rate": float(doc.get("truncated", 0.0))}
    out.update(session.judge_doc(judge_item(doc, answer), protocols(session.current_settings())))
    return out
