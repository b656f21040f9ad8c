"""kick's model classes score loglikelihood requests with HFLM's numbers at one batch of logits' memory
(kick_models/scoring.py): identical log-likelihoods and greedy flags on the same weights, and a measured peak
(the process's resident high-water mark, reset through /proc/self/clear_refs) under 1.3 x one batch of float32
logits, where HFLM's path (logits + their full log-softmax) needs about 2 x."""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest
import torch

from fresh_process import ran_in_fresh_process
from tiny import make_tiny_model, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, BATCH, LENGTH = 32768, 4, 256
LOGITS_BYTES = BATCH * LENGTH * VOCAB * 4  # one batch of float32 logits: 128 MiB


@pytest.fixture(scope="module")
def big_vocab_dir(tmp_path_factory) -> Path:
    """A tiny llama whose vocabulary (32k) makes the logits the only large tensor of a forward pass."""
    path = tmp_path_factory.mktemp("bigvocab")
    make_tiny_model("llama", vocab_size=VOCAB, hidden=16, layers=1, intermediate=32).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def both(big_vocab_dir):
    """kick-pruned (magnitude 50%) and lm-eval's own HFLM on the very same pruned weights."""
    from lm_eval.models.huggingface import HFLM

    from kick_models.lm import KickPrunedLM

    kick = KickPrunedLM(pretrained=str(big_vocab_dir), method="magnitude", sparsity=0.5, device="cpu",
                        batch_size=BATCH, cache=False)
    hf = HFLM(pretrained=kick.model, tokenizer=kick.tokenizer, device="cpu", batch_size=BATCH)
    assert type(hf)._loglikelihood_tokens is HFLM._loglikelihood_tokens
    return kick, hf


def _requests(seed: int = 0) -> list:
    rng = random.Random(seed)
    toks = lambda n: [rng.randrange(VOCAB) for _ in range(n)]  # noqa: E731
    reqs = []
    for i in range(3):  # multiple choice: one context, one-token and longer continuations (lm-eval's cache path)
        ctx = toks(20 + i)
        reqs += [((f"q{i}", f"c{j}"), ctx, toks(1)) for j in range(4)]
        reqs += [((f"q{i}", "long"), ctx, toks(7)), ((f"q{i}", "longer"), ctx, toks(30))]
    # perplexity windows (rolling): one context token, a long continuation; two of them shorter (padding)
    reqs += [(None, toks(1), toks(LENGTH - 1)) for _ in range(5)] + [(None, toks(1), toks(90)), (None, toks(1), toks(3))]
    # a continuation whose tokens are the model's greedy choice would be rare at random: the flags still compare
    return reqs


def test_identical_loglikelihoods_to_hflm(both):
    kick, hf = both
    reqs = _requests()
    ours, theirs = kick._loglikelihood_tokens(reqs, disable_tqdm=True), hf._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert len(ours) == len(reqs) and ours == theirs  # bit for bit: same sums, same greedy flags
    assert all(isinstance(ll, float) and ll < 0 for ll, _ in ours)


def test_greedy_continuation_is_flagged_like_hflm(both):
    kick, hf = both
    ctx = [5, 17, 99]
    with torch.no_grad():
        greedy, seq = [], list(ctx)
        for _ in range(4):
            nxt = int(kick.model(torch.tensor([seq])).logits[0, -1].argmax())
            greedy.append(nxt)
            seq.append(nxt)
    reqs = [(("a", "b"), ctx, greedy), (("a", "c"), ctx, greedy[:2] + [(greedy[2] + 1) % VOCAB])]
    ours = kick._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert ours == hf._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [flag for _, flag in ours] == [True, False]


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _peak_extra_bytes(fn) -> int:
    """Resident memory above the current level at the peak of ``fn()`` (Linux: VmHWM reset by clear_refs)."""
    gc.collect()
    before = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark to the current RSS
    fn()
    return _kib("VmHWM") - before


def test_one_batch_of_logits_is_the_peak(request):
    if ran_in_fresh_process(request):  # a resident-memory measurement: not after other tests' allocations
        return
    kick, hf = request.getfixturevalue("both")
    rng = random.Random(1)
    # two batches: the first batch's logits must be gone before the second batch's forward pass
    batch = [(None, [rng.randrange(VOCAB)], [rng.randrange(VOCAB) for _ in range(LENGTH - 1)]) for _ in range(2 * BATCH)]
    kick._loglikelihood_tokens(batch, disable_tqdm=True)  # warm-up: allocator pools, lazy imports
    ours = min(_peak_extra_bytes(lambda: kick._loglikelihood_tokens(batch, disable_tqdm=True)) for _ in range(2))
    theirs = min(_peak_extra_bytes(lambda: hf._loglikelihood_tokens(batch, disable_tqdm=True)) for _ in range(2))
    bound = 1.3 * LOGITS_BYTES
    assert ours < bound < theirs, (ours / LOGITS_BYTES, theirs / LOGITS_BYTES)


def test_score_batch_size_caps_each_scoring_forward_and_keeps_hflms_numbers(big_vocab_dir):
    """kick-hf (the uncompressed model) at batch_size 8 with score_batch_size=2: every scoring forward holds at
    most 2 sequences (counted at the model's own forward), and the log-likelihoods are HFLM's at batch size 2."""
    from lm_eval.models.huggingface import HFLM

    from kick_models.lm import KickHFLM

    kick = KickHFLM(pretrained=str(big_vocab_dir), device="cpu", batch_size=8, score_batch_size=2)
    assert kick.batch_size == 8  # generation keeps lm-eval's batch size
    hf = HFLM(pretrained=kick.model, tokenizer=kick.tokenizer, device="cpu", batch_size=2)
    rows: list[int] = []
    handle = kick.model.register_forward_pre_hook(lambda mod, args, kwargs: rows.append(
        (args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True)
    try:
        reqs = _requests(seed=1)
        ours = kick._loglikelihood_tokens(reqs, disable_tqdm=True)
    finally:
        handle.remove()
    assert rows and max(rows) == 2, rows
    assert ours == hf._loglikelihood_tokens(reqs, disable_tqdm=True)


@pytest.mark.parametrize("bad", ["0", "-3", "two", "1.5"])
def test_score_batch_size_is_refused_before_the_model_loads(bad):
    from kick_models.lm import KickHFLM

    with pytest.raises(ValueError, match="score_batch_size"):
        KickHFLM(pretrained="./no-such-model-folder", device="cpu", score_batch_size=bad)
