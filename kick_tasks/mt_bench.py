"""MT-Bench (80 two-turn questions) with FastChat single-answer grading, in two passes.

An extension beyond the LLM-KICK paper (whose instruction-following task is the 80 single-turn
Vicuna-bench questions, :mod:`kick_tasks.instruction_following`). Grading follows FastChat's
``gen_judgment.py``: its judge prompts, temperature 0, 2,048 judge tokens, the verdict is the first
``[[x]]`` of the review (else the first ``[x]``), a review without one is invalid.

lm-eval's ``generate_until`` sends one request per doc and a task cannot call the model again, so:

1. ``lm_eval --tasks kick_mt_bench --log_samples ...`` generates the turn-1 answers (judge-free
   metrics; ``judge_rating`` for turn 1 when a judge is configured).
2. ``kick mt-bench --samples <samples_kick_mt_bench_*.jsonl> --model ... --model_args ...``
   (or ``python -m kick_tasks.mt_bench``) loads the SAME model through lm-eval's model API,
   builds each turn-2 prompt from the conversation ``[user q1, assistant <its own turn-1 answer>,
   user q2]`` and writes ``samples_kick_mt_bench_turn2_<time>.jsonl`` next to the turn-1 file.
3. ``kick judge <that file>`` grades turn 1 (``single-v1``/``single-math-v1``) and turn 2
   (the ``-multi-turn`` prompts) and reports the MT-Bench score (mean over both turns).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Any

from kick_models.data import resolve
from kick_tasks.judge import session
from kick_tasks.judge.prompts import FASTCHAT_RAW, fetch_jsonl
from kick_tasks.judge.protocols import SingleGrade
from kick_tasks.judge.task_glue import answer_stats, first_response, read_jsonl, write_jsonl_atomic

ONLINE = f"{FASTCHAT_RAW}/mt_bench"
NEED_REF_CATEGORIES = ("math", "reasoning", "coding")  # FastChat grades these against GPT-4 references
TURN2_TASK = "kick_mt_bench_turn2"
GEN_KWARGS = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 1024}


def _robust(settings) -> bool:
    return bool(settings) and "robust" in settings.extra_set


def protocols_turn1(settings=None) -> tuple:
    """FastChat single-answer grading of turn 1 (``robust`` extra: also ``judge_rating_robust``)."""
    return (SingleGrade(turn=1, metric="judge_rating", robust=_robust(settings)),)


def protocols_both(settings=None) -> tuple:
    """Both turns (the ``kick_mt_bench_turn2`` samples of ``kick mt-bench``)."""
    return (SingleGrade(turn=1, metric="judge_rating_turn1", robust=_robust(settings)),
            SingleGrade(turn=2, metric="judge_rating_turn2", robust=_robust(settings)))


def load_docs(metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    questions = resolve("MT-Bench questions", "mt_bench/question.jsonl",
                        lambda p: read_jsonl(p, ("question_id", "category", "turns")),
                        lambda: fetch_jsonl(f"{ONLINE}/question.jsonl"),
                        online_description=f"{ONLINE}/question.jsonl", metadata=metadata)
    refs_rows = resolve("MT-Bench GPT-4 reference answers", "mt_bench/reference_answer_gpt-4.jsonl",
                        lambda p: read_jsonl(p, ("question_id", "choices")),
                        lambda: fetch_jsonl(f"{ONLINE}/reference_answer/gpt-4.jsonl"),
                        online_description=f"{ONLINE}/reference_answer/gpt-4.jsonl", metadata=metadata)
    refs = {int(r["question_id"]): list(r["choices"][0]["turns"]) for r in refs_rows}
    docs = []
    for q in questions:
        qid = int(q["question_id"])
        if len(q["turns"]) != 2:
            raise ValueError(f"MT-Bench question {qid} has {len(q['turns'])} turns; expected 2.")
        ref = refs.get(qid, []) if q["category"] in NEED_REF_CATEGORIES else []
        docs.append({"question_id": qid, "category": q["category"], "turns": list(q["turns"]),
                     "ref_answers": [str(x) for x in ref]})
    return docs


def load(**metadata: Any):
    """lm-eval ``custom_dataset`` (turn 1): ``{"test": Dataset}``; also checks the judge settings."""
    import datasets

    docs = load_docs(metadata)
    session.configure(metadata)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["turns"][0]


def doc_to_target(doc: dict[str, Any]) -> str:
    return (doc.get("ref_answers") or [""])[0]


def judge_item(doc: dict[str, Any], answer: str) -> dict[str, Any]:
    """Turn-1 item; with ``doc["answers"]`` (turn-2 samples) also the two-turn conversation."""
    answers = list(doc.get("answers") or [])
    if answers:
        answers = answers[:1] + [answer]
    return {"question": doc["turns"][0], "answer": answers[0] if answers else answer,
            "ref_answer": (doc.get("ref_answers") or [""])[0], "questions": doc["turns"], "answers": answers,
            "ref_answers": doc.get("ref_answers") or []}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    answer = first_response(results).strip()
    out = answer_stats(answer)
    out.update(session.judge_doc(judge_item(doc, answer), protocols_turn1(session.current_settings())))
    return out


# ----------------------------------------------------------------------------- the turn-2 pass

def turn2_messages(doc: dict[str, Any], turn1_answer: str) -> list[dict[str, str]]:
    """The conversation the model continues for turn 2: its OWN turn-1 answer is the assistant turn."""
    return [{"role": "user", "content": doc["turns"][0]}, {"role": "assistant", "content": turn1_answer},
            {"role": "user", "content": doc["turns"][1]}]


def turn2_context(doc: dict[str, Any], turn1_answer: str, lm=None, apply_chat_template: bool = False,
                  system_instruction: str | None = None) -> str:
    """The turn-2 prompt: the chat template over :func:`turn2_messages` (like lm-eval's
    ``--apply_chat_template``), or without it the plain continuation ``q1 + a1 + "\\n\\n" + q2``."""
    if apply_chat_template:
        messages = turn2_messages(doc, turn1_answer)
        if system_instruction:
            messages = [{"role": "system", "content": system_instruction}] + messages
        return lm.apply_chat_template(messages, add_generation_prompt=True)
    prefix = f"{system_instruction}\n\n" if system_instruction else ""
    return f"{prefix}{doc['turns'][0]}{turn1_answer}\n\n{doc['turns'][1]}"


def read_turn1_samples(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path, ("doc_id", "doc", "filtered_resps"))
    for row in rows:
        if "turns" not in row["doc"] or len(row["doc"]["turns"]) != 2:
            raise ValueError(f"{path} is not a kick_mt_bench samples file (docs lack the two 'turns').")
    return rows


def generate_turn2(samples: Path, lm, apply_chat_template: bool = False, system_instruction: str | None = None,
                   max_gen_toks: int = GEN_KWARGS["max_gen_toks"], output_dir: Path | None = None,
                   limit: int | None = None) -> Path:
    """Generate turn 2 for every turn-1 sample with ``lm`` (an lm-eval LM); returns the samples file."""
    from kick_models.lm_eval_compat import make_instance

    rows = read_turn1_samples(samples)[:limit]
    gen_kwargs = {**GEN_KWARGS, "max_gen_toks": int(max_gen_toks)}
    requests = []
    for row in rows:
        answer1 = first_response(row["filtered_resps"]).strip()
        context = turn2_context(row["doc"], answer1, lm, apply_chat_template, system_instruction)
        requests.append(make_instance("generate_until", row["doc"], (context, dict(gen_kwargs)),
                                      task_name=TURN2_TASK, doc_id=row["doc_id"]))
    start = time.perf_counter()
    outputs = lm.generate_until(requests)
    print(f"kick mt-bench: generated {len(outputs)} turn-2 answers in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    out_rows = []
    for row, request, output in zip(rows, requests, outputs):
        answer1 = first_response(row["filtered_resps"]).strip()
        doc = {**row["doc"], "answers": [answer1, output.strip()]}
        out_rows.append({"doc_id": row["doc_id"], "doc": doc, "target": (doc.get("ref_answers") or ["", ""])[-1],
                         "arguments": {"gen_args_0": {"arg_0": request.arguments[0], "arg_1": request.arguments[1]}}, "resps": [[output]], "filtered_resps": [output],
                         "filter": "none", "turn1_samples": str(samples), **answer_stats(output.strip())})
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S.%f")
    target = (output_dir or samples.parent) / f"samples_{TURN2_TASK}_{stamp}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(target, out_rows)
    return target


def main(argv: list[str] | None = None) -> int:
    """``kick mt-bench``: the turn-2 generation pass (see module docstring)."""
    parser = argparse.ArgumentParser(prog="kick mt-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, type=Path, help="samples_kick_mt_bench_<time>.jsonl from pass 1")
    parser.add_argument("--model", default="hf", help="lm-eval model name (hf, kick-pruned, ...), as in pass 1")
    parser.add_argument("--model_args", default="", help="the same --model_args as in pass 1")
    parser.add_argument("--apply_chat_template", action="store_true", help="use it if pass 1 used it")
    parser.add_argument("--system_instruction", default=None)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--batch_size", default="1")
    parser.add_argument("--max_gen_toks", type=int, default=GEN_KWARGS["max_gen_toks"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--output_dir", type=Path, default=None, help="default: next to --samples")
    args = parser.parse_args(argv)
    if not args.samples.is_file():
        parser.error(f"--samples {args.samples} does not exist (run lm_eval --tasks kick_mt_bench --log_samples first)")
    read_turn1_samples(args.samples)  # fail on a wrong file before the model loads
    from kick_models.autoload import ensure_loaded

    ensure_loaded()
    from lm_eval.api.registry import get_model

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = get_model(args.model).create_from_arg_string(args.model_args, {"batch_size": args.batch_size, "device": device})
    target = generate_turn2(args.samples, lm, args.apply_chat_template, args.system_instruction, args.max_gen_toks,
                            args.output_dir, args.limit)
    print(target)
    print(f"Next: kick judge {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
