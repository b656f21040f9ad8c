"""kick-quant export: a compressed-tensors checkpoint that transformers loads back with the same logits."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("compressed_tensors")

from tiny import make_tiny_model_dir
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

from kick_models import quantize
from kick_models.compress.config import CalibrationConfig, SchemeConfig
from kick_models.export_ct import save_compressed_tensors

STATIC = ("FP8", "NVFP4")
FORMATS = {"NVFP4": "nvfp4-pack-quantized", "NVFP4A16": "nvfp4-pack-quantized", "MXFP4": "mxfp4-pack-quantized",
           "MXFP4A16": "mxfp4-pack-quantized", "FP8": "float-quantized", "FP8_DYNAMIC": "float-quantized",
           "FP8_BLOCK": "float-quantized", "W4A16": "pack-quantized", "W8A16": "pack-quantized",
           "W8A8": "int-quantized"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("ct") / "llama", hidden=128, intermediate=256, seed=4)


def export(source, scheme, out):
    """A bf16 model (the dtype real checkpoints have: compressed-tensors decompresses to bf16) quantized by kick
    and exported."""
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    static = scheme in STATIC
    calib = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(2))
    report = quantize(model, None, scheme=scheme, calibration=calib if static else None, progress=False)
    config = SchemeConfig(scheme=scheme, calibration=CalibrationConfig(source="tensor", nsamples=4, seqlen=32)
                          if static else None)
    return model, save_compressed_tensors(model, None, report, config, out)


@pytest.mark.parametrize("scheme", sorted(FORMATS))
def test_exported_checkpoint_loads_in_transformers_with_the_same_logits(scheme, source, tmp_path, one_torch_thread):
    model, out = export(source, scheme, tmp_path / scheme)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == FORMATS[scheme]
    assert list(qc["config_groups"]) == [scheme] and qc["ignore"] == ["lm_head"]
    back = AutoModelForCausalLM.from_pretrained(out)  # compressed-tensors' own quantized forward
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = model(tokens).logits, back(tokens).logits
    if scheme in ("W8A8", "W8A16"):
        # int8: compressed-tensors' decompressor multiplies q * scale in bf16, its fake_quantize (kick's weights,
        # llm-compressor's calibration forward) rounds the float32 product once: a few weights differ by <= 1 ulp.
        plain = AutoModelForCausalLM.from_pretrained(out, quantization_config=CompressedTensorsConfig(dequantize=True))
        for name, p in model.named_parameters():
            q = dict(plain.named_parameters())[name]
            ulp = torch.finfo(torch.bfloat16).eps * p.float().abs()
            assert ((p.float() - q.float()).abs() <= ulp).all(), name
        assert torch.allclose(got.float(), want.float(), atol=0.05)
    else:
        assert torch.equal(got, want)


def test_save_compressed_model_arg_writes_a_compressed_tensors_checkpoint(source, tmp_path, one_torch_thread):
    from kick_models.lm import KickQuantSchemeLM

    out = tmp_path / "export"
    lm = KickQuantSchemeLM(pretrained=str(source), scheme="NVFP4A16", save_compressed=str(out), cache="false",
                           device="cpu", dtype="bfloat16")
    assert lm.compression_info()["saved_to"] == str(out)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "nvfp4-pack-quantized" and list(qc["config_groups"]) == ["NVFP4A16"]
    assert json.loads((out / "kick_compression.json").read_text())["format"]["scheme"] == "NVFP4A16"


def test_fused_moe_experts_export_is_refused_clearly(tmp_path, one_torch_thread):
    from tiny import make_tiny_model

    from kick_models.export import ExportError

    model = make_tiny_model("qwen3_moe")
    report = quantize(model, None, scheme="NVFP4A16", progress=False)
    with pytest.raises(ExportError, match="fused MoE expert tensors"):
        save_compressed_tensors(model, None, report, SchemeConfig(scheme="NVFP4A16"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
