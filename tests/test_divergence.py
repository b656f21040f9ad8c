"""KL divergence / same-top / dp / ln PPL ratio against a saved dense reference (issue 25), on tiny models.

Each run is a real lm-eval run (``--model hf``) of ``kick_wikitext_ppl``; the expected figures are computed
here from both models' full float32 logits with plain torch, never read back from kick.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kick_tasks import divergence, wikitext_ppl

FIXTURES = Path(__file__).parent / "fixtures"
SEQLEN = 64


@pytest.fixture(scope="module")
def perturbed_dir(tiny_llama_dir, tmp_path_factory):
    """A copy of the tiny model with noise on every weight (a stand-in for a compressed checkpoint)."""
    from tiny import load

    model, tok = load(tiny_llama_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * 2.0)
    path = tmp_path_factory.mktemp("perturbed") / "llama"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def evaluate(path: Path, data_dir: Path = FIXTURES, seqlen: int = SEQLEN, chat: bool = False, **metadata):
    import lm_eval

    import kick_tasks

    tm = kick_tasks.task_manager(include_defaults=False, metadata={
        "data_dir": str(data_dir), "ppl_seqlen": seqlen, "pretrained": str(path), **metadata})
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path},dtype=float32",
                                  tasks=["kick_wikitext_ppl"], device="cpu", task_manager=tm, log_samples=True,
                                  apply_chat_template=chat)
    return out["results"]["kick_wikitext_ppl"], out["samples"]["kick_wikitext_ppl"]


def metric(result: dict, name: str) -> float:
    return result[f"{name},none"]


def expected(dense_dir: Path, comp_dir: Path, samples) -> dict[str, np.ndarray]:
    """Per-token quantities from both models' full float32 logits (the test's own computation)."""
    from tiny import load

    dense, tok = load(dense_dir)
    comp, _ = load(comp_dir)
    ids = tok(wikitext_ppl.join_rows(wikitext_ppl.load_rows({"data_dir": str(FIXTURES)})),
              add_special_tokens=False)["input_ids"]
    out: dict[str, list] = {"kld": [], "same_top": [], "nll_comp": [], "nll_base": [], "dp": []}
    for s in sorted(samples, key=lambda s: s["doc"]["window"]):
        i, k = s["doc"]["window"], s["doc"]["context_tokens"]
        window = torch.tensor([ids[i * SEQLEN:(i + 1) * SEQLEN]])
        with torch.no_grad():
            lp = torch.log_softmax(dense(window).logits[0, k - 1:-1].double(), -1)
            lq = torch.log_softmax(comp(window).logits[0, k - 1:-1].double(), -1)
        target = window[0, k:]
        nll_p, nll_q = -lp.gather(-1, target[:, None])[:, 0], -lq.gather(-1, target[:, None])[:, 0]
        out["kld"].append((lp.exp() * (lp - lq)).sum(-1).numpy())
        out["same_top"].append((lp.argmax(-1) == lq.argmax(-1)).numpy())
        out["nll_comp"].append(nll_q.numpy())
        out["nll_base"].append(nll_p.numpy())
        out["dp"].append((torch.exp(-nll_q) - torch.exp(-nll_p)).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def full_reference(tiny_llama_dir, tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref") / "dense"
    result, _ = evaluate(tiny_llama_dir, kick_reference_out=str(ref))
    assert "kld_mean,none" not in result  # the dense run writes, it does not compare
    return ref, result


def test_model_against_itself_is_exactly_zero(tiny_llama_dir, full_reference, one_torch_thread):
    ref, dense_result = full_reference
    assert json.loads((ref / "reference.json").read_text())["form"] == "full"  # tiny vocab: fits the budget
    result, _ = evaluate(tiny_llama_dir, kick_reference=str(ref))
    for name in ("kld_mean", "kld_median", "kld_p99", "kld_p999", "kld_max", "dp_mean", "dp_rms", "ln_ppl_ratio"):
        assert metric(result, name) == 0.0, name
    assert metric(result, "same_top") == 1.0
    assert metric(result, "kld_lower_bound") == 0.0
    assert metric(result, "kld_tokens") > 100
    # the capture scores the windows itself: same perplexity as the plain run
    assert metric(result, "token_perplexity") == pytest.approx(metric(dense_result, "token_perplexity"), rel=1e-6)


def test_perturbed_copy_matches_full_logit_computation(tiny_llama_dir, perturbed_dir, full_reference,
                                                       one_torch_thread):
    """Full (uint16) reference: mean KLD within 1e-4 relative of the float64 computation from float32 logits."""
    ref, _ = full_reference
    result, samples = evaluate(perturbed_dir, kick_reference=str(ref))
    want = expected(tiny_llama_dir, perturbed_dir, samples)
    n = len(want["kld"])
    assert metric(result, "kld_tokens") == n
    assert metric(result, "kld_mean") > 0.01  # a real difference
    assert metric(result, "kld_mean") == pytest.approx(want["kld"].mean(), rel=1e-4)
    ordered = np.sort(want["kld"])
    assert metric(result, "kld_max") == pytest.approx(ordered[-1], rel=1e-3)
    assert metric(result, "kld_median") == pytest.approx(divergence.median(ordered), rel=1e-3)
    assert metric(result, "kld_p99") == pytest.approx(np.percentile(ordered, 99), rel=1e-3)  # numpy: same interpolation
    assert metric(result, "kld_mean_unc") == pytest.approx(want["kld"].std() / math.sqrt(n - 1), rel=1e-3)
    assert metric(result, "same_top") == pytest.approx(want["same_top"].mean(), abs=1e-12)
    assert metric(result, "dp_mean") == pytest.approx(want["dp"].mean(), abs=1e-6)
    assert metric(result, "dp_rms") == pytest.approx(math.sqrt(np.mean(want["dp"] ** 2)), rel=1e-5)
    # the top-256 form's value on the same tokens (computed from the full reference): a lower bound here
    assert 0 < metric(result, "kld_topk_mean") <= metric(result, "kld_mean")
    ln_ratio = want["nll_comp"].mean() - want["nll_base"].mean()
    assert metric(result, "ln_ppl_ratio") == pytest.approx(ln_ratio, abs=1e-6)
    assert math.log(metric(result, "token_perplexity")) - math.log(math.exp(want["nll_base"].mean())) == \
        pytest.approx(ln_ratio, abs=1e-5)


def test_topk_is_a_lower_bound_and_exact_when_k_covers_the_vocab(tiny_llama_dir, perturbed_dir, tmp_path,
                                                                 one_torch_thread):
    from tiny import load

    vocab = load(tiny_llama_dir)[0].config.vocab_size
    results = {}
    for k in (8, vocab):
        ref = tmp_path / f"top{k}"
        evaluate(tiny_llama_dir, kick_reference_out=str(ref), kick_reference_form="topk", kick_reference_topk=k)
        results[k] = evaluate(perturbed_dir, kick_reference=str(ref))
    want = expected(tiny_llama_dir, perturbed_dir, results[8][1])
    low, samples = results[8]
    assert metric(low, "kld_lower_bound") == 1.0
    assert 0 < metric(low, "kld_mean") < want["kld"].mean()
    per_window = {s["doc"]["window"]: s["kld_mean"]["kld_mean"] for s in samples}
    start = 0
    for s in sorted(samples, key=lambda s: s["doc"]["window"]):
        n = s["doc"]["n_tokens"]
        assert per_window[s["doc"]["window"]] <= want["kld"][start:start + n].mean() + 1e-9
        start += n
    exact, _ = results[vocab]
    assert metric(exact, "kld_mean") == pytest.approx(want["kld"].mean(), rel=1e-5)
    assert metric(exact, "kld_max") == pytest.approx(want["kld"].max(), rel=1e-5)
    assert metric(exact, "same_top") == metric(low, "same_top")  # exact in both forms


def test_mismatched_windows_are_refused(tiny_llama_dir, perturbed_dir, full_reference, tmp_path, one_torch_thread):
    ref, _ = full_reference
    with pytest.raises(divergence.ReferenceError, match="windows of 64 tokens, this run cuts 32"):
        evaluate(perturbed_dir, seqlen=32, kick_reference=str(ref))
    other = tmp_path / "data" / "wikitext2"
    other.mkdir(parents=True)
    text = (FIXTURES / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")
    (other / "wiki.test.raw").write_text(text.replace("the", "a", 1), encoding="utf-8")
    with pytest.raises(divergence.ReferenceError, match=r"token ids of window\(s\) \[0, .* differ"):
        evaluate(perturbed_dir, data_dir=other.parent, kick_reference=str(ref))


def test_corrupt_or_truncated_reference_is_refused(tiny_llama_dir, full_reference, tmp_path, one_torch_thread):
    ref, _ = full_reference
    bad = tmp_path / "bad"
    shutil.copytree(ref, bad)
    data = bad / "w00000.npz"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(divergence.ReferenceError, match="w00000.npz is missing, truncated or corrupt"):
        evaluate(tiny_llama_dir, kick_reference=str(bad))
    data.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(divergence.ReferenceError, match="truncated or corrupt"):
        evaluate(tiny_llama_dir, kick_reference=str(bad))
    header = json.loads((ref / "reference.json").read_text())
    header["seqlen"] = 32
    (bad / "reference.json").write_text(json.dumps(header))
    with pytest.raises(divergence.ReferenceError, match="sha256 does not match"):
        evaluate(tiny_llama_dir, kick_reference=str(bad))
    (bad / "reference.json").write_text(json.dumps(header)[:40])
    with pytest.raises(divergence.ReferenceError, match="corrupt"):
        evaluate(tiny_llama_dir, kick_reference=str(bad))


def test_yaml_lists_every_divergence_metric():
    text = (Path(wikitext_ppl.__file__).parents[1] / "task_yaml" / "wikitext_ppl" / "kick_wikitext_ppl.yaml").read_text()
    listed = {}
    for block in text.split("  - metric: ")[1:]:
        name = block.split("\n", 1)[0].strip()
        listed[name] = "higher_is_better: true" in block.split("  - metric")[0]
    assert {k: v for k, v in listed.items() if k in divergence.METRICS} == divergence.METRICS


def test_chat_template_runs_are_compared_too(tiny_llama_dir, perturbed_dir, tmp_path, one_torch_thread):
    """--apply_chat_template rewrites the request text: windows are matched by index and token ids, not text."""
    ref = tmp_path / "chat_ref"
    evaluate(tiny_llama_dir, chat=True, kick_reference_out=str(ref))
    same, _ = evaluate(tiny_llama_dir, chat=True, kick_reference=str(ref))
    assert metric(same, "kld_max") == 0.0 and metric(same, "same_top") == 1.0
    other, _ = evaluate(perturbed_dir, chat=True, kick_reference=str(ref))
    assert metric(other, "kld_mean") > 0.01
