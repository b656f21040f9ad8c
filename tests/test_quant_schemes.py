"""kick-quant: compressed-tensors schemes, checked against compressed-tensors itself.

The reference in every test is computed through compressed-tensors' public API on a copy of the dense model:
``apply_quantization_config`` (its quantized forward on every Linear), scales from its ``calculate_qparams`` /
``compute_dynamic_scales_and_zp`` / ``generate_gparam`` on min / max taken here, and its ``forward_quantize``.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("compressed_tensors")

from compressed_tensors.quantization import (
    QuantizationConfig,
    QuantizationStatus,
    apply_quantization_config,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.lifecycle.forward import forward_quantize
from compressed_tensors.quantization.utils import (
    calculate_qparams,
    generate_gparam,
)
from tiny import make_tiny_model

from kick_models import quantize
from kick_models.compress.config import CompressionConfigError, parse_scheme_args

SCHEMES = ("FP8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4", "NVFP4A16", "MXFP4", "MXFP4A16",
           "W8A8", "W8A16", "W4A16", "W4A16_ASYM")
STATIC = ("FP8", "NVFP4")  # static input scales (NVFP4: its activation global scale)
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@pytest.fixture(scope="module")
def dense():
    """hidden 128 / intermediate 256: every scheme's groups and FP8_BLOCK's 128-wide blocks divide the widths."""
    return make_tiny_model("llama", hidden=128, intermediate=256, seed=3)


@pytest.fixture(scope="module")
def calib():
    return torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(5))


def block_linears(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in name}


def ref_min_max(weight, args):
    """The weight's min / max per quantization parameter, taken here for each strategy."""
    s = args.strategy
    if s == "tensor":
        return weight.amin().reshape(1), weight.amax().reshape(1)
    if s == "channel":
        return weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True)
    if s in ("group", "tensor_group"):
        g = weight.unflatten(-1, (-1, args.group_size))
        return g.amin(-1), g.amax(-1)
    if s == "block":
        bh, bw = args.block_structure
        rows, cols = weight.shape
        pad = (-rows) % bh
        w = torch.nn.functional.pad(weight, (0, 0, 0, pad)) if pad else weight
        b = w.reshape(w.shape[0] // bh, bh, cols // bw, bw).transpose(1, 2).flatten(-2)
        return b.amin(-1), b.amax(-1)
    raise AssertionError(s)


def reference_model(dense, scheme_name, calib_inputs=None):
    """compressed-tensors' quantized model: weight qparams set from min / max taken here (NVFP4 global
    scales fused over q/k/v and gate/up from the dense weights); static input qparams from the given inputs."""
    ref = copy.deepcopy(dense)
    scheme = preset_name_to_scheme(scheme_name, ["Linear"])
    apply_quantization_config(ref, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]),
                              show_progress=False)
    linears = block_linears(ref)
    args = scheme.weights
    global_scales = {}
    if args.strategy == "tensor_group":
        for name, m in linears.items():
            head, _, last = name.rpartition(".")
            partners = next((g for g in FUSED if last in g), (last,))
            absmax = max(linears[f"{head}.{p}"].weight.abs().max() for p in partners)
            global_scales[name] = generate_gparam(-absmax.reshape(1), absmax.reshape(1))
    for name, m in linears.items():
        lo, hi = ref_min_max(m.weight.data, args)
        gs = global_scales.get(name)
        scale, zp = calculate_qparams(lo, hi, args, global_scale=gs)
        m.weight_scale.data = scale.to(m.weight_scale.dtype)
        if hasattr(m, "weight_zero_point"):
            m.weight_zero_point.data = zp.to(m.weight_zero_point.dtype)
        if gs is not None:
            m.weight_global_scale.data = gs
    if calib_inputs is not None:
        acts = scheme.input_activations
        for name, m in linears.items():
            x = calib_inputs[name]
            if acts.strategy == "tensor_group":  # NVFP4: static global scale, dynamic local scales
                absmax = torch.max(-x.amin(), x.amax())
                m.input_global_scale.data = generate_gparam(-absmax.reshape(1), absmax.reshape(1))
            else:
                scale, zp = calculate_qparams(x.amin().reshape(1), x.amax().reshape(1), acts)
                m.input_scale.data = scale.to(m.input_scale.dtype)
                if hasattr(m, "input_zero_point"):
                    m.input_zero_point.data = zp.to(m.input_zero_point.dtype)
    for m in linears.values():
        m.quantization_status = QuantizationStatus.FROZEN
    return ref, linears, scheme


