"""AWQ and SmoothQuant in kick: folding keeps the function, structure rules, bad input, the lm-eval door.

(Bit-exactness against the reference code: tests/test_awq_smoothquant_reference.py.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_models_cli import env, task_args  # noqa: F401  (fixtures of the lm_eval / kick CLI runs)
from tiny import DENSE_FAMILIES, FAMILIES, make_tiny_model

from kick_models.compress.awq import AWQ, AWQSettings
from kick_models.compress.config import CompressionConfigError, parse_scheme_args
from kick_models.compress.scaling import block_mappings
from kick_models.compress.sequential import capture_inputs, find_decoder_layers
from kick_models.compress.smoothquant import SmoothQuant
from kick_models.compress.transforms import NoFoldableMapping

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NORM_FAMILIES = tuple(dict.fromkeys(FAMILIES + DENSE_FAMILIES))
LLAMA_LAYOUT = ("llama", "qwen2", "gemma2", "mistral", "qwen3", "gemma3_text")
MHA = "llama-mha"  # one key/value head per query head: v_proj -> o_proj is scaled too
OTHER_LAYOUTS = tuple(f for f in NORM_FAMILIES if f not in LLAMA_LAYOUT)


def _tokens(n: int = 2, seq: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 300, (n, seq), generator=torch.Generator().manual_seed(seed))


def _transform_all_blocks(model, make):
    path, layers = find_decoder_layers(model)
    inps, calls = capture_inputs(model, layers, path, [_tokens()], torch.device("cpu"))
    for index, layer in enumerate(layers):
        inps, _ = make(layer).run(inps, calls[index])


@pytest.mark.parametrize("family", LLAMA_LAYOUT + (MHA,))
@pytest.mark.parametrize("method", ["awq", "smoothquant"])
def test_folded_scales_keep_the_dense_function(family, method):
    """Scaled (AWQ, no clipping) or smoothed, but unquantized: the logits equal the original's within float error."""
    model = make_tiny_model("llama", num_key_value_heads=4) if family == MHA else make_tiny_model(family)
    if family == MHA:
        assert "self_attn.v_proj" in [m.prev for m in block_mappings(model.model.layers[0]).mappings]
    with torch.no_grad():  # outlier channels, so the scales are far from 1
        for layer in find_decoder_layers(model)[1]:
            for norm in (layer.input_layernorm, getattr(layer, "pre_feedforward_layernorm", layer.post_attention_layernorm)):
                norm.weight.mul_(torch.linspace(0.2, 3.0, norm.weight.numel()))
    original = copy.deepcopy(model)
    if method == "awq":
        _transform_all_blocks(model, lambda layer: AWQ(layer, block_mappings(layer), AWQSettings(group_size=16, clip=False)))
    else:
        _transform_all_blocks(model, lambda layer: SmoothQuant(layer, block_mappings(layer), 0.8))
    changed = [n for (n, a), (_, b) in zip(model.named_parameters(), original.named_parameters()) if not torch.equal(a, b)]
    assert any("norm" in n for n in changed) and any("proj" in n for n in changed)
    tokens = _tokens(seed=1)
    with torch.no_grad():
        expected, got = original(tokens).logits, model(tokens).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", OTHER_LAYOUTS)
def test_other_layouts_are_refused_before_calibration(family):
    from kick_models.api import quantize

    model = make_tiny_model(family)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(NoFoldableMapping, match="LLaMA layout"):
        quantize(model, None, scheme="W4A16", method="awq", group_size=16, calibration=_tokens(), progress=False)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_moe_experts_are_quantized_without_a_scale_and_say_so():
    from kick_models.api import quantize

    model = make_tiny_model("mixtral")
    layer = find_decoder_layers(model)[1][0]
    mappings = block_mappings(layer)
    assert [m.prev for m in mappings.mappings] == ["input_layernorm"]
    assert [names for names, _ in mappings.skipped] == ["self_attn.o_proj", "mlp"]
    assert "MoE" in mappings.skipped[1][1]
    experts = layer.mlp.experts.gate_up_proj.detach().clone()
    report = quantize(model, None, scheme="W4A16", method="awq", group_size=16, calibration=_tokens(), progress=False)
    summary = report.transforms_summary()
    assert summary["scaled"] == ["input_layernorm -> self_attn.q_proj, self_attn.k_proj, self_attn.v_proj"]
    assert any(s.startswith("mlp: MixtralSparseMoeBlock") for s in summary["skipped"])
    assert not torch.equal(layer.mlp.experts.gate_up_proj, experts)  # the experts are still quantized
    assert len({round(v, 6) for v in layer.mlp.experts.gate_up_proj[0, 0, :16].tolist()}) <= 16


