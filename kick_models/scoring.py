"""Loglikelihood scoring whose memory stays at one batch of logits (kick's model classes).

lm-eval's ``HFLM._loglikelihood_tokens`` takes ``log_softmax`` of the whole batch's logits at once: next to the
logits ``[batch, positions, vocab]`` it holds a second tensor of the same size (16 x 2048 x 128k float32 is 16 GB,
so tens of GB for a perplexity batch). :class:`BoundedLoglikelihoodMixin` scores the same requests the same way
(same batches, same order, same one-token-continuation cache, same numbers: the log-softmax of each row is the
same computation on fewer rows) but takes the log-softmax of one request's continuation positions at a time,
``chunk_positions`` rows at once, and keeps only the log-probabilities of the continuation tokens and the greedy
check. Peak: the model's logits of one batch plus ``chunk_positions x vocab`` values.

:func:`score_continuation` is the per-request step; its ``on_chunk`` callback receives each chunk of per-position
log-probabilities (the place to hook per-token distributions, e.g. for a KL divergence against the dense model).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: continuation positions whose full-vocabulary log-softmax is held at once (64 x 128k x 4 bytes = 32 MB)
CHUNK_POSITIONS = 64

#: ``on_chunk(first_position, logprobs)``: logprobs ``[positions, vocab]`` of the continuation rows
#: ``first_position ...`` (0 = the continuation's first token)
ChunkHook = Callable[[int, torch.Tensor], None]


def score_continuation(logits: torch.Tensor, cont_toks: torch.Tensor, dtype: torch.dtype | None = None,
                       chunk_positions: int = CHUNK_POSITIONS, on_chunk: ChunkHook | None = None) -> tuple[float, bool]:
    """``(sum of log p(token), every token greedy)`` for one continuation, as HFLM computes it.

    ``logits``: the model's raw logits at the continuation positions, ``[positions, vocab]`` (a view into the batch
    is fine); ``cont_toks``: ``[n]`` token ids, ``n <= positions``. HFLM gathers the first ``n`` rows and compares
    the last ``n`` greedy tokens (they differ only for lm-eval's one-token-continuation cache, where ``n`` equals
    the positions); both are kept."""
    positions = logits.shape[0]
    n = cont_toks.shape[0]
    greedy = torch.empty(positions, dtype=torch.long, device=logits.device)
    picked = torch.empty(n, dtype=dtype or logits.dtype, device=logits.device)
    for start in range(0, positions, chunk_positions):
        stop = min(start + chunk_positions, positions)
        logprobs = F.log_softmax(logits[start:stop], dim=-1, dtype=dtype)
        greedy[start:stop] = logprobs.argmax(dim=-1)
        if start < n:
            rows = min(stop, n) - start
            picked[start:start + rows] = logprobs[:rows].gather(1, cont_toks[start:start + rows, None]).squeeze(1)
        if on_chunk is not None:
            on_chunk(start, logprobs)
        del logprobs
    all_greedy = bool((greedy[positions - n:] == cont_toks).all())
    return float(picked.unsqueeze(0).sum()), all_greedy


def parse_score_batch_size(value: int | str | None) -> int | None:
    """``score_batch_size`` model arg: a positive integer or unset (None / "" / "none")."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        parsed = int(str(value).strip())
    except ValueError:
        parsed = 0
    if parsed < 1:
        raise ValueError(f"Invalid score_batch_size={value!r}: the sequences per scoring forward pass must be a positive "
                         "integer (e.g. score_batch_size=4), or leave it out to score at lm-eval's batch size.")
    return parsed


