"""Compressed-weights cache: hits skip compression, corruption is rebuilt, failures never crash."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import kick_models.api
from kick_models.cache import (
    ENTRY_FILE,
    WEIGHTS_FILE,
    CacheWarning,
    CompressionCache,
    FileHashMemo,
    cache_key,
    local_identity,
    resolve_cache_dir,
)
from kick_models.lm import KickPrunedLM, KickQuantizedLM


@pytest.fixture()
def compress_calls(monkeypatch):
    """Counts entries into the compression core (the real function still runs)."""
    calls = []
    real = kick_models.api.compress

    def counting(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("config"))
        return real(*args, **kwargs)

    monkeypatch.setattr(kick_models.api, "compress", counting)
    return calls


def _wanda(model_dir, calib, cache_dir, **extra):
    args = dict(pretrained=str(model_dir), device="cpu", method="wanda", sparsity=0.5, calib=calib, nsamples=4,
                seqlen=64)
    if cache_dir is not None:
        args["cache_dir"] = str(cache_dir)
    args.update(extra)
    return KickPrunedLM(**args)


def _linear_weights(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items() if ".layers." in k and k.endswith("proj.weight")}


def test_second_run_hits_and_does_not_compress(tiny_llama_dir, calib_txt, tmp_path, compress_calls):
    cache_dir = tmp_path / "cache"
    first = _wanda(tiny_llama_dir, calib_txt, cache_dir)
    assert len(compress_calls) == 1 and first.compression_info()["cache"]["status"] == "miss"
    entry = cache_dir / "entries" / first.compression_info()["cache"]["key"]
    assert (entry / WEIGHTS_FILE).is_file() and (entry / ENTRY_FILE).is_file()
    # only the compressed Linear weights are stored, not the whole model
    from safetensors import safe_open

    with safe_open(str(entry / WEIGHTS_FILE), "pt") as f:
        keys = set(f.keys())
    assert len(keys) == 14 and not any("embed" in k or "lm_head" in k or "norm" in k for k in keys)

    second = _wanda(tiny_llama_dir, calib_txt, cache_dir)
    info = second.compression_info()
    assert len(compress_calls) == 1, "a cache hit must not enter the compression core"
    assert info["cache"]["status"] == "hit" and info["compressed_in_this_process"] is False
    assert info["measured_sparsity"] == first.compression_info()["measured_sparsity"]
    a, b = _linear_weights(first), _linear_weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_key_changes_with_every_input(tiny_llama_dir, calib_txt, tmp_path, compress_calls):
    cache_dir = tmp_path / "cache"
    keys = {
        _wanda(tiny_llama_dir, calib_txt, cache_dir).compression_info()["cache"]["key"],
        _wanda(tiny_llama_dir, calib_txt, cache_dir, sparsity=0.6).compression_info()["cache"]["key"],
        _wanda(tiny_llama_dir, calib_txt, cache_dir, seed=1).compression_info()["cache"]["key"],
        _wanda(tiny_llama_dir, calib_txt, cache_dir, nsamples=3).compression_info()["cache"]["key"],
        _wanda(tiny_llama_dir, calib_txt, cache_dir, dtype="bfloat16").compression_info()["cache"]["key"],
    }
    assert len(keys) == 5 and len(compress_calls) == 5


def test_pruning_and_quantization_share_the_cache(tiny_llama_dir, calib_txt, tmp_path, compress_calls):
    cache_dir = tmp_path / "cache"
    _wanda(tiny_llama_dir, calib_txt, cache_dir)
    q = KickQuantizedLM(pretrained=str(tiny_llama_dir), device="cpu", wbits=4, groupsize=32, calib=calib_txt,
                        nsamples=4, seqlen=64, cache_dir=str(cache_dir))
    assert len(list((cache_dir / "entries").iterdir())) == 2
    q2 = KickQuantizedLM(pretrained=str(tiny_llama_dir), device="cpu", wbits=4, groupsize=32, calib=calib_txt,
                         nsamples=4, seqlen=64, cache_dir=str(cache_dir))
    assert len(compress_calls) == 2
    i1, i2 = q.compression_info(), q2.compression_info()
    assert i2["cache"]["status"] == "hit" and i2["bits_per_weight"] == i1["bits_per_weight"]
    # quantization parameters come back from the cache too (needed for export)
    qp1, qp2 = q.compression_report.quant_params(), q2.compression_report.quant_params()
    assert qp1.keys() == qp2.keys() and len(qp1) > 0 and all(torch.equal(qp1[k], qp2[k]) for k in qp1)


def test_changed_model_file_changes_the_key(tiny_llama_dir, calib_txt, tmp_path, compress_calls):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    cache_dir = tmp_path / "cache"
    k1 = _wanda(model_dir, calib_txt, cache_dir).compression_info()["cache"]["key"]
    from tiny import make_tiny_model_dir

    make_tiny_model_dir(model_dir, seed=1)  # same size, same names, different weights
    k2 = _wanda(model_dir, calib_txt, cache_dir).compression_info()["cache"]["key"]
    assert k1 != k2 and len(compress_calls) == 2


def test_corrupted_entry_is_detected_and_rebuilt(tiny_llama_dir, calib_txt, tmp_path, compress_calls):
    cache_dir = tmp_path / "cache"
    first = _wanda(tiny_llama_dir, calib_txt, cache_dir)
    key = first.compression_info()["cache"]["key"]
    weights = cache_dir / "entries" / key / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10:] = b"\xff" * 10  # flip tensor bytes (the file still parses)
    weights.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="corrupted"):
        second = _wanda(tiny_llama_dir, calib_txt, cache_dir)
    assert len(compress_calls) == 2 and second.compression_info()["cache"]["status"] == "miss"
    a, b = _linear_weights(first), _linear_weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    third = _wanda(tiny_llama_dir, calib_txt, cache_dir)
    assert third.compression_info()["cache"]["status"] == "hit" and len(compress_calls) == 2


def test_truncated_entry_is_rebuilt(tiny_llama_dir, calib_txt, tmp_path, compress_calls):
    cache_dir = tmp_path / "cache"
    key = _wanda(tiny_llama_dir, calib_txt, cache_dir).compression_info()["cache"]["key"]
    (cache_dir / "entries" / key / ENTRY_FILE).write_text('{"format": 1, "key"')
    with pytest.warns(CacheWarning, match="corrupted"):
        again = _wanda(tiny_llama_dir, calib_txt, cache_dir)
    assert again.compression_info()["cache"]["status"] == "miss" and len(compress_calls) == 2


def test_unwritable_cache_warns_and_continues(tiny_llama_dir, calib_txt, tmp_path, compress_calls):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.warns(CacheWarning, match="not writable"):
        lm = _wanda(tiny_llama_dir, calib_txt, blocker / "cache")
    info = lm.compression_info()
    assert info["cache"]["status"] == "unwritable" and info["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert len(compress_calls) == 1


def test_store_failure_after_compressing_does_not_crash(tiny_llama_dir, calib_txt, tmp_path, compress_calls):
    cache_dir = tmp_path / "cache"
    (cache_dir / "entries").mkdir(parents=True)
    os.chmod(cache_dir / "entries", 0o500)
    if os.access(cache_dir / "entries", os.W_OK) and os.geteuid() == 0:
        # root ignores permissions: make "entries" a file instead so the write really fails
        os.chmod(cache_dir / "entries", 0o700)
        shutil.rmtree(cache_dir / "entries")
        (cache_dir / "entries").write_text("not a folder")
    try:
        with pytest.warns(CacheWarning, match="could not write"):
            lm = _wanda(tiny_llama_dir, calib_txt, cache_dir)
        assert lm.compression_info()["cache"]["status"] == "miss (not written)"
        assert lm.compression_info()["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    finally:
        if (cache_dir / "entries").is_dir():
            os.chmod(cache_dir / "entries", 0o700)


def test_cache_false_writes_nothing(tiny_llama_dir, calib_txt, tmp_path, monkeypatch, compress_calls):
    monkeypatch.setenv("KICK_CACHE_DIR", str(tmp_path / "envcache"))
    lm = _wanda(tiny_llama_dir, calib_txt, None, cache=False)
    assert lm.compression_info()["cache"]["status"] == "disabled"
    assert not (tmp_path / "envcache").exists()
    lm2 = _wanda(tiny_llama_dir, calib_txt, None, cache=False)
    assert len(compress_calls) == 2 and lm2.compression_info()["cache"]["status"] == "disabled"


def test_cache_location_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("KICK_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_cache_dir(None) == tmp_path / "env"
    monkeypatch.delenv("KICK_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir(None) == tmp_path / "home" / ".cache" / "kick"


def test_env_cache_dir_is_used(tiny_llama_dir, calib_txt, tmp_path, monkeypatch):
    monkeypatch.setenv("KICK_CACHE_DIR", str(tmp_path / "envcache"))
    lm = _wanda(tiny_llama_dir, calib_txt, None)
    assert lm.compression_info()["cache"]["dir"] == str(tmp_path / "envcache")
    assert len(list((tmp_path / "envcache" / "entries").iterdir())) == 1


def test_file_hash_memo_rehashes_only_changed_files(tmp_path):
    memo_path = tmp_path / "memo.json"
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 1000)
    memo = FileHashMemo(memo_path)
    h1 = memo.sha256(f)
    memo.save()
    assert json.loads(memo_path.read_text())[os.path.realpath(f)]["sha256"] == h1
    f.write_bytes(b"b" * 1000)  # same size
    os.utime(f, ns=(1, 1))
    assert FileHashMemo(memo_path).sha256(f) != h1


def test_local_identity_covers_weights_and_config(tiny_llama_dir):
    ident = local_identity(tiny_llama_dir, None, "", FileHashMemo(None))
    assert set(ident["files"]) == {"model.safetensors", "config.json"}
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})


def test_half_written_entries_are_invisible(tmp_path):
    cache = CompressionCache(tmp_path)
    (tmp_path / "entries" / ".tmp-abc-123").mkdir(parents=True)
    assert cache.read("abc") is None


def test_streaming_safetensors_writer_round_trips_every_dtype_it_accepts(tmp_path):
    """The cache's one-tensor-at-a-time writer (issue 27) stores what the compressors leave behind, FP8 scales of
    the compressed-tensors schemes included, exactly as safetensors reads them back."""
    from safetensors.torch import load_file

    from kick_models.cache import _SAFETENSORS_DTYPES, write_safetensors_streaming

    assert {torch.float8_e4m3fn, torch.bfloat16, torch.int8, torch.uint8} <= set(_SAFETENSORS_DTYPES)
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(_SAFETENSORS_DTYPES):
        raw = torch.randint(0, 256, (3, 5 + i), dtype=torch.uint8, generator=gen)
        if dtype == torch.bool:
            tensors[f"t{i}"] = raw > 127
        else:
            size = torch.empty((), dtype=dtype).element_size()
            tensors[f"t{i}"] = torch.randint(0, 256, (3, 5 + i, size), dtype=torch.uint8, generator=gen).view(dtype)[..., 0]
    path = tmp_path / "streamed.safetensors"
    write_safetensors_streaming(path, {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}, tensors.__getitem__)
    back = load_file(str(path))
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        assert torch.equal(back[name].contiguous().view(torch.uint8), value.contiguous().view(torch.uint8)), name