@pytest.mark.parametrize("args, match", [
    ({"scheme": "W4A16", "method": "awq", "damp": "0.1"}, "damp"),
    ({"scheme": "NVFP4A16", "method": "awq"}, "integer weight-only schemes W4A16, W4A16_ASYM, W8A16"),
    ({"scheme": "W8A8", "method": "awq"}, "method=awq with scheme=W8A8"),
    ({"scheme": "W8A8", "smoothquant": "0"}, r"alpha in \(0, 1\]"),
    ({"scheme": "W8A8", "smoothquant": "1.5"}, r"alpha in \(0, 1\]"),
    ({"scheme": "W8A8", "smoothquant": "-0.5"}, r"alpha in \(0, 1\]"),
    ({"scheme": "W8A8", "smoothquant": "strong"}, "expected a number"),
    ({"scheme": "W4A16", "smoothquant": "0.5"}, "W4A16 is weight-only"),
    ({"scheme": "W8A8", "smoothquant": "0.5", "method": "gptq"}, "not supported yet"),
    ({"scheme": "W4A16", "quantizer": "reference"}, "reference arithmetic exists for method=awq"),
    ({"scheme": "FP8_DYNAMIC", "smoothquant": "0.5", "quantizer": "reference"}, "scheme=W8A8"),
    ({"scheme": "W4A16", "method": "awq", "quantizer": "exact"}, "scheme, reference"),
    ({"scheme": "W8A8", "duo_scaling": "true"}, "option of method=awq"),
])
def test_bad_awq_and_smoothquant_arguments_are_refused_before_load(args, match):
    with pytest.raises(CompressionConfigError, match=match):
        parse_scheme_args(args)


def test_export_with_the_reference_quantizer_is_refused_before_load(tmp_path):
    from kick_models.lm import KickQuantSchemeLM

    with pytest.raises(CompressionConfigError, match="save_compressed with quantizer=reference"):
        KickQuantSchemeLM(pretrained=str(tmp_path / "never-loaded"), scheme="W8A8", smoothquant=0.5,
                          quantizer="reference", save_compressed=str(tmp_path / "out"))


def test_awq_and_smoothquant_defaults_follow_the_references():
    config, rest = parse_scheme_args({"scheme": "W4A16", "method": "awq", "pretrained": "x"})
    assert (config.quantizer, config.duo_scaling, config.smoothquant) == ("scheme", False, None)
    assert (config.calibration.nsamples, config.calibration.seqlen) == (128, 512)
    assert rest == {"pretrained": "x"}
    d = config.to_dict()
    assert d["method"] == "awq" and d["quantizer"] == "scheme" and "smoothquant" not in d
    sq = parse_scheme_args({"scheme": "W8A8", "smoothquant": "0.85"})[0]
    assert sq.smoothquant == 0.85 and sq.needs_calibration and sq.calibration.seqlen == 512
    plain = parse_scheme_args({"scheme": "W8A8"})[0].to_dict()  # kick-quant cache keys without them unchanged
    assert not {"smoothquant", "quantizer", "duo_scaling"} & set(plain)


def test_kick_quant_method_awq_caches_and_exports_the_scaled_norms(tiny_llama_dir, calib_txt, tmp_path):
    """lm-eval's door: the cache hit and the export both hold the transform (the norms AWQ scaled), so both
    compute what the compressed model in memory computes."""
    import json

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from kick_models.export import REPORT_FILE
    from kick_models.lm import KickQuantSchemeLM

    requests = [Instance(request_type="loglikelihood", doc={}, arguments=("The capital of France is", " Paris"),
                         idx=0),
                Instance(request_type="loglikelihood", doc={}, arguments=("Q: who wrote hamlet?\nA:", " Shakespeare"),
                         idx=1)]
    args = dict(pretrained=str(tiny_llama_dir), device="cpu", scheme="W4A16", method="awq", group_size=32,
                calib=calib_txt, nsamples=4, seqlen=64, cache_dir=str(tmp_path / "cache"))
    first = KickQuantSchemeLM(**args, save_compressed=str(tmp_path / "export"))
    info = first.compression_info()
    assert info["cache"]["status"] == "miss" and info["transforms"]["blocks"] == 2
    assert info["transforms"]["scaled"] == ["input_layernorm -> self_attn.q_proj, self_attn.k_proj, self_attn.v_proj",
                                            "mlp.up_proj -> mlp.down_proj",
                                            "post_attention_layernorm -> mlp.gate_proj, mlp.up_proj"]
    assert any(s.startswith("self_attn.o_proj:") for s in info["transforms"]["skipped"])
    norms = {k: v.clone() for k, v in first.model.state_dict().items() if "layernorm" in k}
    dense = HFLM(pretrained=str(tiny_llama_dir), device="cpu")
    assert any(not torch.equal(v, dense.model.state_dict()[k]) for k, v in norms.items())
    expected = [x[0] for x in first.loglikelihood(requests)]

    second = KickQuantSchemeLM(**args)
    assert second.compression_info()["cache"]["status"] == "hit"
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in norms.items())
    assert [x[0] for x in second.loglikelihood(requests)] == expected

    exported = HFLM(pretrained=str(tmp_path / "export"), device="cpu")
    assert [x[0] for x in exported.loglikelihood(requests)] == pytest.approx(expected, abs=1e-5)
    record = json.loads((tmp_path / "export" / REPORT_FILE).read_text())
    assert len(record["transforms"]) == 2 and record["summary"]["config"]["method"] == "awq"


