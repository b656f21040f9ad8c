"""Per-token capture for the divergence metrics: a wrapper of ``HFLM.loglikelihood``.

lm-eval's ``loglikelihood`` returns one ``(sum of log-probs, is_greedy)`` per request, so the per-token
distributions the divergence metrics need must be read where the model is called. Design (issue 25):

* The wrapper is installed on lm-eval's ``HFLM`` class by ``kick_wikitext_ppl``'s data loader, and only when
  the task's metadata asks for a reference to be written (``kick_reference_out``) or compared with
  (``kick_reference``). It therefore works for ``--model hf`` on any checkpoint (compressed by kick or
  elsewhere: compressed-tensors, GPTQ/AWQ, GGUF through ``gguf_file=``) and for every kick-* class (all are HFLM
  subclasses), without touching their code and without any start-up hook.
* Requests whose doc carries the ``kick_divergence`` field are scored here; every other request goes to the
  original method unchanged. A window is encoded with HFLM's own ``_encode_pair`` and fed whole to HFLM's own
  ``_model_call`` (one window per call), and its loglikelihood and greedy flag are computed from those logits
  exactly as ``HFLM._loglikelihood_tokens`` does (log-softmax in ``softmax_dtype`` or the model dtype), so
  ``token_perplexity`` is the same number; only the batching differs (one window per forward).
* The same logits, in float32, give the reference arrays (dense run, written to disk window by window) or
  the per-token comparison (compressed run), handed to the task's ``process_results`` through
  :data:`kick_tasks.divergence.CAPTURED`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kick_tasks import divergence

log = logging.getLogger("lm_eval.kick")

DOC_FIELD = "kick_divergence"


def install() -> None:
    """Wrap ``HFLM.loglikelihood`` (idempotent)."""
    from lm_eval.models.huggingface import HFLM

    original = HFLM.loglikelihood
    if getattr(original, "_kick_divergence", False):
        return

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        mine = [i for i, r in enumerate(requests) if _spec(r) is not None]
        if not mine:
            return original(self, requests, disable_tqdm=disable_tqdm)
        chosen = set(mine)
        rest = [r for i, r in enumerate(requests) if i not in chosen]
        rest_results = iter(original(self, rest, disable_tqdm=disable_tqdm) if rest else [])
        own = iter(score_requests(self, [requests[i] for i in mine]))
        return [next(own) if i in chosen else next(rest_results) for i in range(len(requests))]

    loglikelihood._kick_divergence = True  # type: ignore[attr-defined]
    loglikelihood.__doc__ = original.__doc__
    HFLM.loglikelihood = loglikelihood


def _spec(request) -> dict[str, Any] | None:
    doc = getattr(request, "doc", None)
    if isinstance(doc, dict) and doc.get(DOC_FIELD):
        return json.loads(doc[DOC_FIELD])
    return None


def _check_model(lm) -> None:
    if getattr(lm, "backend", "causal") != "causal":
        raise RuntimeError("kick_wikitext_ppl divergence metrics need a causal LM")
    if int(getattr(lm, "world_size", 1) or 1) > 1:
        raise RuntimeError("kick_wikitext_ppl divergence metrics need a single-process run (no data parallelism): "
                           "the per-token arrays of every window must reach one process")


def _window_logits(lm, context: str, continuation: str):
    """(input ids, scored logits [n, V] in the model dtype, target ids [n]) for one window, as HFLM feeds it."""
    import torch

    context_enc, continuation_enc = lm._encode_pair(context, continuation)
    whole = context_enc + continuation_enc
    if len(whole) > lm.max_length + 1:
        raise RuntimeError(f"a kick_wikitext_ppl window of {len(whole)} tokens exceeds the model's max_length "
                           f"{lm.max_length}")
    inp = torch.tensor([whole[:-1]], dtype=torch.long, device=lm.device)
    with torch.no_grad():
        logits = lm._model_call(inp)[0]
    n = len(continuation_enc)
    return whole, logits[-n:], torch.tensor(continuation_enc, dtype=torch.long, device=logits.device)


def _hflm_result(lm, logits, targets) -> tuple[float, bool]:
    """``HFLM._loglikelihood_tokens``' answer from the same logits: (sum log-prob, all greedy)."""
    import torch.nn.functional as F

    lp = F.log_softmax(logits, dim=-1, dtype=getattr(lm, "softmax_dtype", None))
    greedy = bool((lp.argmax(dim=-1) == targets).all())
    return float(lp.gather(-1, targets[:, None])[:, 0].sum()), greedy


def score_requests(lm, requests) -> list[tuple[float, bool]]:
    from tqdm import tqdm

    _check_model(lm)
    specs = [_spec(r) for r in requests]
    modes = {s["mode"] for s in specs}
    if len(modes) != 1 or len({s["path"] for s in specs}) != 1:
        raise RuntimeError("kick_wikitext_ppl divergence: one reference per run (write or compare)")
    spec = specs[0]
    writer = None
    reference = divergence.Reference(spec["path"]) if spec["mode"] == "compare" else None
    results = []
    for request, s in tqdm(list(zip(requests, specs)), desc=f"kick divergence ({spec['mode']})"):
        context, continuation = request.args
        window = int(request.doc["window"])
        whole, logits, targets = _window_logits(lm, context, continuation)
        results.append(_hflm_result(lm, logits, targets))
        cpu_logits, cpu_targets = logits.float().cpu(), targets.cpu()
        key = divergence.window_key(request.doc)
        if reference is not None:
            per_token = divergence.compare_window(reference.window(window, whole), cpu_logits, cpu_targets)
            divergence.CAPTURED[key] = {**per_token, "lower_bound": reference.form == "topk"}
            continue
        if writer is None:
            writer = _open_writer(s, requests, lm, vocab_size=cpu_logits.shape[-1])
        arrays = divergence.dense_arrays(cpu_logits, cpu_targets, writer.header["form"], writer.header["topk"])
        writer.add(window, request.doc["window_sha256"], whole, len(targets), arrays)
        divergence.CAPTURED[key] = {"written": True}
    if writer is not None:
        path = writer.finish()
        log.info("kick divergence: dense reference (%s form) written to %s", writer.header["form"], path)
    return results


def _open_writer(spec: dict[str, Any], requests, lm, vocab_size: int) -> divergence.ReferenceWriter:
    """Full form when every window fits the size budget, else top-k (logged)."""
    n_tokens = sum(int(r.doc["n_tokens"]) for r in requests)
    full_bytes = n_tokens * (2 * vocab_size + 16)
    budget = float(spec.get("budget_mb", divergence.DEFAULT_BUDGET_MB)) * 2 ** 20
    form = spec.get("form") or ("full" if full_bytes <= budget else "topk")
    topk = int(spec.get("topk") or divergence.DEFAULT_TOPK)
    if form == "topk":
        log.warning("kick divergence: the full reference would take %.0f MB (> budget %.0f MB): storing the dense "
                    "top-%d log-probs; KLD is then a lower bound", full_bytes / 2 ** 20, budget / 2 ** 20, topk)
    info = {k: spec.get(k) for k in ("seqlen", "n_windows", "tokenizer", "tokenizer_vocab_size")}
    info["model"] = str(getattr(getattr(lm, "model", None), "name_or_path", "") or "")
    return divergence.ReferenceWriter(spec["path"], form=form, topk=topk, vocab_size=vocab_size, info=info)
