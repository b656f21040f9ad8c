"""``kick judge summaries``: generate the summarization comparator once, through any OpenAI-compatible endpoint.

The paper's Assistant 1 was GPT-3.5 (``gpt35_openai.py``: system "You are a helpful assistant.", the
question as the user message, up to 1,024 tokens, the API's default temperature); those summaries were
not published. This command asks a model of your choice the same way, for the 90 questions as
``kick_summarization`` sends them (``--highlights drop|keep`` as the task's ``summarization_highlights``),
and writes ``question_id``, ``text``, ``model`` lines to a JSONL file (default
``~/.cache/kick/reference_summaries.jsonl``, which ``kick_summarization`` then uses as its comparator).
Every reply goes through the judge's SQLite cache, the file is written atomically: rerun to resume.

    kick judge summaries --base-url https://api.openai.com/v1 --model gpt-3.5-turbo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import JudgeError
from .protocols import JudgeCall
from .settings import settings_from
from .summary_file import default_path
from .task_glue import write_jsonl_atomic

SYSTEM = "You are a helpful assistant."
PROTOCOL = "llm-kick-gpt35-summary-v1"
OPENAI_DEFAULT_TEMPERATURE = 1.0  # the paper's call set none: the API default


def summary_call(question: str, max_tokens: int = 1024) -> JudgeCall:
    """The paper's GPT-3.5 request for one question."""
    return JudgeCall(PROTOCOL, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                     OPENAI_DEFAULT_TEMPERATURE, max_tokens)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kick judge summaries", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (default $KICK_JUDGE_BASE_URL)")
    p.add_argument("--model", default=None, help="model that writes the summaries, e.g. gpt-3.5-turbo")
    p.add_argument("--api-key-env", default=None, help="NAME of the variable holding the API key")
    p.add_argument("--out", type=Path, default=None, help=f"JSONL file to write (default {default_path()})")
    p.add_argument("--highlights", choices=("drop", "keep"), default="drop",
                   help="send the stories without (default) or with the paper's leaked @highlight lines")
    p.add_argument("--data-dir", default=None, help="data folder (default $KICK_DATA_DIR)")
    p.add_argument("--cache", default=None)
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="default 1.0 (the API default the paper used)")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from kick_tasks import summarization

    from .runner import Judge

    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(None, backend="openai", base_url=args.base_url, model=args.model,
                                 api_key_env=args.api_key_env, cache=args.cache, concurrency=args.concurrency,
                                 temperature=args.temperature)
        metadata = {"summarization_highlights": args.highlights}
        if args.data_dir:
            metadata["data_dir"] = args.data_dir
        docs = [d for bucket in summarization.BUCKETS for d in summarization.load_bucket(bucket, metadata)]
        from .session import check_endpoint

        check_endpoint(settings)
        judge = Judge(settings)
        replies = judge.replies([summary_call(d["question"], args.max_tokens) for d in docs],
                                progress=not args.no_progress, desc="reference summaries")
    except (JudgeError, ValueError, FileNotFoundError) as exc:
        print(f"kick judge summaries: error: {exc}", file=sys.stderr)
        return 1
    failed = [d["question_id"] for d, r in zip(docs, replies) if not r]
    if failed:
        print(f"kick judge summaries: error: no usable reply for question(s) {failed}; rerun to retry them "
              "(answers received are cached).", file=sys.stderr)
        return 1
    out = args.out or default_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out, [{"question_id": doc["question_id"], "text": text, "model": settings.model,
                              "highlights": args.highlights} for doc, text in zip(docs, replies)])
    print(f"{len(docs)} summaries by {settings.model} -> {out} (requests {judge.stats['backend_requests']}, "
          f"cache hits {judge.stats['cache_hits']})")
    return 0