class BoundedLoglikelihoodMixin:
    """Put before ``HFLM`` in a model class's bases: causal LMs are scored by :func:`score_continuation`
    (seq2seq models keep HFLM's path). ``_kick_on_chunk(request, first_position, logprobs)`` may be overridden
    to see every continuation's per-position log-probabilities."""

    scoring_chunk_positions: int = CHUNK_POSITIONS
    #: sequences per forward pass when scoring loglikelihood requests (None: lm-eval's batch size); the model arg
    #: ``score_batch_size`` sets it, so that generation can run at a larger ``batch_size`` than scoring needs memory for
    score_batch_size: int | None = None

    def __init__(self, *args, score_batch_size: int | str | None = None, **kwargs) -> None:
        self.score_batch_size = parse_score_batch_size(score_batch_size)  # before the model loads
        super().__init__(*args, **kwargs)

    def _kick_on_chunk(self, request: tuple, first_position: int, logprobs: torch.Tensor) -> None:
        """Hook: per-position log-probabilities ``[positions, vocab]`` of one request's continuation."""

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if getattr(self, "backend", "causal") != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # the helpers HFLM itself uses, from where its module imports them (they moved between lm-eval releases)
        from lm_eval.models.huggingface import Collator, pad_and_concat, tqdm

        hooked = type(self)._kick_on_chunk is not BoundedLoglikelihoodMixin._kick_on_chunk
        re_ord = Collator(requests, sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])),
                          group_by="contexts" if self.logits_cache else None,
                          group_fn=lambda req: req[-2] + req[-1][:-1])
        auto = self.batch_size == "auto"
        batch_size = self.batch_size if not auto else override_bs if override_bs is not None else 0
        batch_fn = self._batch_scheduler if auto and len(re_ord) > 0 and not override_bs else None
        cap = self.score_batch_size
        if cap is not None:  # score_batch_size: at most `cap` sequences per scoring forward, whatever decided the batch
            batch_size = min(int(batch_size), cap) if batch_size else cap
            if batch_fn is not None:
                batch_fn = (lambda pos, reqs, _detect=batch_fn: min(_detect(pos, reqs), cap))
        if batch_fn is not None:
            self.batch_sizes = {}  # as HFLM: detect the batch size against these requests
        softmax_dtype = getattr(self, "softmax_dtype", None)
        res = []
        pbar = tqdm(total=len(requests), disable=(disable_tqdm or (self.rank != 0)),
                    desc="Running loglikelihood requests")
        for chunk in re_ord.get_batched(n=batch_size, batch_fn=batch_fn):
            inps, inplens = [], []
            for _, context_enc, continuation_enc in chunk:
                assert len(context_enc) > 0 and len(continuation_enc) > 0
                assert len(continuation_enc) <= self.max_length
                # truncated from the left when too long, as HFLM does
                inp = torch.tensor((context_enc + continuation_enc)[-(self.max_length + 1):][:-1],
                                   dtype=torch.long, device=self.device)
                inps.append(inp)
                inplens.append(inp.shape[0])
            padding_len = max(inplens)
            logits = self._model_call(pad_and_concat(padding_len, inps, padding_side="right"))
            for (request_str, ctx_tokens, cont_tokens), row, inplen in zip(chunk, logits, inplens):
                ctx_len = inplen + (row.shape[0] - padding_len)
                rows = row[ctx_len - len(cont_tokens):ctx_len].unsqueeze(0)  # a view: no copy
                for req_str, cont_toks, cont_rows in re_ord.get_cache(req_str=request_str, cxt_toks=ctx_tokens,
                                                                       cont_toks=cont_tokens, logits=rows):
                    hook = (lambda first, lp, _r=(req_str, tuple(cont_toks)): self._kick_on_chunk(_r, first, lp)
                            ) if hooked else None
                    answer = score_continuation(cont_rows[0], torch.tensor(cont_toks, dtype=torch.long,
                                                                           device=self.device),
                                                dtype=softmax_dtype, chunk_positions=self.scoring_chunk_positions,
                                                on_chunk=hook)
                    res.append(answer)
                    if req_str is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str, answer)
                    pbar.update(1)
            # the views into this batch's logits (row, rows, cont_rows) would keep all of it alive through the next
            # batch's forward pass: two batches of logits at the peak instead of one
            row = rows = cont_rows = None
            del logits
        pbar.close()
        return re_ord.get_original(res)
