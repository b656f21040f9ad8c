"""Every weight a model really has is compressed: fused MoE experts, expert lists, GPT-2 Conv1D; routers stay dense.

Tiny random models (2 blocks, hidden 64) of dense, GPT-2 and MoE families are built here. Every figure is
counted by the test itself from the weights (per expert slice, per Conv1D, per quantization group) and
compared with what kick reports.
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kick_models import prune, quantize
from kick_models.compress.config import CompressionConfigError, PruneConfig, parse_prune_args, parse_quant_args
from kick_models.compress.sequential import find_decoder_layers
from tiny import DENSE_FAMILIES, MOE_FAMILIES, make_tiny_model, make_tiny_model_dir

BIN = Path(sys.executable).parent
# the routers of the MoE families tested (``mlp.gate``; 4.x mixtral: ``block_sparse_moe.gate``; qwen2_moe's shared gate)
ROUTER_SUFFIXES = (".gate.weight", ".shared_expert_gate.weight")
CALIB = torch.randint(0, 384, (4, 16), generator=torch.Generator().manual_seed(0))


def model_of(family: str, **kwargs) -> nn.Module:
    try:
        return make_tiny_model(family, **kwargs)
    except (ValueError, KeyError) as exc:  # an older transformers (e.g. 4.x in another venv) without the family
        pytest.skip(f"transformers cannot build {family}: {exc}")


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def block_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every >= 2-D parameter of the decoder blocks, by full name."""
    path, layers = find_decoder_layers(model)
    return {f"{path}.{i}.{n}": p.detach() for i, layer in enumerate(layers) for n, p in layer.named_parameters()
            if p.dim() >= 2}


def matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """The test's own [out, in] matrices: nn.Linear weights, Conv1D weights transposed, and each expert's gate,
    up and down slice of fused 3-D expert tensors (``gate_up_proj [E, 2I, H]``: gate = first I rows), named
    ``...experts.<e>.<param>[.gate|.up]`` like the Linears of 4.x expert lists. Routers excluded."""
    path, layers = find_decoder_layers(model)
    out = {}
    for i, layer in enumerate(layers):
        modules = dict(layer.named_modules())
        for name, p in layer.named_parameters():
            full = f"{path}.{i}.{name}"
            if p.dim() < 2 or full.endswith(ROUTER_SUFFIXES):
                continue
            owner = modules[name.rsplit(".", 1)[0]] if "." in name else layer
            if p.dim() == 3:
                base, pname = full.rsplit(".", 1)
                for e in range(p.shape[0]):
                    if pname == "gate_up_proj":
                        half = p.shape[1] // 2
                        out[f"{base}.{e}.{pname}.gate"], out[f"{base}.{e}.{pname}.up"] = p[e, :half], p[e, half:]
                    else:
                        out[f"{base}.{e}.{pname}"] = p[e]
            elif is_conv1d(owner):
                out[full] = p.t()
            else:
                out[full] = p
    return out


def expert_of(name: str) -> int | None:
    found = re.search(r"\.experts\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def moe_blocks(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's MoE block (``mlp``; ``block_sparse_moe`` in transformers 4.x mixtral)."""
    return [getattr(layer, "block_sparse_moe", None) or layer.mlp for layer in model.model.layers]


def fused_only(model: nn.Module) -> nn.Module:
    if not all(hasattr(block.experts, "gate_up_proj") for block in moe_blocks(model)):
        pytest.skip("this transformers stores experts as nn.Linear lists already (no fused tensors to compare)")
    return model


def stats_name(name: str) -> str:
    """The name kick gives a matrix of :func:`matrices` (fused gate/up halves: ``gate_proj``/``up_proj``)."""
    return name.removesuffix(".weight").replace("gate_up_proj.gate", "gate_proj").replace("gate_up_proj.up", "up_proj")


def routers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.clone() for n, p in block_params(model).items() if n.endswith(ROUTER_SUFFIXES)}


def own_sparsity(model: nn.Module) -> float:
    params = block_params(model).values()
    return sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params)


def own_bits(model: nn.Module, wbits: int, groupsize: int) -> float:
    """Storage bits per weight over all block weights: quantized matrices at wbits + a 16-bit scale and a
    wbits zero per group and row; routers at 32 bits (float32)."""
    total = sum(p.numel() for p in block_params(model).values())
    bits = sum(32 * p.numel() for p in routers(model).values())
    for W in matrices(model).values():
        rows, cols = W.shape
        groups = 1 if groupsize == -1 else math.ceil(cols / groupsize)
        bits += wbits * rows * cols + (16 + wbits) * groups * rows
    return bits / total


