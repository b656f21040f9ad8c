"""AWQ and SmoothQuant equal the unmodified reference code (tests/reference/, MIT) bit for bit.

The reference functions run on tiny random LLaMA blocks with the same calibration inputs as kick's, on the CPU
as they run on the CUDA device they were written for (:mod:`reference_code`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from reference_code import emulated_cuda, load_references, reference_awq_block
from tiny import make_tiny_model, make_tokenizer
from torch import nn

from kick_models.compress.awq import AWQ, AWQSettings, pseudo_quantize, search_clip
from kick_models.compress.scaling import block_mappings
from kick_models.compress.sequential import capture_inputs, find_decoder_layers
from kick_models.compress.smoothquant import SmoothQuant, install_reference_w8a8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ref():
    return load_references()


def tiny_llama(kv_heads: int, seed: int = 0, hidden: int = 128, intermediate: int = 256, layers: int = 2):
    """Widths the reference accepts: Linear outputs multiples of 64, inputs multiples of the group size."""
    return make_tiny_model("llama", seed=seed, hidden=hidden, intermediate=intermediate, layers=layers,
                           num_key_value_heads=kv_heads)


def block_inputs(model, tokens: torch.Tensor):
    path, layers = find_decoder_layers(model)
    inps, calls = capture_inputs(model, layers, path, [tokens], torch.device("cpu"))
    return layers, inps, calls


def linear_names(block: nn.Module) -> list[str]:
    return [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------- AWQ


@pytest.mark.parametrize("kv_heads, hidden, group", [(4, 64, 32), (2, 128, 128)], ids=["mha-v-o-g32", "gqa-g128"])
def test_awq_scales_clips_and_quantized_weights_equal_llm_awq(ref, kv_heads, hidden, group):
    """One block (gate/up: 256 output rows, one batch of 256; down: 64-row batches)."""
    model = tiny_llama(kv_heads, hidden=hidden, intermediate=256 if hidden == 64 else 128, layers=1)
    tokens = torch.randint(0, 384, (4, 128), generator=torch.Generator().manual_seed(3))  # 512 tokens
    layers, inps, calls = block_inputs(model, tokens)
    ref_x, kick_x = inps[0], inps[0]
    for layer in layers:
        ref_layer, kick_layer = copy.deepcopy(layer), copy.deepcopy(layer)
        q_config = {"zero_point": True, "q_group_size": group}
        with emulated_cuda():
            ref_x, scales_list, clip_list = reference_awq_block(ref, ref_layer, ref_x, dict(calls[0][0][1]), 4, q_config)
        mappings = block_mappings(kick_layer)
        assert [m.prev for m in mappings.mappings] == ([p for p, _, _ in scales_list])
        outs, result = AWQ(kick_layer, mappings, AWQSettings(bits=4, group_size=group)).run([kick_x], [calls[0][0]])
        kick_x = outs[0]
        assert torch.equal(kick_x, ref_x)  # the next block's input: the dense block's output
        assert len(result.scales) == len(scales_list) == (4 if kv_heads == 4 else 3)
        for prev, names, scales in scales_list:
            assert torch.equal(result.scales[(prev, tuple(names))], scales), (prev, names)
        assert list(result.clips) == [name for name, _ in clip_list] == [
            "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        for name, max_val in clip_list:
            assert torch.equal(result.clips[name], max_val), name
        for (name, a), (_, b) in zip(kick_layer.named_parameters(), ref_layer.named_parameters()):
            assert torch.equal(a, b), name  # scaled norms and weights, clipped weights
        for name in linear_names(kick_layer):
            w_ref = ref.quantizer.pseudo_quantize_tensor(ref_layer.get_submodule(name).weight.data, n_bit=4, **q_config)
            assert torch.equal(pseudo_quantize(kick_layer.get_submodule(name).weight.data, 4, group), w_ref), name
        if kv_heads == 2:
            assert [n for n, _ in result.skipped] == ["self_attn.o_proj"]  # GQA: no v -> o scale


def test_awq_clip_search_samples_tokens_as_the_reference(ref):
    """1100 tokens: the reference keeps every 2nd (``n_tokens // 512``); two output batches of 64 rows."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(128, 128, generator=g)
    x = torch.randn(1100, 128, generator=g) * torch.logspace(-1, 1, 128)
    q_config = {"zero_point": True, "q_group_size": 32}
    expected = ref.auto_clip.auto_clip_layer(w, x.clone(), n_bit=3, q_config=q_config)
    assert torch.equal(search_clip(w, x.clone(), AWQSettings(bits=3, group_size=32)), expected)


def test_awq_quantizer_equals_pseudo_quantize_tensor_on_odd_weights(ref):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-3, 1, 256)
    w[3, :64] = 0.0  # an all-zero group: the 1e-5 clamp
    for bits, group in ((4, 128), (3, 64), (8, 256)):
        expected = ref.quantizer.pseudo_quantize_tensor(w.clone(), n_bit=bits, zero_point=True, q_group_size=group)
        assert torch.equal(pseudo_quantize(w.clone(), bits, group), expected)


