"""kick model classes: argument validation happens before any model loads; in-process behaviour."""

from __future__ import annotations

import json

import pytest
import torch

from kick_models.compress.config import CompressionConfigError
from kick_models.lm import KickBitsAndBytesLM, KickPrunedLM, KickQuantizedLM, KickRTNLM

MISSING = "/nonexistent/kick-model-that-does-not-exist"


BAD_PRUNE = [
    (dict(method="wandaa", sparsity=0.5), "method"),
    (dict(sparsity=0.5), "method"),
    (dict(method="wanda", sparsity=1.5), "sparsity"),
    (dict(method="wanda", sparsity="half"), "sparsity"),
    (dict(method="wanda", sparsity=0.2, sparsity_type="2:4"), "sparsity"),
    (dict(method="wanda", sparsity_type="4:2"), "sparsity_type"),
    (dict(method="magnitude", sparsity=0.5, nsamples=4), "nsamples"),
    (dict(method="wanda", nsamples=0), "nsamples"),
    (dict(method="wanda", calib="/nonexistent/calib.txt"), "calib"),
    (dict(method="wanda", wbits=4), "wbits"),
    (dict(method="wanda", use_variant="maybe"), "use_variant"),
    (dict(method="wanda", sparsty=0.5), "sparsity"),  # typo: would silently reach from_pretrained
    (dict(method="wanda", compress_batch_size=0), "compress_batch_size"),
    (dict(method="wanda", compress_device="warp-drive"), "compress_device"),
    (dict(method="wanda", cache="sometimes"), "cache"),
    (dict(method="wanda", cache=False, cache_dir="/tmp/x"), "cache_dir"),
]


@pytest.mark.parametrize("args,word", BAD_PRUNE)
def test_bad_prune_args_fail_before_the_model_loads(args, word):
    # pretrained does not exist: reaching the model load would raise OSError, not this error
    with pytest.raises(CompressionConfigError, match=word):
        KickPrunedLM(pretrained=MISSING, device="cpu", **args)


BAD_QUANT = [
    (dict(wbits=5), "wbits"),
    (dict(wbits=4, groupsize=0), "groupsize"),
    (dict(method="gptq", sparsity=0.5), "sparsity"),
    (dict(method="awq"), "method"),
    (dict(act_order="perhaps"), "act_order"),
    (dict(damp=2.0), "damp"),
    (dict(groupsize=-1, static_groups=True), "static_groups"),
    (dict(wbit=4), "wbits"),  # typo
]


@pytest.mark.parametrize("args,word", BAD_QUANT)
def test_bad_quant_args_fail_before_the_model_loads(args, word):
    with pytest.raises(CompressionConfigError, match=word):
        KickQuantizedLM(pretrained=MISSING, device="cpu", **args)


def test_kick_rtn_refuses_gptq_and_calibration():
    with pytest.raises(CompressionConfigError, match="kick-gptq"):
        KickRTNLM(pretrained=MISSING, device="cpu", method="gptq")
    with pytest.raises(CompressionConfigError, match="calibration"):
        KickRTNLM(pretrained=MISSING, device="cpu", nsamples=8)


def test_save_compressed_into_a_foreign_folder_fails_early(tmp_path):
    foreign = tmp_path / "not-an-export"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CompressionConfigError, match="save_compressed"):
        KickPrunedLM(pretrained=MISSING, device="cpu", method="magnitude", save_compressed=str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "args,word",
    [(dict(method="int4"), "method"), (dict(method="int8", double_quant=True), "double_quant"),
     (dict(method="nf4", compute_dtype="float64"), "compute_dtype"), (dict(method="nf4", double_quant="x"), "double_quant")],
)
def test_bad_bnb_args_fail_before_the_model_loads(args, word):
    with pytest.raises(CompressionConfigError, match=word):
        KickBitsAndBytesLM(pretrained=MISSING, device="cpu", **args)


def test_missing_local_model_is_the_last_check_before_loading():
    """Valid compression args: only then the missing path is reported (the args above really were checked
    first), as an OSError like the loader's, with what to pass instead."""
    with pytest.raises(OSError, match="local path that does not exist"):
        KickPrunedLM(pretrained=MISSING, device="cpu", method="magnitude", sparsity=0.5, cache=False)
    with pytest.raises(CompressionConfigError, match="does not exist"):
        KickBitsAndBytesLM(pretrained="./no-such-model-folder", device="cpu", method="nf4")


