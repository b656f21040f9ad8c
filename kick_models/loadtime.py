"""Compress a freshly loaded model, or load its compressed weights from the cache: the one load-time driver.

Every lm-eval model class of :mod:`kick_models.lm` parses its arguments into a config and a
:class:`LoadTimeOptions`, loads the model through lm-eval's ``HFLM``, then calls
:func:`compress_or_load` once. This module owns what happens between the load and the first request:

* the coverage check (uncovered block weights refused before any calibration work);
* the compressed-weights cache (:mod:`kick_models.cache`): key, per-key file lock, hit / miss / store;
* several processes (``accelerate launch`` / ``torchrun``): rank 0 compresses under the lock and
  broadcasts the key, the others wait on the lock and load the entry (:mod:`kick_models.distributed`);
* the optional ``save_compressed`` export (:mod:`kick_models.export`) and the summary log line.

It returns the :class:`~kick_models.compress.report.CompressionReport` and the record that
lm-eval writes under ``kick_compression`` in the results JSON.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("lm_eval.kick")  # under "lm_eval" so lm-eval's log handler shows it


@dataclass
class LoadTimeOptions:
    """Where and how to compress (the compute args every compressing class takes)."""

    compress_device: torch.device | None = None
    batch_size: int | None = None
    cache_enabled: bool = True
    cache_dir: str | None = None
    save_to: Path | None = None

    @classmethod
    def from_args(cls, compress_device: Any = None, compress_batch_size: Any = None, cache_dir: Any = None,
                  cache: Any = True, save_compressed: Any = None) -> LoadTimeOptions:
        """Validate the compute model arguments (clear errors before the model loads)."""
        from kick_models.compress.config import CompressionConfigError, as_bool, as_int
        from kick_models.export import ExportError, check_export_target

        batch_size = (
            None if compress_batch_size in (None, "", "auto") else as_int("compress_batch_size", compress_batch_size)
        )
        if batch_size is not None and batch_size <= 0:
            raise CompressionConfigError(
                f"Invalid compress_batch_size={compress_batch_size!r}: expected a positive integer (or omit it)."
            )
        cache_enabled = as_bool("cache", cache)
        if cache_dir is not None and not isinstance(cache_dir, str):
            raise CompressionConfigError(f"Invalid cache_dir={cache_dir!r}: expected a folder path.")
        if cache_dir is not None and not cache_enabled:
            raise CompressionConfigError(
                f"Invalid cache_dir={cache_dir!r} with cache=false: the cache is off, so cache_dir would be ignored. "
                "Drop one of them."
            )
        save_to: Path | None = None
        if save_compressed not in (None, ""):
            try:
                save_to = check_export_target(str(save_compressed))
            except ExportError as exc:
                raise CompressionConfigError(str(exc)) from None
        return cls(compress_device=parse_device(compress_device), batch_size=batch_size,
                   cache_enabled=cache_enabled, cache_dir=cache_dir, save_to=save_to)


def parse_device(value: Any) -> torch.device | None:
    """``compress_device``: None, or a device that holds data and exists on this machine."""
    from kick_models.compress.config import CompressionConfigError
    from kick_models.compress.placement import check_compute_device

    if value is None or value == "":
        return None
    device = check_compute_device(value)  # cpu, cuda[:i] or mps: devices that hold data
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CompressionConfigError(f"Invalid compress_device={value!r}: CUDA is not available on this machine.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CompressionConfigError(
                f"Invalid compress_device={value!r}: only {torch.cuda.device_count()} CUDA device(s) are visible."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CompressionConfigError(f"Invalid compress_device={value!r}: MPS is not available on this machine.")
    return device


@dataclass
class ModelSource:
    """What was loaded: identifies the weights in the cache key and in the export's record."""

    pretrained: Any
    revision: str | None = None
    gguf_file: str | None = None
    subfolder: str = ""
    peft: Any = None
    delta: Any = None
    commit_hash: str | None = None
    #: JSON-safe description for the results and the export (``pretrained`` name, revision, ...).
    described: dict = field(default_factory=dict)


def is_noop(config) -> bool:
    """``sparsity=0``: the model stays dense (measured only, never cached)."""
    from kick_models.compress.config import PruneConfig

    return isinstance(config, PruneConfig) and config.sparsity == 0