# --------------------------------------------------------------------------- SmoothQuant


@pytest.fixture(scope="module")
def sq_texts(tmp_path_factory) -> tuple[Path, list[str]]:
    texts = [f"Sample {i}: the quick brown fox jumps over the lazy dog {'again ' * i} and answers {i * 7}."
             for i in range(6)]
    path = tmp_path_factory.mktemp("sq") / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path, texts


@pytest.mark.parametrize("alpha", [0.5, 0.85])
def test_smoothquant_scales_weights_and_quantized_outputs_equal_the_reference(ref, sq_texts, alpha):
    path, texts = sq_texts
    tok = make_tokenizer()
    model = tiny_llama(kv_heads=2, seed=1)
    ref_model, kick_model = copy.deepcopy(model), copy.deepcopy(model)
    with emulated_cuda():
        act_scales = ref.calibration.get_act_scales(ref_model, tok, str(path), num_samples=len(texts), seq_len=512)
        ref.smooth.smooth_lm(ref_model, act_scales, alpha)
    # kick: the same token sequences, one batch each; every block sees the dense model's activations
    batches = [tok(t, return_tensors="pt").input_ids for t in texts]
    path_, layers = find_decoder_layers(kick_model)
    inps, calls = capture_inputs(kick_model, layers, path_, batches, torch.device("cpu"))
    for index, layer in enumerate(layers):
        sq = SmoothQuant(layer, block_mappings(layer), alpha)
        inps, result = sq.run(inps, calls[index])
        for name in ("self_attn.q_proj", "mlp.gate_proj"):
            assert torch.equal(result.act_max[name], act_scales[f"{path_}.{index}.{name}"]), name
    for (name, a), (_, b) in zip(kick_model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(a, b), name
    # quantized Linear outputs: W8A8Linear (per-channel weights, per-token activations) vs kick's reference quantizer
    x = torch.randn(2, 7, 128, generator=torch.Generator().manual_seed(5)) * 4
    for name in linear_names(layers[0]):
        ref_lin = copy.deepcopy(ref_model.get_submodule(f"{path_}.0.{name}"))
        kick_lin = copy.deepcopy(layers[0].get_submodule(name))
        xin = x if kick_lin.in_features == 128 else torch.randn(2, 7, kick_lin.in_features)
        expected = ref.fake_quant.W8A8Linear.from_float(ref_lin)(xin.clone())
        install_reference_w8a8(kick_lin)
        assert torch.equal(kick_lin(xin.clone()), expected), name


def test_smoothquant_alpha_outside_zero_one_is_refused():
    layer = tiny_llama(kv_heads=2).model.layers[0]
    for alpha in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            SmoothQuant(layer, block_mappings(layer), alpha)


# --------------------------------------------------------------------------- the whole model, through kick's driver


def test_quantize_awq_equals_llm_awq_run_over_every_block(ref):
    """kick.quantize(scheme=W4A16_ASYM, method=awq, quantizer=reference) == llm-awq's run_awq loop +
    pseudo_quantize_model_weight (zero point on, as the reference always quantizes)."""
    from kick_models.api import quantize

    model = tiny_llama(kv_heads=2, seed=2, intermediate=128)
    ref_model = copy.deepcopy(model)
    tokens = torch.randint(0, 384, (4, 128), generator=torch.Generator().manual_seed(4))  # 512 tokens
    q_config = {"zero_point": True, "q_group_size": 64}
    report = quantize(model, None, scheme="W4A16_ASYM", method="awq", group_size=64, calibration=tokens, batch_size=4,
                      quantizer="reference", progress=False)
    layers, inps, calls = block_inputs(ref_model, tokens)
    x = inps[0]
    with emulated_cuda():
        for layer in layers:
            x, _, _ = reference_awq_block(ref, layer, x, dict(calls[0][0][1]), 4, q_config)
        for layer in layers:
            for name in linear_names(layer):
                m = layer.get_submodule(name)
                m.weight.data = ref.quantizer.pseudo_quantize_tensor(m.weight.data, n_bit=4, **q_config)
    for (name, a), (_, b) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(a, b), name
    assert [r["block"] for r in report.transforms] == ["model.layers.0", "model.layers.1"]
    assert report.transformed_params() == [f"model.layers.{i}.{n}.weight" for i in range(2)
                                           for n in ("input_layernorm", "post_attention_layernorm")]
    assert report.transforms[0]["skipped"][0][0] == "self_attn.o_proj"
    # the stored quantization parameters reproduce the weights: scale * (q - zero), q integer in [0, 15]
    for stats in report.layers:
        w = model.get_parameter(f"{stats.name}.weight").detach()
        scales = stats.quant_params["scales"].t().repeat_interleave(64, dim=1)
        zeros = stats.quant_params["zeros"].t().repeat_interleave(64, dim=1)
        q = torch.round(w / scales + zeros)
        assert q.min() >= 0 and q.max() <= 15
        torch.testing.assert_close(scales * (q - zeros), w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("quantizer", ["scheme", "reference"])
def test_quantize_awq_transform_is_the_same_whatever_the_final_quantizer(quantizer):
    """The transform (scales, clips) does not depend on the final quantizer; by default the scheme's arithmetic
    (compressed-tensors') then quantizes."""
    from kick_models.api import quantize
    from kick_models.compress import schemes

    model = make_tiny_model("llama", seed=3, num_key_value_heads=4)
    tokens = torch.randint(0, 384, (2, 64), generator=torch.Generator().manual_seed(4))
    dense = copy.deepcopy(model)
    layers, inps, calls = block_inputs(dense, tokens)
    x = inps[0]
    for layer in layers:  # kick's own transform alone, no quantization
        outs, _ = AWQ(layer, block_mappings(layer), AWQSettings(bits=4, group_size=32)).run([x], [calls[0][0]])
        x = outs[0]
    report = quantize(model, None, scheme="W4A16_ASYM", method="awq", group_size=32, calibration=tokens, batch_size=2,
                      quantizer=quantizer, progress=False)
    args = schemes.resolve_scheme("W4A16_ASYM", 32).weights
    for (name, a), (_, b) in zip(model.named_parameters(), dense.named_parameters()):
        if "norm" in name:
            assert torch.equal(a, b), name
        elif name.startswith("model.layers"):
            expected = (schemes.quantize_weight(b.detach(), args)[0] if quantizer == "scheme"
                        else pseudo_quantize(b.detach(), 4, 32))
            assert torch.equal(a, expected), name
    assert report.config["quantizer"] == quantizer


@pytest.mark.parametrize("alpha", [0.5, 0.85])
def test_quantize_smoothquant_w8a8_reference_logits_equal_the_reference_model(ref, sq_texts, alpha):
    """kick.quantize(scheme=W8A8, smoothquant=alpha, quantizer=reference): the logits equal those of the reference
    pipeline (get_act_scales -> smooth_lm -> quantize_model: W8A8Linear per-channel / per-token) bit for bit."""
    from kick_models.api import quantize

    path, texts = sq_texts
    tok = make_tokenizer()
    model = tiny_llama(kv_heads=2, seed=1)
    ref_model = copy.deepcopy(model)
    length = min(len(tok(t).input_ids) for t in texts)
    with emulated_cuda():
        act_scales = ref.calibration.get_act_scales(ref_model, tok, str(path), num_samples=len(texts), seq_len=length)
        ref.smooth.smooth_lm(ref_model, act_scales, alpha)
        ref.fake_quant.quantize_model(ref_model)
    tokens = torch.stack([tok(t, return_tensors="pt").input_ids[0, :length] for t in texts])
    report = quantize(model, None, scheme="W8A8", smoothquant=alpha, quantizer="reference", calibration=tokens,
                      batch_size=1, progress=False)
    assert report.transforms_summary()["scaled"] == [
        "input_layernorm -> self_attn.q_proj, self_attn.k_proj, self_attn.v_proj",
        "post_attention_layernorm -> mlp.gate_proj, mlp.up_proj"]
    probe = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(model(probe).logits, ref_model(probe).logits)


def test_quantize_smoothquant_default_quantizer_is_the_scheme_after_the_same_smoothing():
    from kick_models.api import quantize
    from kick_models.compress import schemes
    from kick_models.compress.smoothquant import (
        quantize_weight_per_channel_absmax as ref_w8,
    )

    model = tiny_llama(kv_heads=2, seed=1)
    smoothed = copy.deepcopy(model)
    tokens = torch.randint(0, 384, (2, 32), generator=torch.Generator().manual_seed(2))
    layers, inps, calls = block_inputs(smoothed, tokens)
    x = inps
    for layer in layers:
        x, _ = SmoothQuant(layer, block_mappings(layer), 0.8).run(x, [calls[0][0]])
    quantize(model, None, scheme="W8A8", smoothquant=0.8, calibration=tokens, batch_size=2, progress=False)
    args = schemes.resolve_scheme("W8A8").weights
    differs = 0
    for (name, a), (_, b) in zip(model.named_parameters(), smoothed.named_parameters()):
        if "norm" in name or not name.startswith("model.layers"):
            assert torch.equal(a, b), name
        else:
            assert torch.equal(a, schemes.quantize_weight(b.detach(), args)[0]), name
            differs += not torch.equal(a, ref_w8(b.detach().clone()))
    assert differs > 0  # compressed-tensors' absmax / 127.5 grid, not the reference's absmax / 127