# --------------------------------------------------------------------------- lm_eval, kick sweep, kick report


@pytest.mark.slow
def test_lm_eval_kick_quant_smoothquant_w8a8_and_its_report_row(tiny_llama_dir, calib_txt, task_args, env, tmp_path):
    from test_models_cli import BIN, _results, _run

    from kick_analysis.results_io import compression_info, config_label, load_single_run

    out = tmp_path / "out"
    _run([str(BIN / "lm_eval"), "--model", "kick-quant", "--model_args",
          f"pretrained={tiny_llama_dir},scheme=W8A8,smoothquant=0.8,calib={calib_txt},nsamples=4,seqlen=64",
          *task_args, "--limit", "4", "--output_path", str(out)], env)
    info = _results(out)["config"]["kick_compression"]
    assert info["config"]["smoothquant"] == 0.8 and info["config"]["quantizer"] == "scheme"
    assert info["transforms"]["method"] == "smoothquant" and info["transforms"]["blocks"] == 2
    assert info["transforms"]["scaled"] == ["input_layernorm -> self_attn.q_proj, self_attn.k_proj, self_attn.v_proj",
                                            "post_attention_layernorm -> mlp.gate_proj, mlp.up_proj"]
    run = load_single_run(out)
    assert compression_info(run)["method"] == "W8A8 smoothquant 0.8" == config_label(run)


def test_sweep_plans_awq_and_smoothquant_with_their_calibration(tiny_llama_dir, env):
    from test_models_cli import BIN, _run

    out = _run([str(BIN / "kick"), "sweep", "--model", str(tiny_llama_dir), "--output", "/nonexistent/sweep",
                "--schemes", "W4A16:method=awq:group_size=32,W8A8:smoothquant=0.8,W8A8", "--calib", "c4",
                "--nsamples", "8", "--tasks", "kick_factoid_qa", "--dry-run"], env)
    lines = [line for line in out.splitlines() if "--model kick-quant" in line]
    assert len(lines) == 3
    assert "scheme=W4A16,method=awq,group_size=32,calib=c4,nsamples=8" in lines[0]
    assert "scheme=W8A8,smoothquant=0.8,calib=c4,nsamples=8" in lines[1]
    assert "scheme=W8A8,cache_dir" in lines[2]  # plain W8A8: dynamic activations, no data


@pytest.mark.parametrize("kwargs", [dict(scheme="W4A16", method="awq", group_size=32),
                                    dict(scheme="W8A8", smoothquant=0.8)], ids=["awq", "smoothquant"])
def test_offloaded_blocks_get_the_same_transform(kwargs, tiny_llama_dir, tmp_path):
    """Blocks offloaded to CPU RAM behind accelerate hooks: the saved weights (norms included) equal a plain run's."""
    from kick_models.api import quantize
    from test_offload import load_cpu_offloaded, load_plain, saved_state

    tokens = _tokens(2, 32)
    plain = load_plain(tiny_llama_dir)
    quantize(plain, None, calibration=tokens, progress=False, **kwargs)
    offloaded = load_cpu_offloaded(tiny_llama_dir, ["model.layers.0", "model.layers.1"])
    quantize(offloaded, None, calibration=tokens, progress=False, **kwargs)
    expected, got = saved_state(plain, tmp_path / "plain"), saved_state(offloaded, tmp_path / "offloaded")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), [k for k in expected if not torch.equal(expected[k], got[k])]
    dense = saved_state(load_plain(tiny_llama_dir), tmp_path / "dense")
    assert not torch.equal(dense["model.layers.1.input_layernorm.weight"], got["model.layers.1.input_layernorm.weight"])


def test_duo_scaling_is_llm_compressors_formula():
    """duo_scaling: s = x_mean^r / (w_mean^(1-r) + 1e-4), w_mean = |W| / (group max + 1e-6) averaged over rows
    (llm-compressor's AWQModifier); r = 0 then gives 1 / (w_mean + 1e-4), normalised, not all ones."""
    from kick_models.compress.awq import search_scale

    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16, bias=False)
    x = [torch.randn(2, 8, 32) * torch.linspace(0.1, 5, 32)]
    settings = AWQSettings(bits=4, group_size=16, duo_scaling=True)
    got = search_scale(linear, [linear], x, [{}], settings)
    w = linear.weight.detach().reshape(-1, 16).abs()
    w_mean = (w / (w.amax(dim=1, keepdim=True) + 1e-6)).reshape(16, 32).mean(0)
    x_mean = x[0].abs().view(-1, 32).mean(0)
    candidates = []
    for i in range(20):
        s = (x_mean.pow(i / 20) / (w_mean.pow(1 - i / 20) + 1e-4)).clamp(min=1e-4)
        candidates.append(s / (s.max() * s.min()).sqrt())
    assert any(torch.equal(got, c) for c in candidates)
    plain = search_scale(linear, [linear], x, [{}], AWQSettings(bits=4, group_size=16))
    assert not torch.equal(got, plain)
