"""The sequential driver and the public API on tiny random Hugging Face models (llama, qwen2, gemma2, gemma3)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import make_tiny_model, make_tokenizer
from torch import nn

from kick_models import prune, quantize
from kick_models.api import compress  # `kick_models.compress` is also the subpackage name
from kick_models.compress.config import CompressionConfigError, PruneConfig
from kick_models.compress.sequential import (
    _run_layer,
    _true_sequential_groups,
    capture_inputs,
    find_decoder_layers,
    linear_modules,
)

FAMILIES = ("llama", "qwen2", "gemma2", "gemma3_text")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a busy 2-core machine (20x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def model_for(family: str, tok, **kw):
    return make_tiny_model(family, vocab_size=len(tok), **kw)


def calib(tok, n: int = 8, seqlen: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, len(tok), (n, seqlen), generator=g)


def untouched_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything that is not a decoder-block Linear weight (embeddings, norms, lm_head)."""
    path, layers = find_decoder_layers(model)
    linear_weights = {id(lin.weight) for layer in layers for lin in linear_modules(layer).values()}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in linear_weights}


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p == 0) for n, p in model.named_parameters() if p.dim() == 2}


def gemma3_with_mixed_layers(tok):
    """Six layers: five sliding-window (window 16, local rope) + one global, so per-layer kwargs differ."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("gemma3_text", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=512, sliding_window=16, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert len(set(config.layer_types)) == 2
    return model.eval()


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_mixed"])
def test_captured_inputs_reproduce_the_models_hidden_states(family, tok):
    """Replaying each layer with its captured args gives exactly the model's own hidden states."""
    model = gemma3_with_mixed_layers(tok) if family == "gemma3_mixed" else model_for(family, tok, layers=3)
    tokens = calib(tok, n=4, seqlen=40)
    path, layers = find_decoder_layers(model)
    with torch.no_grad():
        expected = model(tokens, output_hidden_states=True).hidden_states
        inps, calls = capture_inputs(model, layers, path, list(torch.split(tokens, 2)), torch.device("cpu"))
        for index, layer in enumerate(layers):
            got = torch.cat(inps)
            assert torch.allclose(got, expected[index], atol=1e-5), f"layer {index} input differs"
            inps = _run_layer(layer, inps, calls[index])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_every_family_leaves_embeddings_and_lm_head(family, method, tok):
    model = model_for(family, tok)
    before = untouched_params(model)
    report = prune(model, tok, method=method, sparsity=0.5, calibration=None if method == "magnitude" else calib(tok),
                   progress=False) if method != "magnitude" else prune(model, tok, method=method, progress=False)
    after = untouched_params(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    _, layers = find_decoder_layers(model)
    assert len(report.layers) == sum(len(linear_modules(layer)) for layer in layers)
    assert all(s.name.startswith("model.layers.") for s in report.layers)
    if method == "wanda":  # per row, exactly int(cols * s)
        assert report.measured_sparsity() == pytest.approx(0.5, abs=1e-9)
        assert all(s.sparsity == pytest.approx(0.5) for s in report.layers)
    else:  # reference "<= threshold" rule: one more weight (plus float ties) per matrix / per 128-column block
        assert all(0.5 < s.sparsity <= 0.5 + 0.01 for s in report.layers)
    summary = report.summary()
    json.dumps(summary)
    assert summary["block_sparsity"]["min"] >= 0.5 and summary["n_layers"] == len(report.layers)
    assert (summary["calibration_fingerprint"] is None) == (method == "magnitude")
    with torch.no_grad():
        assert torch.isfinite(model(calib(tok, n=2)).logits).all()


def test_wanda_model_masks_are_per_row_exact_and_seed_deterministic(tok, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(["the quick brown fox jumps over the lazy dog", "answer these questions"] * 200))
    runs = []
    for seed in (0, 0, 1):
        model = model_for("qwen2", tok)
        prune(model, tok, method="wanda", sparsity=0.5, calibration=str(text), nsamples=4, seqlen=32, seed=seed,
              progress=False)
        runs.append(masks(model))
        for layer in find_decoder_layers(model)[1]:
            for lin in linear_modules(layer).values():
                assert ((lin.weight == 0).sum(1) == lin.in_features // 2).all()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gptq"])
def test_batched_calibration_equals_sample_by_sample(method, tok):
    tokens = calib(tok, n=6)
    models = []
    for batch_size in (6, 4, 1):  # 4 also exercises a short last batch
        model = model_for("llama", tok)
        if method == "gptq":
            quantize(model, tok, wbits=4, groupsize=32, calibration=tokens, batch_size=batch_size, progress=False)
        else:
            prune(model, tok, method=method, calibration=tokens, batch_size=batch_size, progress=False)
        models.append(dict(model.named_parameters()))
    for other in models[1:]:
        for name, p in models[0].items():
            assert torch.allclose(p, other[name], atol=1e-4, rtol=1e-3), name
            if method == "wanda":
                assert torch.equal(p == 0, other[name] == 0)


def test_nm_on_model_and_width_error_names_the_layer(tok):
    model = model_for("gemma2", tok)
    prune(model, tok, method="sparsegpt", sparsity_type="2:4", calibration=calib(tok), progress=False)
    for layer in find_decoder_layers(model)[1]:
        for lin in linear_modules(layer).values():
            assert ((lin.weight == 0).reshape(lin.out_features, -1, 4).sum(-1) == 2).all()
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj has in_features=64"):
        prune(model_for("llama", tok), tok, method="wanda", sparsity_type="3:7", calibration=calib(tok), progress=False)


def test_bf16_model(tok):
    for method in ("wanda", "sparsegpt", "gptq"):
        model = model_for("llama", tok).to(torch.bfloat16)
        if method == "gptq":
            report = quantize(model, tok, wbits=4, groupsize=32, calibration=calib(tok), progress=False)
        else:
            report = prune(model, tok, method=method, calibration=calib(tok), progress=False)
            assert 0.5 <= report.measured_sparsity() <= 0.51
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
        with torch.no_grad():
            assert torch.isfinite(model(calib(tok, n=2)).logits.float()).all()


def test_gptq_on_model_reports_quant_params_and_beats_rtn(tok):
    tokens = calib(tok, n=16, seqlen=64)
    dense = model_for("llama", tok)
    gptq, rtn = model_for("llama", tok), model_for("llama", tok)
    report = quantize(gptq, tok, wbits=3, groupsize=32, calibration=tokens, progress=False)
    rtn_report = quantize(rtn, tok, method="rtn", wbits=3, groupsize=32, progress=False)
    params = report.quant_params()
    assert set(params) >= {"model.layers.0.self_attn.q_proj.scales", "model.layers.1.mlp.down_proj.g_idx"}
    assert report.bits_per_weight() == pytest.approx(3 + 19 / 32)
    assert rtn_report.calibration_fingerprint is None and report.calibration_fingerprint
    with torch.no_grad():
        ref = dense(tokens).logits
        err_gptq = (gptq(tokens).logits - ref).pow(2).mean()
        err_rtn = (rtn(tokens).logits - ref).pow(2).mean()
    assert err_gptq < err_rtn


def test_true_sequential_groups_follow_the_data_flow(tok):
    model = model_for("llama", tok)
    path, layers = find_decoder_layers(model)
    tokens = calib(tok, n=2)
    with torch.no_grad():
        inps, calls = capture_inputs(model, layers, path, [tokens], torch.device("cpu"))
        groups = _true_sequential_groups(layers[0], linear_modules(layers[0]), inps[0], calls[0][0])
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                      ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    a, b = model_for("llama", tok), model_for("llama", tok)
    quantize(a, tok, wbits=4, calibration=tokens, progress=False)
    quantize(b, tok, wbits=4, calibration=tokens, true_sequential=True, progress=False)
    assert torch.equal(a.model.layers[0].self_attn.q_proj.weight, b.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(a.model.layers[0].mlp.down_proj.weight, b.model.layers[0].mlp.down_proj.weight)


def test_methods_without_calibration_run_no_forward_pass(tok, monkeypatch):
    monkeypatch.delenv("KICK_DATA_DIR", raising=False)  # no data anywhere: must not be needed
    for run in (lambda m: prune(m, tok, method="magnitude", progress=False),
                lambda m: quantize(m, tok, method="rtn", progress=False)):
        model = model_for("llama", tok)
        calls = []
        model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
        report = run(model)
        assert calls == [] and report.calibration_fingerprint is None and report.config["calibration"] is None


def test_sparsity_zero_returns_measured_stats_without_changes(tok):
    model = model_for("llama", tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = prune(model, tok, method="sparsegpt", sparsity=0.0, calibration=calib(tok), progress=False)
    assert report.measured_sparsity() == 0.0 and len(report.layers) == 14
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_api_errors(tok):
    model = model_for("llama", tok)
    with pytest.raises(CompressionConfigError, match="exceeds the model's max positions 512"):
        prune(model, tok, method="wanda", calibration=calib(tok, n=1, seqlen=600), progress=False)
    with pytest.raises(CompressionConfigError, match="integer token ids"):
        prune(model, tok, method="wanda", calibration=torch.rand(2, 8), progress=False)
    with pytest.raises(CompressionConfigError, match="uses no calibration"):
        quantize(model, tok, method="rtn", calibration=calib(tok), progress=False)
    with pytest.raises(CompressionConfigError, match="uses no calibration"):
        prune(model, tok, method="magnitude", calibration=calib(tok), progress=False)
    with pytest.raises(CompressionConfigError, match="batch_size"):
        compress(model, tok, PruneConfig("wanda"), calib(tok), batch_size=0)

    class NotALM(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="Cannot find the decoder layers of NotALM"):
        prune(NotALM(), tok, method="magnitude", progress=False)


def test_pruned_model_evaluates_with_lm_eval_hflm(tok):
    from lm_eval.models.huggingface import HFLM

    from kick_models.lm_eval_compat import make_instance, rolling_loglikelihood, rolling_request

    model = model_for("llama", tok)
    prune(model, tok, method="wanda", sparsity=0.5, calibration=calib(tok), progress=False)
    lm = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=2)
    ll, greedy = lm.loglikelihood([make_instance("loglikelihood", {}, ("The answer is", " Paris"), task_name=None,
                                                 doc_id=0)])[0]
    rolling = rolling_loglikelihood(lm.loglikelihood_rolling([rolling_request("The quick brown fox jumps over the lazy dog.")])[0])
    assert ll < 0 and rolling < 0 and isinstance(greedy, bool)
    assert lm.model is model and (model.model.layers[0].mlp.up_proj.weight == 0).float().mean() == 0.5


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gptq"])
def test_shared_input_statistics_are_bit_identical_to_one_accumulation_per_linear(method, tok):
    """q/k/v and gate/up get ONE Hessian / norm accumulation; the compressed weights do not change at all."""
    from kick_models.api import ALGORITHMS
    from kick_models.compress.config import QuantConfig
    from kick_models.compress.sequential import compress_layers

    config = QuantConfig(wbits=4, groupsize=32) if method == "gptq" else PruneConfig(method)
    tokens = calib(tok, n=6)
    results = []
    for share in (True, False):
        model = model_for("llama", tok)
        compress_layers(model, lambda lin: ALGORITHMS[method](lin, config), needs_calibration=True, tokens=tokens,
                        batch_size=4, progress=False, share_inputs=share)
        results.append(dict(model.named_parameters()))
    for name, p in results[0].items():
        assert torch.equal(p, results[1][name]), name


def test_collect_groups_linears_by_identical_input(tok):
    from kick_models.compress.sequential import _collect
    from kick_models.compress.sparsegpt import SparseGPTPruner

    model = model_for("llama", tok)
    path, layers = find_decoder_layers(model)
    tokens = calib(tok, n=4)
    with torch.no_grad():
        inps, calls = capture_inputs(model, layers, path, list(torch.split(tokens, 2)), torch.device("cpu"))
        linears = linear_modules(layers[0])
        comps = {n: SparseGPTPruner(lin, PruneConfig("sparsegpt")) for n, lin in linears.items()}
        fed = dict.fromkeys(comps, 0)
        for n, c in comps.items():
            original = c.add_batch
            c.add_batch = lambda x, n=n, original=original: (fed.__setitem__(n, fed[n] + 1), original(x))
        leaders = _collect(layers[0], comps, linears, inps, calls[0], "model.layers.0")
        # the same statistic, accumulated once, equals a separate accumulation of k_proj's own inputs
        alone = SparseGPTPruner(linears["self_attn.k_proj"], PruneConfig("sparsegpt"))
        _collect(layers[0], {"self_attn.k_proj": alone}, {"self_attn.k_proj": linears["self_attn.k_proj"]}, inps,
                 calls[0], "model.layers.0")
    assert leaders == {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
                       "mlp.up_proj": "mlp.gate_proj"}
    assert comps["self_attn.v_proj"].hessian is comps["self_attn.q_proj"].hessian
    assert comps["mlp.up_proj"].hessian is comps["mlp.gate_proj"].hessian
    assert comps["mlp.down_proj"].hessian is not comps["mlp.gate_proj"].hessian
    assert fed == {"self_attn.q_proj": 2, "self_attn.k_proj": 0, "self_attn.v_proj": 0, "self_attn.o_proj": 2,
                   "mlp.gate_proj": 2, "mlp.up_proj": 0, "mlp.down_proj": 2}
    assert torch.equal(alone.hessian.H, comps["self_attn.k_proj"].hessian.H)
