"""The LLM-KICK paper's FreebaseQA protocol, reimplemented as a baseline loop (one fresh process; JSON line out).

Per question, batch 1: ``model.generate`` greedy up to ``max_length = 3 * prompt length`` (the paper's rule),
decode the WHOLE output, then score. The paper scored the whole decoded text (prompt included: its bug 5); here
the continuation (decoded output minus the prompt) is scored, both over the whole continuation ("paper") and
over its first line (the kick task's answer: ``until: ["\\n"]``), with the task's own metric function.
Same prompt text as ``kick_factoid_qa`` (``kick_tasks.freebaseqa.doc_to_text``), same first N eval questions.
``seconds`` = model load + the loop (like ``simple_evaluate``, which also loads the model).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", default="", help="write per-question outputs here (JSON)")
    ap.add_argument("--chat-template", action="store_true",
                    help="wrap the prompt in the tokenizer's chat template (as lm-eval's --apply_chat_template)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kick_tasks.freebaseqa import doc_to_text, load_split, score

    docs = load_split("eval")[: args.n]
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    t_loop = time.perf_counter()
    rows = []
    with torch.inference_mode():
        for doc in docs:
            prompt = doc_to_text(doc)
            if args.chat_template:  # the same string lm-eval builds with --apply_chat_template
                prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                       add_generation_prompt=True)
            input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not args.chat_template).input_ids
            out = model.generate(input_ids, max_length=3 * input_ids.shape[1], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            whole = tokenizer.batch_decode(out, skip_special_tokens=True)[0]
            decoded_prompt = tokenizer.decode(input_ids[0], skip_special_tokens=True)
            continuation = whole[len(decoded_prompt):] if whole.startswith(decoded_prompt) else \
                tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)
            first_line = continuation.split("\n", 1)[0]
            rows.append({"question_id": doc["question_id"], "continuation": continuation,
                         "first_line": first_line, "new_tokens": int(out.shape[1] - input_ids.shape[1]),
                         "paper_contains": score(continuation, doc["aliases"])["contains_em"],
                         "contains_em": score(first_line, doc["aliases"])["contains_em"]})
    seconds = time.perf_counter() - t0
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh)
    print(json.dumps({"seconds": seconds, "loop_seconds": time.perf_counter() - t_loop, "n": len(rows),
                      "new_tokens": sum(r["new_tokens"] for r in rows),
                      "contains_em": sum(r["contains_em"] for r in rows) / len(rows),
                      "paper_contains": sum(r["paper_contains"] for r in rows) / len(rows),
                      "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
