"""GGUF -> plain safetensors checkpoint (``kick convert-gguf``), on the real SmolLM2 GGUF."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kick_models.gguf import GGUFError, gguf_to_checkpoint, is_checkpoint, smollm2_gguf


def _smollm2_or_skip():
    try:
        return smollm2_gguf()
    except GGUFError as exc:
        pytest.skip(str(exc))


def test_bad_inputs_fail_before_loading(tmp_path):
    with pytest.raises(GGUFError, match="does not exist"):
        gguf_to_checkpoint(tmp_path / "nope.gguf", tmp_path / "out")
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(GGUFError, match="not a checkpoint folder"):
        gguf_to_checkpoint(fake, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_needs_exactly_one_source(tmp_path):
    cmd = [sys.executable, "-m", "kick_analysis.cli", "convert-gguf"]
    both = subprocess.run([*cmd, "x.gguf", str(tmp_path / "o"), "--smollm2"], capture_output=True, text=True)
    assert both.returncode == 2 and "either a .gguf file or --smollm2" in both.stderr
    missing = subprocess.run([*cmd, str(tmp_path / "x.gguf"), str(tmp_path / "o")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_smollm2_converts_to_an_identical_plain_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_or_skip()
    out = subprocess.run([sys.executable, "-m", "kick_analysis.cli", "convert-gguf", "--smollm2", str(tmp_path / "smol")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "smol"
    assert out.stdout.strip() == str(folder) and is_checkpoint(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind

    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert ids.shape[1] > 3
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ref(ids).logits)
    # an existing checkpoint is reused, not rewritten
    mtime = (folder / "config.json").stat().st_mtime_ns
    assert gguf_to_checkpoint(gguf, folder) == folder.resolve()
    assert (folder / "config.json").stat().st_mtime_ns == mtime