def check_report_figures(model, report, routers_before):
    summary = report.summary()
    assert summary["measured_sparsity"] == own_sparsity(model)
    path, _ = find_decoder_layers(model)
    kept = summary["coverage"]["kept"]
    assert set(kept) == set(routers_before), kept
    assert all("router" in reason for reason in kept.values())
    for name, before in routers_before.items():
        assert torch.equal(block_params(model)[name], before), f"router {name} changed"
    own_fraction = 1 - sum(p.numel() for p in routers_before.values()) / sum(p.numel() for p in block_params(model).values())
    assert summary["coverage"]["compressed_fraction"] == pytest.approx(own_fraction, abs=1e-12)


# -------------------------------------------------------------------------- every method, every family

METHODS = {
    "magnitude": dict(kind="prune", method="magnitude"),
    "wanda": dict(kind="prune", method="wanda"),
    "wanda-variant": dict(kind="prune", method="wanda", use_variant=True),
    "sparsegpt": dict(kind="prune", method="sparsegpt"),
    "wanda-2:4": dict(kind="prune", method="wanda", sparsity_type="2:4"),
    "sparsegpt-2:4": dict(kind="prune", method="sparsegpt", sparsity_type="2:4"),
    "gptq": dict(kind="quant", method="gptq"),
    "rtn": dict(kind="quant", method="rtn"),
}
# GPTQ's options, one combination per family (act-order only with static groups, so groups stay contiguous)
GPTQ_OPTIONS = {
    "mixtral": dict(groupsize=32, act_order=True, static_groups=True),
    "qwen2_moe": dict(groupsize=32, sym=True),
    "qwen3_moe": dict(groupsize=-1),
    "deepseek_v3": dict(groupsize=32, act_order=True, true_sequential=True),  # groups follow the act-order
    "gpt2": dict(groupsize=32, act_order=True, static_groups=True, sym=True),
}


def run_method(model, spec: dict, family: str, **extra):
    spec = dict(spec)
    kind, method = spec.pop("kind"), spec.pop("method")
    calibration = {} if method in ("magnitude", "rtn") else {"calibration": CALIB}
    if kind == "prune":
        return prune(model, None, method=method, progress=False, **calibration, **spec, **extra)
    options = GPTQ_OPTIONS[family] if method == "gptq" else {"groupsize": 32}
    return quantize(model, None, method=method, wbits=4, progress=False, **calibration, **options, **extra)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", [*MOE_FAMILIES, "gpt2"])
