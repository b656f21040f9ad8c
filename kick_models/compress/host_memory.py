"""Host memory of this process: what a phase of a run really needed, and giving freed memory back to the system.

* :func:`status` reads ``/proc/self/status``: ``RssAnon`` (anonymous resident memory: tensors, Python objects --
  what a model larger than RAM must keep bounded), ``VmRSS`` and ``VmHWM`` (the kernel's high-water mark of the
  whole resident set, memory-mapped checkpoint pages included).
* :class:`PhaseMemory` records, per named phase (load, compression, cache store / restore, evaluation ...), the
  peak ``RssAnon`` (sampled by a background thread every :data:`SAMPLE_SECONDS`, plus at the phase's start and
  end), the exact ``VmHWM`` peak (reset at the phase's start through ``/proc/self/clear_refs`` where the kernel
  allows it) and, on CUDA, ``torch.cuda.max_memory_allocated``. Linux only for the host figures (elsewhere they
  are ``None``).
* :func:`release_freed` hands memory that was freed back to the system (glibc ``malloc_trim``). Materializing
  one offloaded decoder block after another allocates and frees tensors of a few to a few tens of MiB (below
  glibc's adaptive mmap threshold, which grows to 32 MiB once such a chunk is freed), and glibc keeps those
  freed chunks in its heaps: without a trim the anonymous memory of an offloaded compression grows over the
  first blocks by about a block's working set each. The sequential driver calls it after every block.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
import time
import weakref
from collections.abc import Iterator

import torch

#: Seconds between two RssAnon samples while a phase runs.
SAMPLE_SECONDS = 0.02
_MIB = 2**20
_STATUS = "/proc/self/status"


def status() -> dict[str, int]:
    """``RssAnon``, ``VmRSS``, ``VmHWM`` of this process in bytes (empty where ``/proc`` is missing)."""
    out: dict[str, int] = {}
    try:
        with open(_STATUS) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def rss_anon() -> int | None:
    """Anonymous resident memory of this process in bytes (None where ``/proc`` is missing)."""
    return status().get("RssAnon")


def reset_hwm() -> bool:
    """Reset the kernel's VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_libc: ctypes.CDLL | None | bool = False


def release_freed() -> bool:
    """Give freed heap memory back to the system (glibc ``malloc_trim(0)``); False where that is not glibc."""
    global _libc
    if _libc is False:
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else None
        except OSError:
            _libc = None
    if _libc is None:
        return False
    _libc.malloc_trim(0)
    return True


class _Sampler(threading.Thread):
    """Keeps the highest RssAnon seen until stopped, or until its owner is garbage collected (a run that failed
    with a phase open leaves no thread behind)."""

    def __init__(self, owner: "PhaseMemory", start: int | None) -> None:
        super().__init__(name="kick-host-memory", daemon=True)
        self.peak = start or 0  # the phase's own start reading: its peak is never below its start
        self._done = threading.Event()
        self._owner = weakref.ref(owner)

    def run(self) -> None:
        while not self._done.wait(SAMPLE_SECONDS) and self._owner() is not None:
            value = rss_anon()
            if value is not None and value > self.peak:
                self.peak = value

    def stop(self) -> int:
        self._done.set()
        self.join()
        value = rss_anon()
        if value is not None and value > self.peak:
            self.peak = value
        return self.peak


class PhaseMemory:
    """Peak memory per phase of a run, for the results (see the module docstring). Phases may not overlap."""

    def __init__(self) -> None:
        self.phases: dict[str, dict] = {}
        self._open: tuple[str, _Sampler, bool, float, int | None] | None = None

    def start(self, name: str) -> None:
        """Begin phase ``name`` (a phase still open is ended first)."""
        if self._open is not None:
            self.stop()
        hwm_reset = reset_hwm()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            for index in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(index)
        start_anon = rss_anon()
        sampler = _Sampler(self, start_anon)
        sampler.start()
        self._open = (name, sampler, hwm_reset, time.perf_counter(), start_anon)

    def stop(self) -> dict | None:
        """End the open phase and return its record (None when none is open)."""
        if self._open is None:
            return None
        name, sampler, hwm_reset, t0, start_anon = self._open
        self._open = None
        peak_anon = sampler.stop()
        now = status()
        if now.get("RssAnon") is not None:  # the end reading is part of the phase: peak >= end, always
            peak_anon = max(peak_anon, now["RssAnon"])
        record: dict = {
            "seconds": round(time.perf_counter() - t0, 3),
            "rss_anon_start_mib": _mib(start_anon),
            "rss_anon_end_mib": _mib(now.get("RssAnon")),
            "peak_rss_anon_mib": _mib(peak_anon) if now else None,
            # the kernel's exact high-water mark of the whole RSS (mapped checkpoint pages included); since the
            # process started where the kernel refused the reset
            "peak_rss_mib": _mib(now.get("VmHWM")),
            "peak_rss_since": "phase start" if hwm_reset else "process start",
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record["peak_cuda_allocated_mib"] = _mib(max(torch.cuda.max_memory_allocated(i)
                                                         for i in range(torch.cuda.device_count())))
        self.phases[name] = record
        return record

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """``with memory.phase("compression"): ...``: record the block as phase ``name``."""
        self.start(name)
        try:
            yield
        finally:
            self.stop()

    def record(self) -> dict:
        """``{phase: {...}}`` plus the sampling interval, JSON-safe."""
        return {"unit": "MiB", "sampled_every_seconds": SAMPLE_SECONDS, "phases": dict(self.phases)}


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / _MIB, 1)