def reference_weights(ref_linears, scheme):
    return {name: forward_quantize(m, m.weight.data, "weight", scheme.weights) for name, m in ref_linears.items()}


def captured_inputs(model, tokens):
    """Every block Linear's input over all calibration tokens (one forward, activations unquantized)."""
    seen, handles = {}, []
    for name, m in block_linears(model).items():
        handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: seen.setdefault(n, []).append(a[0])))
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for n, xs in seen.items()}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_weights_bit_identical_to_compressed_tensors(scheme, dense, calib, one_torch_thread):
    model = copy.deepcopy(dense)
    report = quantize(model, None, scheme=scheme, calibration=calib if scheme in STATIC else None, progress=False)
    ref, ref_linears, cts = reference_model(dense, scheme)
    expected = reference_weights(ref_linears, cts)
    got = block_linears(model)
    assert set(got) == set(expected) and len(got) == 14
    for name, w in expected.items():
        assert torch.equal(got[name].weight.data, w), name
        assert not torch.equal(w, dict(block_linears(dense))[name].weight.data), name  # really quantized
    assert report.summary()["config"]["scheme"] == scheme


@pytest.mark.parametrize("scheme", ("FP8_DYNAMIC", "W8A8", "MXFP4", "FP8_BLOCK", "FP8", "NVFP4"))
def test_activation_quantization_matches_compressed_tensors_forward(scheme, dense, calib, one_torch_thread):
    """Logits of kick's model == compressed-tensors' quantized forward of the same model. Static scales: the
    reference observes block i's Linear inputs with the blocks before it quantized, block i itself dense and
    activations unquantized (llm-compressor's sequential pipeline: calibration forwards run with quantization
    disabled, a block's weights change at the end of its own calibration)."""
    model = copy.deepcopy(dense)
    quantize(model, None, scheme=scheme, calibration=calib if scheme in STATIC else None, progress=False)
    calib_inputs = None
    if scheme in STATIC:
        _, ref0_linears, cts = reference_model(dense, scheme)
        quantized = reference_weights(ref0_linears, cts)
        calib_inputs = {}
        for block in range(len(dense.model.layers)):
            upstream = copy.deepcopy(dense)
            for name, m in block_linears(upstream).items():
                if int(name.split(".")[2]) < block:
                    m.weight.data = quantized[name]
            seen = captured_inputs(upstream, calib)
            calib_inputs.update({n: x for n, x in seen.items() if int(n.split(".")[2]) == block})
    ref, _, _ = reference_model(dense, scheme, calib_inputs)
    tokens = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got, want = model(tokens).logits, ref(tokens).logits
        plain = copy.deepcopy(model)
        for m in block_linears(plain).values():  # same weights, activation hooks off: the activations matter
            m._forward_pre_hooks.clear()
        weights_only = plain(tokens).logits
    assert torch.equal(got, want)
    assert not torch.equal(got, weights_only)