def test_every_expert_slice_and_conv1d_is_compressed(family, method):
    model = model_of(family)
    before = routers(model)
    mats_before = {n: W.clone() for n, W in matrices(model).items()}
    report = run_method(model, METHODS[method], family)
    quant_params = {s.name: s.quant_params for s in report.layers}
    mats = matrices(model)
    assert set(mats) == set(mats_before) and len(mats) > 0
    spec = METHODS[method]
    for name, W in mats.items():
        rows, cols = W.shape
        zeros = (W == 0)
        if spec["kind"] == "prune" and "sparsity_type" in spec:  # 2:4 in every group of 4 inputs of every row
            assert (zeros.reshape(rows, cols // 4, 4).sum(-1) >= 2).all(), name
            assert zeros.float().mean().item() == 0.5, name
        elif method == "wanda":  # exactly half of every row
            assert (zeros.sum(1) == cols // 2).all(), name
        elif method == "wanda-variant":  # per-matrix bisection of the cumulative-score threshold towards 50%
            assert abs(zeros.float().mean().item() - 0.5) <= 0.02, name
        elif spec["kind"] == "prune":  # the reference threshold rule: int(numel * 0.5) + 1 (plus ties)
            assert 0.5 <= zeros.float().mean().item() <= 0.5 + 2 / cols, name
        else:
            options = GPTQ_OPTIONS[family] if method == "gptq" else {"groupsize": 32}
            g = cols if options["groupsize"] == -1 else options["groupsize"]
            columns = [torch.arange(start, min(start + g, cols)) for start in range(0, cols, g)]
            if options.get("act_order") and not options.get("static_groups"):  # groups of act-order positions
                g_idx = quant_params[stats_name(name)]["g_idx"]
                assert sorted(g_idx.bincount().tolist()) == sorted(len(c) for c in columns), name
                columns = [torch.nonzero(g_idx == k).flatten() for k in range(len(columns))]
            for cols_k in columns:
                group = W[:, cols_k].sort(dim=1).values  # distinct values per row of the group:
                distinct = 1 + (group[:, 1:] != group[:, :-1]).sum(1)  # 1 + the changes along the sorted row
                assert int(distinct.max()) <= 16, (name, cols_k[:4], int(distinct.max()))
            assert not torch.equal(W, mats_before[name]), f"{name} was not quantized"
    check_report_figures(model, report, before)
    if spec["kind"] == "quant":
        g = (GPTQ_OPTIONS[family] if method == "gptq" else {"groupsize": 32})["groupsize"]
        assert report.summary()["bits_per_weight"] == pytest.approx(own_bits(model, 4, g), rel=1e-12)
    else:
        assert report.summary()["bits_per_weight"] is None


@pytest.mark.parametrize("family", DENSE_FAMILIES)
def test_dense_families_stay_fully_covered(family):
    model = model_of(family)
    report = prune(model, None, method="wanda", calibration=CALIB, progress=False)
    for name, W in matrices(model).items():
        assert ((W == 0).sum(1) == W.shape[1] // 2).all(), name
    assert report.summary()["measured_sparsity"] == own_sparsity(model) == 0.5
    assert report.summary()["coverage"] == {"compressed_fraction": 1.0, "n_block_weights": len(block_params(model)),
                                            "n_compressed": len(block_params(model)), "kept": {}}


def test_measure_only_counts_every_block_weight():
    model = model_of("mixtral")
    with torch.no_grad():
        for name, W in matrices(model).items():
            if expert_of(name) == 1:
                W[:, :8] = 0  # zeros in expert 1 (fused: not in any Linear the old report counted)
    report = prune(model, None, method="wanda", sparsity=0, progress=False)
    assert report.summary()["measured_sparsity"] == own_sparsity(model) > 0


# -------------------------------------------------------------------------- routed == plain per-expert Linears


class ExpertMLP(nn.Module):
    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(gate.shape[1], gate.shape[0], bias=False)
        self.up_proj = nn.Linear(up.shape[1], up.shape[0], bias=False)
        self.down_proj = nn.Linear(down.shape[1], down.shape[0], bias=False)
        with torch.no_grad():
            self.gate_proj.weight.copy_(gate)
            self.up_proj.weight.copy_(up)
            self.down_proj.weight.copy_(down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PlainExperts(nn.ModuleList):
    """The transformers 4.x layout: one MLP of nn.Linear per expert, fed the routed tokens by the eager loop."""

    def __init__(self, fused: nn.Module) -> None:
        half = fused.gate_up_proj.shape[1] // 2
        super().__init__([ExpertMLP(fused.gate_up_proj[e, :half], fused.gate_up_proj[e, half:], fused.down_proj[e])
                          for e in range(fused.gate_up_proj.shape[0])])

    def forward(self, hidden_states, top_k_index, top_k_weights):
        final = torch.zeros_like(hidden_states)
        for e, expert in enumerate(self):
            token_idx, pos = torch.where(top_k_index == e)
            if token_idx.numel() == 0:
                continue
            out = expert(hidden_states[token_idx])
            final.index_add_(0, token_idx, out * top_k_weights[token_idx, pos, None])
        return final


def plain_copy(family: str) -> nn.Module:
    model = fused_only(model_of(family))
    for block in moe_blocks(model):
        block.experts = PlainExperts(block.experts)
    return model


@pytest.mark.parametrize("method,policy", [("wanda", "routed"), ("sparsegpt", "routed"), ("wanda", "all")])
def test_fused_expert_masks_equal_plain_per_expert_linears(method, policy):
    fused, plain = fused_only(model_of("mixtral")), plain_copy("mixtral")
    tokens = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # same model: same logits before compression
        assert torch.allclose(fused(tokens).logits, plain(tokens).logits, atol=1e-5)
    plain_router = routers(plain)
    r_fused = prune(fused, None, method=method, calibration=tokens, moe_calibration=policy, progress=False)
    r_plain = prune(plain, None, method=method, calibration=tokens, moe_calibration=policy, progress=False)
    for i, (lf, lp) in enumerate(zip(fused.model.layers, plain.model.layers)):
        half = lf.mlp.experts.gate_up_proj.shape[1] // 2
        for e, expert in enumerate(lp.mlp.experts):
            for fused_w, plain_w in ((lf.mlp.experts.gate_up_proj[e, :half], expert.gate_proj.weight),
                                     (lf.mlp.experts.gate_up_proj[e, half:], expert.up_proj.weight),
                                     (lf.mlp.experts.down_proj[e], expert.down_proj.weight)):
                assert torch.equal(fused_w == 0, plain_w == 0), (i, e)
    check_report_figures(plain, r_plain, plain_router)
    assert r_fused.summary()["measured_sparsity"] == own_sparsity(fused)
    # tokens per expert: routed = each token counted once per chosen expert (top_k = 2); all = every token
    n_tokens = tokens.numel()
    for report in (r_fused, r_plain):
        gate_tokens = [s.tokens for s in report.layers if s.block == 0 and s.name.endswith("gate_proj")]
        assert len(gate_tokens) == 4
        assert sum(gate_tokens) == (2 * n_tokens if policy == "routed" else 4 * n_tokens)


def starved_mixtral() -> nn.Module:
    """Top-1 routing with router rows (u, -u, 0, 0): logits (a, -a, 0, 0), so experts 2 and 3 never win."""
    model = model_of("mixtral")
    for block in moe_blocks(model):
        for holder in (block, block.gate):
            if hasattr(holder, "top_k"):
                holder.top_k = 1
        with torch.no_grad():
            u = torch.randn(64)
            block.gate.weight.copy_(torch.stack([u, -u, torch.zeros(64), torch.zeros(64)]))
    return model


def test_routed_expert_without_tokens_is_compressed_by_magnitude_not_zeroed(caplog):
    model = starved_mixtral()
    original = {n: W.clone() for n, W in matrices(model).items()}
    with caplog.at_level(logging.WARNING):
        report = prune(model, None, method="wanda", calibration=CALIB, moe_calibration="routed", progress=False)
    assert "received no calibration token" in caplog.text
    for name, W in matrices(model).items():
        if expert_of(name) not in (2, 3):
            continue
        k = W.shape[1] // 2
        lowest = torch.zeros_like(W, dtype=torch.bool).scatter_(1, original[name].abs().argsort(1)[:, :k], True)
        assert torch.equal(W == 0, lowest), name  # magnitude per row, not all zero
    idle = [s for s in report.layers if s.expert in (2, 3)]
    assert idle and all(s.tokens == 0 for s in idle)
    assert report.summary()["expert_tokens"]["min"] == 0


def test_sparsegpt_routed_idle_expert_is_not_zeroed_by_dead_input_rule():
    model = starved_mixtral()
    prune(model, None, method="sparsegpt", calibration=CALIB, moe_calibration="routed", progress=False)
    for name, W in matrices(model).items():
        if expert_of(name) == 3:
            assert 0.5 <= (W == 0).float().mean().item() <= 0.5 + 2 / W.shape[1], name


# -------------------------------------------------------------------------- coverage refusal, damping, bad input


def test_uncovered_block_weight_is_refused_unless_allow_partial():
    model = model_of("llama")
    model.model.layers[1].mlp.register_parameter("scale_table", nn.Parameter(torch.randn(8, 16)))
    with pytest.raises(CompressionConfigError, match=r"model\.layers\.1\.mlp\.scale_table.*allow_partial=true"):
        prune(model, None, method="magnitude", progress=False)
    assert (model.model.layers[0].mlp.up_proj.weight != 0).all()  # refused before anything changed
    report = prune(model, None, method="magnitude", allow_partial=True, progress=False)
    summary = report.summary()
    assert summary["measured_sparsity"] == own_sparsity(model) < 0.5
    assert list(summary["coverage"]["kept"]) == ["model.layers.1.mlp.scale_table"]
    assert (model.model.layers[1].mlp.scale_table != 0).all()


def test_raised_hessian_damping_is_recorded_per_layer(caplog):
    model = model_of("llama")
    with caplog.at_level(logging.WARNING):
        report = prune(model, None, method="sparsegpt", calibration=CALIB[:1, :4], damp=1e-7, progress=False)
    raised = report.summary()["damp_raised"]
    assert raised and "damping raised" in caplog.text
    for name, damp in raised.items():
        assert any(damp == pytest.approx(1e-7 * 10 ** k) for k in range(1, 5)), (name, damp)
    assert {s.name for s in report.layers if s.damp != 1e-7} == set(raised)


@pytest.mark.parametrize("args,match", [
    ({"method": "wanda", "moe_calibration": "some"}, "moe_calibration='some'"),
    ({"method": "wanda", "allow_partial": "maybe"}, "allow_partial='maybe'"),
    ({"method": "magnitude", "moe_calibration": "routed"}, "uses no calibration data"),
])
def test_bad_coverage_arguments_are_refused(args, match):
    with pytest.raises(CompressionConfigError, match=match):
        parse_prune_args(args)


def test_bad_coverage_arguments_quant_and_config():
    with pytest.raises(CompressionConfigError, match="moe_calibration"):
        parse_quant_args({"method": "gptq", "moe_calibration": 1})
    with pytest.raises(CompressionConfigError, match="allow_partial"):
        PruneConfig("wanda", allow_partial="yes")
    cfg, rest = parse_prune_args({"method": "wanda", "moe_calibration": "Routed", "allow_partial": "true", "x": 1})
    assert (cfg.moe_calibration, cfg.allow_partial, rest) == ("routed", True, {"x": 1})


# -------------------------------------------------------------------------- literal lm_eval on a tiny mixtral

@pytest.mark.slow
def test_lm_eval_kick_pruned_mixtral_sparsity_equals_export_zero_fraction(tmp_path):
    import os

    from safetensors.torch import load_file
    from test_models_cli import MC_TASK  # the tiny local multiple-choice task of the other lm_eval e2e tests

    model_dir = make_tiny_model_dir(tmp_path / "mixtral", family="mixtral")
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. Paris is the capital of France. " * 50)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [{"question": "The capital of France is", "choices": [" Paris", " Rome"], "answer": 0}] * 2
    (tasks / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tasks / "kicktest_mc.yaml").write_text(MC_TASK.format(data=tasks / "data.jsonl"))
    export, out = tmp_path / "export", tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               KICK_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(BIN / "lm_eval"), "--model", "kick-pruned", "--model_args",
         f"pretrained={model_dir},method=wanda,sparsity=0.5,calib={calib},nsamples=4,seqlen=32,save_compressed={export}",
         "--tasks", "kicktest_mc", "--include_path", str(tasks), "--limit", "2", "--output_path", str(out),
         "--device", "cpu"],  # lm-eval before 0.4.13 defaults HF models to cuda
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    info = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())["config"]["kick_compression"]
    tensors = {}
    for f in export.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    block = [t for k, t in tensors.items() if k.startswith("model.layers.") and t.dim() >= 2]
    assert block and sum(t.numel() for t in block) == sum(p.numel() for p in block_params(make_tiny_model("mixtral")).values())
    zero_fraction = sum(int((t == 0).sum()) for t in block) / sum(t.numel() for t in block)
    assert info["measured_sparsity"] == zero_fraction
    assert 0.45 < zero_fraction < 0.5  # routers (dense) are part of the blocks
    kept = info["coverage"]["kept"]
    assert sorted(kept) == sorted(routers(make_tiny_model("mixtral"))) and len(kept) == 2
    assert info["config"]["moe_calibration"] == "all"


def test_cache_round_trip_restores_fused_experts_and_report(tmp_path):
    """The compressed-weights cache stores each fused experts tensor once (real safetensors files) and a fresh
    model loaded from it equals the compressed one, with the same block-weight figures."""
    from kick_models.cache import CompressionCache

    model = model_of("qwen2_moe")
    report = quantize(model, None, method="rtn", wbits=4, groupsize=32, progress=False)
    cache = CompressionCache(tmp_path / "cache")
    assert cache.store("k", model, report, {"test": True}) is not None
    fresh = model_of("qwen2_moe")
    loaded = cache.load_into("k", fresh)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name
    assert loaded.summary()["bits_per_weight"] == report.summary()["bits_per_weight"] == pytest.approx(
        own_bits(fresh, 4, 32), rel=1e-12)
    assert loaded.summary()["coverage"] == report.summary()["coverage"]
