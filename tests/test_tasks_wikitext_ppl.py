"""kick_wikitext_ppl reproduces the SparseGPT/Wanda perplexity convention inside lm-eval."""

import math
from pathlib import Path

import pytest
import torch

from kick_tasks import wikitext_ppl

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from tiny import load

    model, tok = load(tiny_llama_dir)
    return tiny_llama_dir, model, tok


def _text() -> str:
    return wikitext_ppl.join_rows(wikitext_ppl.load_rows({"data_dir": str(FIXTURES)}))


def test_windows_cover_the_tokenized_text(tiny):
    _, _, tok = tiny
    text = _text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    docs = wikitext_ppl.build_windows(text, tok, seqlen=32)
    assert len(docs) == len(ids) // 32 >= 5
    for i, doc in enumerate(docs):
        window = ids[i * 32:(i + 1) * 32]
        assert tok.encode(doc["context"] + doc["continuation"]) == window  # byte-level BPE round-trips here
        assert doc["tokenization_exact"]
        assert doc["n_tokens"] == 32 - doc["context_tokens"]
        assert not doc["context"][-1].isspace()  # HFLM would move trailing context whitespace
    assert sum(d["context_tokens"] == 1 for d in docs) >= len(docs) // 2


def test_seqlen_capped_at_model_max_length(tiny):
    path, _, _ = tiny
    ds = wikitext_ppl.load(data_dir=str(FIXTURES), pretrained=str(path), ppl_seqlen=100_000)
    assert set(ds["test"]["seqlen"]) == {512}  # tiny model: max_position_embeddings = 512
    ds = wikitext_ppl.load(data_dir=str(FIXTURES), pretrained=str(path), max_length=128)
    assert set(ds["test"]["seqlen"]) == {128}


def test_calibration_seqlen_model_arg_does_not_change_windows(tiny):
    """lm-eval copies --model_args into task metadata: kick-pruned's calibration seqlen must not leak in."""
    path, _, _ = tiny
    dense = wikitext_ppl.load(data_dir=str(FIXTURES), pretrained=str(path), ppl_seqlen=64)
    pruned = wikitext_ppl.load(data_dir=str(FIXTURES), pretrained=str(path), ppl_seqlen=64, seqlen=16, method="wanda")
    assert set(pruned["test"]["seqlen"]) == set(dense["test"]["seqlen"]) == {64}


def test_ppl_windows_keeps_the_first_windows(tiny):
    path, _, _ = tiny
    every = wikitext_ppl.load(data_dir=str(FIXTURES), pretrained=str(path), ppl_seqlen=32)["test"]
    first = wikitext_ppl.load(data_dir=str(FIXTURES), pretrained=str(path), ppl_seqlen=32, ppl_windows=2)["test"]
    assert len(every) > 2 and first.to_list() == every.to_list()[:2]
    for bad in (0, "two", -1, True):
        with pytest.raises(ValueError, match="ppl_windows"):
            wikitext_ppl.load(data_dir=str(FIXTURES), pretrained=str(path), ppl_seqlen=32, ppl_windows=bad)


def _direct_perplexity(model, tok, seqlen, contexts):
    """SparseGPT-style evaluation with plain torch: per window, NLL of tokens after the context tokens."""
    ids = tok(_text(), add_special_tokens=False)["input_ids"]
    nll, count = 0.0, 0
    for i, k in enumerate(contexts):
        window = torch.tensor([ids[i * seqlen:(i + 1) * seqlen]])
        with torch.no_grad():
            logits = model(window).logits[0, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="none")
        nll += losses[k - 1:].sum().item()
        count += seqlen - k
    return math.exp(nll / count)


def test_lm_eval_token_perplexity_equals_direct_computation(tiny):
    import lm_eval

    import kick_tasks

    path, model, tok = tiny
    # With an explicit TaskManager the model args are not copied into the task metadata:
    # name the tokenizer source there (the CLI does this by itself, see test_tasks_e2e).
    tm = kick_tasks.task_manager(
        include_defaults=False, metadata={"data_dir": str(FIXTURES), "ppl_seqlen": 64, "pretrained": str(path)}
    )
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={path},dtype=float32",
        tasks=["kick_wikitext_ppl"],
        device="cpu",
        task_manager=tm,
        log_samples=True,
    )
    result = out["results"]["kick_wikitext_ppl"]
    samples = out["samples"]["kick_wikitext_ppl"]
    contexts = [s["doc"]["context_tokens"] for s in sorted(samples, key=lambda s: s["doc"]["window"])]
    assert len(contexts) >= 2 and result["tokenization_exact,none"] == 1.0
    assert result["token_perplexity,none"] == pytest.approx(_direct_perplexity(model, tok, 64, contexts), rel=1e-4)
    if all(k == 1 for k in contexts):  # then it is the SparseGPT number itself
        assert result["token_perplexity,none"] == pytest.approx(_direct_perplexity(model, tok, 64, [1] * len(contexts)), rel=1e-4)