def compute_device(model: torch.nn.Module, options: LoadTimeOptions) -> torch.device:
    from kick_models.compress.placement import model_device

    if options.compress_device is not None:
        return options.compress_device
    return model_device(model)  # a dispatched/offloaded model: where its input embeddings run, never "meta"


def _cache_key(cache, model, tokenizer, config, source: ModelSource, options: LoadTimeOptions):
    """(key, key parts, calibration tokens or None)."""
    import kick_models
    from kick_models import api
    from kick_models.cache import cache_key, cache_key_parts, model_identity
    from kick_models.compress.calibration import (
        fingerprint,
        load_calibration,
        model_max_positions,
    )

    memo = cache.file_hash_memo()
    identity = model_identity(
        source.pretrained, model=model, revision=source.revision, gguf_file=source.gguf_file,
        subfolder=source.subfolder,
        commit_hash=getattr(getattr(model, "config", None), "_commit_hash", None) or source.commit_hash,
        memo=memo,
    )
    extra = {}
    for name, value in (("peft", source.peft), ("delta", source.delta)):
        if value:
            extra[name] = model_identity(value, memo=memo)
    memo.save()
    tokens = None
    if config.needs_calibration:
        tokens = load_calibration(config.calibration, tokenizer, model_max_positions(model))
    parts = cache_key_parts(
        identity=identity,
        config=config.to_dict(),
        calibration_fingerprint=fingerprint(tokens) if tokens is not None else None,
        dtype=str(next(model.parameters()).dtype),
        device_type=compute_device(model, options).type,
        algorithm_version=getattr(api, "ALGORITHM_VERSION", None) or kick_models.__version__,
        extra=extra or None,
    )
    return cache_key(parts), parts, tokens


def compress_or_load(model: torch.nn.Module, tokenizer, config, source: ModelSource, options: LoadTimeOptions,
                     record: dict | None = None, memory: Any = None) -> tuple[Any, dict]:
    """Compress the loaded ``model`` in place (or load it from the cache); return ``(report, record)``.

    ``record`` (updated in place and returned) may already hold entries from argument checking
    (e.g. ``calibration_data``). ``memory``: a :class:`~kick_models.compress.host_memory.PhaseMemory` that
    receives the phases ``compression``, ``cache_read``, ``cache_store``, ``save_compressed``.
    """
    from kick_models.compress.host_memory import PhaseMemory
    from kick_models import distributed
    from kick_models.api import apply_runtime, check_coverage, compress
    from kick_models.cache import CompressionCache
    from kick_models.compress.placement import describe

    record = {} if record is None else record
    memory = PhaseMemory() if memory is None else memory
    check_coverage(model, config)  # uncovered block weights refused before any calibration work
    rank, world = distributed.world()
    record.update(compressed_in_this_process=False, compress_device=str(compute_device(model, options)))
    placed = describe(model)
    if placed:  # dispatched by accelerate (parallelize=True, device_map, offload)
        record["placement"] = placed
    if world > 1:
        record["processes"] = {
            "rank": rank,
            "world_size": world,
            "coordination": "torch.distributed + file lock" if distributed.has_process_group() else "file lock",
        }
    t0 = time.perf_counter()

    def run_compression(calibration=None, progress: bool = True):
        """The one call into the compression core (counted in the record: a cache hit never gets here)."""
        memory.start("compression")
        record["compressed_in_this_process"] = True
        logger.info("kick: compressing %s with %s", source.described.get("pretrained"), config)
        return compress(model, tokenizer, config, calibration=calibration, device=options.compress_device,
                        batch_size=options.batch_size, progress=progress)

    if is_noop(config):
        report = run_compression(progress=False)  # measures only
        record["compressed_in_this_process"] = False
        record["cache"] = {"status": "not used (sparsity=0: the model stays dense)"}
        return _finish(model, tokenizer, config, report, record, source, options, t0, memory)

    cache = CompressionCache.open(options.cache_dir) if options.cache_enabled else None
    status = "miss" if cache is not None else ("disabled" if not options.cache_enabled else "unwritable")
    pg = distributed.has_process_group()
    tmp_root = None
    if cache is None and world > 1:
        if pg:  # a private temporary cache shared by the processes of this run
            tmp_root = distributed.broadcast_object(tempfile.mkdtemp(prefix="kick-mp-") if rank == 0 else None)
            cache = CompressionCache(tmp_root)
        else:
            warnings.warn(
                f"kick: {world} processes without a torch.distributed process group and no usable cache: "
                "every process compresses on its own. Enable the cache (cache=true, writable cache_dir) to "
                "compress once.",
                stacklevel=2,
            )

    if cache is None:
        report = run_compression(progress=rank == 0)
        record["cache"] = {"status": status}
        return _finish(model, tokenizer, config, report, record, source, options, t0, memory)

    from kick_models.distributed import HeldLock

    if pg and rank != 0:
        key, parts = distributed.broadcast_object(None)
        tokens = None
        lock = HeldLock(cache.root / "locks" / f"{key}.lock")  # released by rank 0 when the entry exists
    else:
        key, parts, tokens = _cache_key(cache, model, tokenizer, config, source, options)
        lock = HeldLock(cache.root / "locks" / f"{key}.lock")
        if pg:
            distributed.broadcast_object((key, parts))
    with lock:
        t_load = time.perf_counter()
        with memory.phase("cache_read"):  # the lookup; on a hit the restore
            report = cache.load_into(key, model)
        if report is not None:
            status = "hit"
            apply_runtime(model, config, report)  # e.g. a scheme's run-time activation quantization
            record["cache_load_seconds"] = round(time.perf_counter() - t_load, 3)
            logger.info("kick: loaded compressed weights from cache entry %s", cache.entry_dir(key))
        else:
            report = run_compression(calibration=tokens, progress=rank == 0)
            with memory.phase("cache_store"):
                stored = cache.store(key, model, report, parts)
            if stored is None:
                status = "miss (not written)"
    record["cache"] = {
        "status": status if tmp_root is None else f"{status} (temporary multi-process cache, cache=false)",
        "key": key,
        "dir": str(cache.root) if tmp_root is None else None,
    }
    if tmp_root is not None:
        distributed.barrier()
        if rank == 0:
            shutil.rmtree(tmp_root, ignore_errors=True)
    return _finish(model, tokenizer, config, report, record, source, options, t0, memory)


