"""The literal ``lm_eval --model kick-pruned --model_args ...,parallelize=True,max_cpu_memory=...`` on this CPU-only
machine (issue 18): accelerate then puts the model's modules on "disk" (values on meta behind hooks, read from the
source checkpoint). A first plain load (the same model class, in this process) compresses and caches; the
parallelized ``lm_eval`` run hits the cache, which must be
written back where the offloaded weights live: its exported weights equal the cache entry's, the source
checkpoint's bytes are unchanged, and the results record how the model was placed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
LM_EVAL = str(Path(sys.executable).parent / "lm_eval")

pytestmark = pytest.mark.slow


def _lm_eval(model_args: str, out: Path, env: dict) -> dict:
    cmd = [LM_EVAL, "--model", "kick-pruned", "--model_args", model_args, "--tasks", "kick_wikitext_ppl",
           "--limit", "1", "--device", "cpu", "--output_path", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    files = sorted(out.rglob("results_*.json"))
    assert files, proc.stderr[-2000:]
    return json.loads(files[-1].read_text())["config"]["kick_compression"]


def test_parallelize_on_cpu_host_offloads_and_restores_cache(tmp_path, monkeypatch, data_dir):
    from kick_models.lm import KickPrunedLM

    src = make_tiny_model_dir(tmp_path / "llama", family="llama", layers=3)
    before = hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. Paris is the capital of France. " * 100)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               KICK_CACHE_DIR=str(tmp_path / "cache"), KICK_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    args = dict(pretrained=str(src), method="sparsegpt", sparsity=0.5, calib=str(calib), nsamples=4, seqlen=32)
    common = ",".join(f"{k}={v}" for k, v in args.items())

    for key in ("KICK_CACHE_DIR", "KICK_DATA_DIR", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, env[key])
    plain = KickPrunedLM(**args, save_compressed=str(tmp_path / "plain"), device="cpu").compression_info()
    assert plain["cache"]["status"] == "miss"
    offload = tmp_path / "offload"
    placed = _lm_eval(f"{common},parallelize=True,max_cpu_memory=20KB,offload_folder={offload},"
                      f"save_compressed={tmp_path / 'placed'}", tmp_path / "out2", env)
    assert placed["cache"]["status"] == "hit"
    assert placed["placement"]["device_map"].get("disk"), placed["placement"]  # really offloaded to disk
    assert placed["placement"]["offloaded_modules"] > 0
    # peak memory per phase (issue 27): the phases each run really went through, with sane figures
    assert set(plain["memory"]["phases"]) == {"load", "cache_read", "compression", "cache_store", "save_compressed"}, plain["memory"]
    assert set(placed["memory"]["phases"]) == {"load", "cache_read", "save_compressed", "evaluation"}
    for phase in [*plain["memory"]["phases"].values(), *placed["memory"]["phases"].values()]:
        assert 0 < phase["rss_anon_start_mib"] <= phase["peak_rss_anon_mib"] <= phase["peak_rss_mib"], phase
        assert phase["rss_anon_end_mib"] <= phase["peak_rss_anon_mib"] and phase["seconds"] >= 0, phase

    entry = load_file(str(Path(placed["cache"]["dir"]) / "entries" / placed["cache"]["key"] / "weights.safetensors"))
    # an offloaded model is saved in shards of at most its largest placed module, >= 1 MiB (issue 27)
    shards = sorted((tmp_path / "placed").glob("model*.safetensors"))
    saved = {k: v for shard in shards for k, v in load_file(str(shard)).items()}
    reference = load_file(str(tmp_path / "plain" / "model.safetensors"))
    blocks = [k for k in entry if not k.startswith("quant_params.")]
    assert len(blocks) == 3 * 7
    for key in blocks:
        assert torch.equal(saved[key], entry[key]), key
        zeros = (saved[key] == 0).float().mean().item()
        assert 0.5 <= zeros < 0.52, (key, zeros)
    assert saved.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(saved[key], value), key
    assert hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest() == before
    assert not offload.exists() or not any(offload.glob("kick-offload-*")), "kick's offload files were not removed"