def test_nvfp4_global_scale_is_shared_by_fused_sets(dense, one_torch_thread):
    model = copy.deepcopy(dense)
    report = quantize(model, None, scheme="NVFP4A16", progress=False)
    gs = {s.name.rsplit(".", 1)[-1] + s.name.split(".")[2]: s.quant_params["weight_global_scale"] for s in report.layers}
    for block in ("0", "1"):
        assert torch.equal(gs["q_proj" + block], gs["k_proj" + block]) and torch.equal(gs["q_proj" + block], gs["v_proj" + block])
        assert torch.equal(gs["gate_proj" + block], gs["up_proj" + block])
        assert not torch.equal(gs["q_proj" + block], gs["o_proj" + block])


def expected_bits(model, value_bits, scale_bits, group=None, per="group", zp_bits=0, global_bits=0):
    """Storage bits per weight counted here from the model's Linear shapes."""
    total = bits = 0
    for m in block_linears(model).values():
        rows, cols = m.weight.shape
        n = rows * cols
        scales = {"group": rows * cols // (group or 1), "channel": rows, "tensor": 1}[per]
        total += n
        bits += value_bits * n + (scale_bits + zp_bits) * scales + global_bits
    return bits / total


@pytest.mark.parametrize("scheme,expect", [
    ("NVFP4A16", dict(value_bits=4, scale_bits=8, group=16, global_bits=32)),
    ("MXFP4A16", dict(value_bits=4, scale_bits=8, group=32)),
    ("W4A16", dict(value_bits=4, scale_bits=32, group=128)),  # fp32 tiny model: scales in the model dtype
    ("W4A16_ASYM", dict(value_bits=4, scale_bits=32, group=128, zp_bits=4)),
    ("W8A8", dict(value_bits=8, scale_bits=32, per="channel")),
    ("FP8_DYNAMIC", dict(value_bits=8, scale_bits=32, per="channel")),
])
def test_bits_per_weight_counted_independently(scheme, expect, dense, one_torch_thread):
    model = copy.deepcopy(dense)
    report = quantize(model, None, scheme=scheme, progress=False)
    assert report.bits_per_weight() == pytest.approx(expected_bits(dense, **expect), rel=1e-12)


def test_ignore_keeps_layers_dense_and_counts_them_at_dtype_bits(dense, one_torch_thread):
    model = copy.deepcopy(dense)
    report = quantize(model, None, scheme="W8A16", ignore=("lm_head", "re:.*mlp.down_proj"), progress=False)
    for name, m in block_linears(model).items():
        same = torch.equal(m.weight.data, block_linears(dense)[name].weight.data)
        assert same == name.endswith("down_proj"), name
    bits = {s.name: s.bits_per_weight for s in report.layers}
    assert bits["model.layers.0.mlp.down_proj"] == 32.0 and bits["model.layers.0.mlp.up_proj"] == 8.25


# ------------------------------------------------------------------------------------------ bad input

def test_group_not_dividing_the_width_is_refused_with_the_override_offered(one_torch_thread):
    model = make_tiny_model("llama")  # hidden 64: W4A16's groups of 128 do not fit
    with pytest.raises(CompressionConfigError, match=r"input width 64 is not a multiple of .* group size 128.*group_size="):
        quantize(model, None, scheme="W4A16", progress=False)
    report = quantize(model, None, scheme="W4A16", group_size=32, progress=False)
    assert report.summary()["config"]["group_size"] == 32 and report.summary()["config"]["weights"]["group_size"] == 32


def test_bad_arguments_refused_before_any_model():
    with pytest.raises(CompressionConfigError, match="known schemes are FP8, FP8_DYNAMIC"):
        parse_scheme_args({"scheme": "NVFP5"})
    with pytest.raises(CompressionConfigError, match="Missing scheme"):
        parse_scheme_args({})
    with pytest.raises(CompressionConfigError, match="uses no calibration data"):
        parse_scheme_args({"scheme": "W4A16", "calib": "c4"})
    with pytest.raises(CompressionConfigError, match="not quantized in groups"):
        parse_scheme_args({"scheme": "FP8_DYNAMIC", "group_size": "32"})
    with pytest.raises(CompressionConfigError, match="group_size="):
        parse_scheme_args({"scheme": "W4A16", "groupsize": "32"})
    config, rest = parse_scheme_args({"scheme": "nvfp4", "calib": "c4", "nsamples": "8", "dtype": "float32"})
    assert config.scheme == "NVFP4" and config.calibration.nsamples == 8 and rest == {"dtype": "float32"}


def test_static_activation_scheme_without_calibration_data_is_refused(dense):
    with pytest.raises(CompressionConfigError, match="static input activation scales, calibrated on data"):
        quantize(copy.deepcopy(dense), None, scheme="FP8", progress=False)


@pytest.mark.parametrize("scheme", ("W4A16", "NVFP4A16", "MXFP4A16", "W8A8", "FP8_BLOCK"))
def test_gptq_stays_on_the_schemes_grid_and_beats_rtn(scheme, dense, calib, one_torch_thread):
    """GPTQ on a scheme: every weight is a point of the grid compressed-tensors defines from the dense weight
    (re-quantizing it with the reference parameters changes nothing), and block 0's Linears reproduce their
    outputs on the calibration inputs better than round to nearest."""
    gptq = copy.deepcopy(dense)
    report = quantize(gptq, None, scheme=scheme, method="gptq", calibration=calib, progress=False)
    rtn = copy.deepcopy(dense)
    quantize(rtn, None, scheme=scheme, progress=False)
    _, ref_linears, cts = reference_model(dense, scheme)
    got = block_linears(gptq)
    for name, m in ref_linears.items():
        w = got[name].weight.data
        assert torch.equal(forward_quantize(m, w, "weight", cts.weights), w), name
    inputs = captured_inputs(dense, calib)
    better = 0
    for name, x in inputs.items():
        if not name.startswith("model.layers.0."):
            continue
        exact = x @ block_linears(dense)[name].weight.data.t()
        err = lambda model: (x @ block_linears(model)[name].weight.data.t() - exact).pow(2).sum()
        better += bool(err(gptq) < err(rtn))
    assert better >= 6  # of block 0's 7 Linears
    assert all(s.error is not None and s.damp is not None for s in report.layers)


def test_gptq_needs_calibration_data(dense):
    with pytest.raises(CompressionConfigError, match="method=gptq needs calibration data"):
        quantize(copy.deepcopy(dense), None, scheme="W4A16", method="gptq", calibration=None, progress=False)


def test_fused_moe_experts_quantized_per_expert_and_activation_schemes_refused(one_torch_thread):
    """qwen3_moe (transformers 5.x fused experts): every expert's gate / up / down slice is quantized on its own,
    bit-identically to compressed-tensors' quantization of that slice; the router stays dense; run-time
    activation quantization needs real Linears, so W8A8 is refused before any work."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    dense = make_tiny_model("qwen3_moe")
    model = copy.deepcopy(dense)
    report = quantize(model, None, scheme="MXFP4A16", progress=False)
    args = preset_name_to_scheme("MXFP4A16", ["Linear"]).weights
    for block, layer in enumerate(model.model.layers):
        experts, ref = layer.mlp.experts, dense.model.layers[block].mlp.experts
        for name in ("gate_up_proj", "down_proj"):
            for e in range(getattr(experts, name).shape[0]):
                w = getattr(ref, name)[e]
                halves = w.chunk(2, 0) if name == "gate_up_proj" else (w,)
                want = torch.cat([fake_quantize(h, *calculate_qparams(*ref_min_max(h, args), args), args) for h in halves])
                assert torch.equal(getattr(experts, name)[e], want), (block, name, e)
        assert torch.equal(layer.mlp.gate.weight, dense.model.layers[block].mlp.gate.weight)
    assert report.summary()["coverage"]["kept"]  # the routers, at their dtype's bits
    with pytest.raises(CompressionConfigError, match="fused experts"):
        quantize(copy.deepcopy(dense), None, scheme="W8A8", progress=False)