def _finish(model, tokenizer, config, report, record: dict, source: ModelSource, options: LoadTimeOptions,
            t0: float, memory: Any) -> tuple[Any, dict]:
    """Setup time, the optional export (rank 0 only) and the summary log line."""
    memory.stop()  # the compression
    from kick_models import distributed
    from kick_models.compress.config import SchemeConfig
    from kick_models.export import save_compressed

    summary = report.summary()
    record["setup_seconds"] = round(time.perf_counter() - t0, 3)
    rank, _ = distributed.world()
    if options.save_to is not None and rank == 0:
        memory.start("save_compressed")
        if isinstance(config, SchemeConfig):  # a compressed-tensors checkpoint (what vLLM serves)
            from kick_models.export_ct import save_compressed_tensors

            path = save_compressed_tensors(model, tokenizer, report, config, options.save_to,
                                           source=source.described, extra={"cache": record.get("cache")})
        else:
            path = save_compressed(
                model, tokenizer, report, options.save_to,
                source=source.described, extra={"cache": record.get("cache")},
            )
        record["saved_to"] = str(path)
        logger.info("kick: compressed checkpoint written to %s", path)
    coverage = summary.get("coverage") or {}
    logger.info(
        "kick: %s measured sparsity %.4f%s over all decoder-block weights, %s, compression %.1fs (cache: %s)",
        summary["method"], summary["measured_sparsity"],
        f", {summary['bits_per_weight']:.3f} bits/weight" if summary.get("bits_per_weight") else "",
        f"{100 * coverage.get('compressed_fraction', 0):.2f}% of them compressed ({len(coverage.get('kept', {}))} "
        f"kept as they are: {', '.join(sorted(set(coverage.get('kept', {}).values()))) or 'none'})"
        if coverage else "coverage unknown",
        summary["seconds"], record.get("cache", {}).get("status"),
    )
    memory.stop()
    return report, record