def test_wanda_in_process_records_measured_sparsity(tiny_llama_dir, calib_txt, tmp_path):
    lm = KickPrunedLM(pretrained=str(tiny_llama_dir), device="cpu", method="wanda", sparsity=0.5, calib=calib_txt,
                      nsamples=4, seqlen=64, cache_dir=str(tmp_path / "cache"))
    info = lm.get_model_info()["kick_compression"]
    assert info["model_class"] == "kick-pruned"
    assert info["config"]["method"] == "wanda" and info["config"]["calibration"]["nsamples"] == 4
    assert info["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert len(info["block_sparsity_per_block"]) == 2
    assert info["cache"]["status"] == "miss" and len(info["cache"]["key"]) == 64
    assert info["compressed_in_this_process"] is True
    # the weights themselves are half zeros in every decoder Linear, lm_head untouched
    q = lm.model.model.layers[0].self_attn.q_proj.weight
    assert (q == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert (lm.model.lm_head.weight == 0).sum().item() == 0
    json.dumps(lm.get_model_info(), default=str)


def test_sparsity_zero_is_dense_but_measured(tiny_llama_dir, tmp_path):
    from tiny import load

    dense, _ = load(tiny_llama_dir)
    lm = KickPrunedLM(pretrained=str(tiny_llama_dir), device="cpu", method="magnitude", sparsity=0,
                      cache_dir=str(tmp_path / "cache"))
    info = lm.compression_info()
    assert info["measured_sparsity"] == 0.0 and info["n_layers"] == 14
    assert info["cache"]["status"].startswith("not used")
    for (n, a), (_, b) in zip(dense.state_dict().items(), lm.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert not (tmp_path / "cache").exists()


def test_in_memory_model_object_is_compressed(tiny_llama_dir, tmp_path):
    from tiny import load

    model, tok = load(tiny_llama_dir)
    lm = KickQuantizedLM(pretrained=model, tokenizer=tok, method="rtn", wbits=4, groupsize=32,
                         cache_dir=str(tmp_path / "cache"))
    info = lm.compression_info()
    assert info["bits_per_weight"] > 4 and info["config"]["method"] == "rtn"
    assert info["cache"]["status"] == "miss"
    # every decoder weight row now takes at most 2**4 distinct values per group of 32 columns
    w = lm.model.model.layers[1].mlp.down_proj.weight
    assert all(torch.unique(g).numel() <= 16 for row in w[:4] for g in row.split(32))
    # the same object content hits the cache the second time
    model2, _ = load(tiny_llama_dir)
    lm2 = KickQuantizedLM(pretrained=model2, tokenizer=tok, method="rtn", wbits=4, groupsize=32,
                          cache_dir=str(tmp_path / "cache"))
    assert lm2.compression_info()["cache"]["status"] == "hit"
    assert torch.equal(lm2.model.model.layers[1].mlp.down_proj.weight, w)


def test_kick_rtn_defaults_to_rtn(tiny_llama_dir, tmp_path):
    lm = KickRTNLM(pretrained=str(tiny_llama_dir), device="cpu", wbits=8, cache=False)
    info = lm.compression_info()
    assert info["model_class"] == "kick-rtn" and info["config"]["method"] == "rtn" and info["config"]["wbits"] == 8
    assert info["cache"]["status"] == "disabled"


def test_bnb_int8_and_nf4_on_cpu(tiny_llama_dir):
    pytest.importorskip("bitsandbytes")
    lm = KickBitsAndBytesLM(pretrained=str(tiny_llama_dir), device="cpu", method="nf4")
    info = lm.get_model_info()["kick_compression"]
    assert info["method"] == "nf4" and info["n_layers"] == 14
    assert 4.0 < info["bits_per_weight"] < 5.0
    assert type(lm.model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ll = lm.loglikelihood(_requests())
    assert all(torch.isfinite(torch.tensor(x[0])) for x in ll)
    lm8 = KickBitsAndBytesLM(pretrained=str(tiny_llama_dir), device="cpu", method="int8")
    info8 = lm8.compression_info()
    assert info8["method"] == "int8" and 8.0 < info8["bits_per_weight"] < 9.0


def _requests():
    from kick_models.lm_eval_compat import make_instance

    pairs = [("The capital of France is", " Paris"), ("The quick brown fox", " jumps"), ("Answer:", " William Shakespeare")]
    return [make_instance("loglikelihood", {}, p, task_name=None, doc_id=i) for i, p in enumerate(pairs)]
