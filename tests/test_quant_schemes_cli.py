"""kick-quant end to end: the literal `lm_eval --model kick-quant` run, and a cache hit that restores the
run-time activation quantization."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("compressed_tensors")

from test_models_cli import BIN, _results, _run, env, task_args  # noqa: F401  (fixtures)
from tiny import load


def nvfp4_bits_counted_here(model_dir) -> float:
    """NVFP4 storage bits per block weight from the model's own shapes: 4-bit values, one FP8 E4M3 scale per 16
    weights, one fp32 global scale per matrix (nothing else >= 2-D lives in a llama block)."""
    model, _ = load(model_dir)
    bits = total = 0
    for layer in model.model.layers:
        for name, p in layer.named_parameters():
            if p.dim() >= 2:
                n = p.numel()
                total += n
                bits += 4 * n + 8 * n // 16 + 32
    return bits / total


@pytest.mark.slow
def test_lm_eval_kick_quant_nvfp4_reports_the_bits_counted_here(tiny_llama_dir, calib_txt, task_args, env, tmp_path):
    out = tmp_path / "out"
    _run([str(BIN / "lm_eval"), "--model", "kick-quant", "--model_args",
          f"pretrained={tiny_llama_dir},scheme=NVFP4,calib={calib_txt},nsamples=4,seqlen=64",
          *task_args, "--limit", "4", "--output_path", str(out)], env)
    info = _results(out)["config"]["kick_compression"]
    assert info["model_class"] == "kick-quant"
    assert info["config"]["scheme"] == "NVFP4" and info["config"]["ignore"] == ["lm_head"]
    assert info["config"]["activation_format"].startswith("float4 per tensor_group groups of 16")
    assert info["bits_per_weight"] == pytest.approx(nvfp4_bits_counted_here(tiny_llama_dir), rel=1e-12)
    assert info["cache"]["status"] == "miss"
    from kick_analysis.results_io import compression_info, config_label, load_single_run

    row = compression_info(load_single_run(out))  # what `kick report` shows
    assert row["kind"] == "quant" and row["method"] == "NVFP4" and config_label(load_single_run(out)) == "NVFP4"
    assert row["bits_per_weight"] == info["bits_per_weight"] and "tensor_group" in row["activation_format"]


def test_sweep_plans_one_kick_quant_config_per_scheme(tiny_llama_dir, env):
    out = _run([str(BIN / "kick"), "sweep", "--model", str(tiny_llama_dir), "--output", "/nonexistent/sweep",
                "--schemes", "FP8_DYNAMIC,NVFP4,W4A16:group_size=32", "--calib", "c4", "--nsamples", "8",
                "--tasks", "kick_factoid_qa", "--dry-run"], env)
    lines = [line for line in out.splitlines() if "--model kick-quant" in line]
    assert len(lines) == 3 and "--model hf" in out
    assert "scheme=FP8_DYNAMIC,cache_dir" in lines[0]  # dynamic activations: no calibration args
    assert "scheme=NVFP4,calib=c4,nsamples=8" in lines[1]  # static activation global scale: calibrated
    assert "scheme=W4A16,group_size=32," in lines[2]


@pytest.mark.parametrize("scheme", ["FP8", "NVFP4"])  # NVFP4: FP8 (E4M3) group scales stored in the cache
def test_cache_hit_gives_the_same_logits_activation_quantization_included(tiny_llama_dir, calib_txt, tmp_path,
                                                                          one_torch_thread, scheme):
    from kick_models.lm import KickQuantSchemeLM

    args = dict(pretrained=str(tiny_llama_dir), scheme=scheme, calib=str(calib_txt), nsamples=4, seqlen=64,
                cache_dir=str(tmp_path / "cache"), device="cpu", batch_size=1)
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    first = KickQuantSchemeLM(**args)
    second = KickQuantSchemeLM(**args)
    assert first.compression_info()["cache"]["status"] == "miss"
    assert second.compression_info()["cache"]["status"] == "hit"
    with torch.no_grad():
        a, b = first.model(tokens).logits, second.model(tokens).logits
    assert torch.equal(a, b)
    plain = second.model.model.layers[0].self_attn.q_proj
    plain._forward_pre_hooks.clear()  # without the activation hook the numbers change: the hook was restored
    with torch.no_grad():
        assert not torch.equal(second.model(tokens).logits, b)
