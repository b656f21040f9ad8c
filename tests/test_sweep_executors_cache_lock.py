"""One compression per config under concurrency: processes that build the same compressed model at the same
time on one cache folder compress once (one writer holds the per-key lock; the others wait, then load)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, sys, time
from pathlib import Path
from kick_models.lm import KickPrunedLM

model, calib, cache, go = sys.argv[1:5]
while not Path(go).exists():  # start together
    time.sleep(0.01)
lm = KickPrunedLM(pretrained=model, device="cpu", method="sparsegpt", sparsity=0.5, calib=calib, nsamples=16,
                  seqlen=128, cache_dir=cache)
info = lm.compression_info()
print("RESULT " + json.dumps({"compressed": info["compressed_in_this_process"], "cache": info["cache"]["status"],
                              "sparsity": info["measured_sparsity"]}))
"""


def test_two_processes_at_once_one_compression(tiny_llama_dir, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. Paris is the capital of France. " * 200)
    cache, go = tmp_path / "cache", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tiny_llama_dir), str(calib), str(cache), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.0)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    assert sorted(r["compressed"] for r in results) == [False, True], results
    assert sorted(r["cache"] for r in results) == ["hit", "miss"], results
    assert len({r["sparsity"] for r in results}) == 1 and 0.45 < results[0]["sparsity"] < 0.55
    entries = [p for p in (cache / "entries").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1  # one entry, no leftover temporary folders of a second writer
    assert not [p for p in (cache / "entries").iterdir() if p.name.startswith(".tmp-")]
    locks = list(Path(cache, "locks").glob("*.lock"))
    assert len(locks) <= 1
