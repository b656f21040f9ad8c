"""lm-eval model classes that compress a Hugging Face model at load time.

    lm_eval --model kick-pruned --model_args pretrained=ID,method=wanda,sparsity=0.5 ...
    lm_eval --model kick-gptq   --model_args pretrained=ID,wbits=4,groupsize=128,calib=c4 ...
    lm_eval --model kick-rtn    --model_args pretrained=ID,wbits=4 ...
    lm_eval --model kick-bnb    --model_args pretrained=ID,method=nf4 ...

Every ``hf`` model argument works unchanged (``pretrained``, ``dtype``, ``device``,
``batch_size``, ``parallelize``, ``gguf_file``, ``revision``, ...). Compression arguments are
parsed and validated by :mod:`kick_models.compress.config` in ``__init__`` before the model
loads, then removed before the rest reaches :class:`~lm_eval.models.huggingface.HFLM`.

Extra arguments of the compressing classes:

* ``compress_device``: where each decoder layer is compressed (default: the eval device);
* ``compress_batch_size``: calibration sequences per forward pass while compressing;
* ``cache`` (default true) / ``cache_dir``: the compressed-weights cache (:mod:`kick_models.cache`;
  ``cache_dir`` > ``$KICK_CACHE_DIR`` > ``~/.cache/kick``; note: this is kick's cache, not the
  Hugging Face download cache that ``from_pretrained(cache_dir=...)`` means -- use ``$HF_HOME`` for that);
* ``save_compressed=DIR``: also write the compressed model as a plain HF checkpoint
  (:mod:`kick_models.export`).

The compression record (config, measured sparsity overall and per block, bits per weight,
wall time, cache status and key) is returned by :meth:`get_model_info`, which lm-eval writes
into the ``config`` block of the results JSON, under ``kick_compression``.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from kick_models.compress.config import (
    CompressionConfigError,
    PruneConfig,
    QuantConfig,
    as_bool,
    as_int,
    check_pretrained,
    parse_prune_args,
    parse_quant_args,
)

logger = logging.getLogger("lm_eval.kick")  # under "lm_eval" so lm-eval's log handler shows it

#: Arguments this module adds to every compressing class.
COMPUTE_ARGS = ("compress_device", "compress_batch_size", "cache_dir", "cache", "save_compressed")
PRUNE_ARGS = ("method", "sparsity", "sparsity_type", "use_variant", "blocksize", "damp", "calib", "nsamples", "seqlen", "seed",
              "moe_calibration", "allow_partial")
QUANT_ARGS = ("method", "wbits", "groupsize", "act_order", "sym", "static_groups", "true_sequential", "damp",
              "blocksize", "calib", "nsamples", "seqlen", "seed", "moe_calibration", "allow_partial")
BNB_ARGS = ("method", "compute_dtype", "double_quant")
_ALL_KICK_ARGS = sorted(set(COMPUTE_ARGS + PRUNE_ARGS + QUANT_ARGS + BNB_ARGS))
_HFLM_ARGS = set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}
#: from_pretrained keyword arguments that look like kick arguments but are not typos.
_FROM_PRETRAINED_ARGS = {"variant", "device_map", "attn_implementation", "load_in_8bit", "load_in_4bit", "token",
                         "low_cpu_mem_usage", "use_safetensors", "local_files_only", "max_memory"}


def _check_typos(rest: dict, known: tuple[str, ...]) -> None:
    """Refuse leftover keys that look like a misspelt kick argument (they would reach from_pretrained)."""
    for key in rest:
        if key in _HFLM_ARGS or key in _FROM_PRETRAINED_ARGS:
            continue
        close = difflib.get_close_matches(key, list(known) + list(_ALL_KICK_ARGS), n=1, cutoff=0.75)
        if close and close[0] != key:
            raise CompressionConfigError(
                f"Unknown model argument {key}={rest[key]!r}. Did you mean {close[0]}? "
                f"(Unknown arguments are passed to from_pretrained, which would ignore or reject it.)"
            )


def _parse_device(value: Any) -> torch.device | None:
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


class _KickCompressedLM(HFLM):
    """HFLM that compresses ``self._model`` right after it is loaded (before any request)."""

    #: lm-eval name, for the record.
    MODEL_NAME = "kick"
    #: ``method`` used when none is given (None = required).
    DEFAULT_METHOD: str | None = None

    # -- argument handling ----------------------------------------------------
    @classmethod
    def parse_compression_args(cls, args: dict) -> tuple[PruneConfig | QuantConfig, dict]:
        raise NotImplementedError

    def __init__(
        self,
        pretrained: Any = None,
        compress_device: str | None = None,
        compress_batch_size: int | str | None = None,
        cache_dir: str | None = None,
        cache: bool | str = True,
        save_compressed: str | None = None,
        **kwargs: Any,
    ) -> None:
        from kick_models.export import ExportError, check_export_target

        if pretrained is None:
            raise CompressionConfigError(f"--model {self.MODEL_NAME} needs pretrained=<hub id, local folder or model>.")
        self._kick_config, rest = self.parse_compression_args(kwargs)
        _check_typos(rest, PRUNE_ARGS if isinstance(self._kick_config, PruneConfig) else QUANT_ARGS)
        self._kick_compress_device = _parse_device(compress_device)
        self._kick_compress_batch_size = (
            None if compress_batch_size in (None, "", "auto") else as_int("compress_batch_size", compress_batch_size)
        )
        if self._kick_compress_batch_size is not None and self._kick_compress_batch_size <= 0:
            raise CompressionConfigError(
                f"Invalid compress_batch_size={compress_batch_size!r}: expected a positive integer (or omit it)."
            )
        self._kick_cache_enabled = as_bool("cache", cache)
        if cache_dir is not None and not isinstance(cache_dir, str):
            raise CompressionConfigError(f"Invalid cache_dir={cache_dir!r}: expected a folder path.")
        if cache_dir is not None and not self._kick_cache_enabled:
            raise CompressionConfigError(
                f"Invalid cache_dir={cache_dir!r} with cache=false: the cache is off, so cache_dir would be ignored. "
                "Drop one of them."
            )
        self._kick_cache_dir = cache_dir
        self._kick_save_to: Path | None = None
        if save_compressed not in (None, ""):
            try:
                self._kick_save_to = check_export_target(str(save_compressed))
            except ExportError as exc:
                raise CompressionConfigError(str(exc)) from None
        self._kick_report = None
        self._kick_record: dict[str, Any] = {}
        self._kick_source = {
            "pretrained": pretrained if isinstance(pretrained, str) else getattr(pretrained, "name_or_path", type(pretrained).__name__),
            **{k: rest[k] for k in ("revision", "gguf_file", "subfolder", "peft", "delta") if rest.get(k)},
        }
        check_pretrained(pretrained)  # after every argument check, before the load
        if self._kick_config.needs_calibration and not self._kick_is_noop():
            from kick_models.compress.calibration import resolve_source

            # calibration data resolved (or a DataNotFoundError listing every place tried) before the load
            self._kick_record["calibration_data"] = resolve_source(self._kick_config.calibration.source)[2]
        super().__init__(pretrained=pretrained, **rest)
        if self._kick_report is None:  # ``pretrained`` was a model object: _create_model was not called
            self._kick_apply(pretrained=pretrained, revision=rest.get("revision"), gguf_file=None,
                             subfolder=rest.get("subfolder", "") or "", peft=None, delta=None)

    def _create_model(self, pretrained: str, *args: Any, **kwargs: Any) -> None:
        super()._create_model(pretrained, *args, **kwargs)
        self._kick_apply(
            pretrained=pretrained,
            revision=kwargs.get("revision"),
            gguf_file=kwargs.get("gguf_file"),
            subfolder=kwargs.get("subfolder", "") or "",
            peft=kwargs.get("peft"),
            delta=kwargs.get("delta"),
        )

    # -- compression ------------------------------------------------------------
    def _kick_model(self) -> torch.nn.Module:
        model = self._model
        accelerator = getattr(self, "accelerator", None)
        return accelerator.unwrap_model(model) if accelerator is not None else model

    def _kick_device(self, model: torch.nn.Module) -> torch.device:
        from kick_models.compress.placement import model_device

        if self._kick_compress_device is not None:
            return self._kick_compress_device
        return model_device(model)  # a dispatched/offloaded model: where its input embeddings run, never "meta"

    def _kick_is_noop(self) -> bool:
        cfg = self._kick_config
        return isinstance(cfg, PruneConfig) and cfg.sparsity == 0

    def _kick_compress(self, model, calibration=None, progress: bool = True):
        """The one call into the compression core (counted in the record: a cache hit never gets here)."""
        from kick_models.api import compress

        self._kick_record["compressed_in_this_process"] = True
        logger.info("kick: compressing %s with %s", self._kick_source["pretrained"], self._kick_config)
        return compress(
            model,
            self.tokenizer,
            self._kick_config,
            calibration=calibration,
            device=self._kick_compress_device,
            batch_size=self._kick_compress_batch_size,
            progress=progress,
        )

    def _kick_key(self, cache, model, pretrained, revision, gguf_file, subfolder, peft, delta):
        """(key, key parts, calibration tokens or None)."""
        import kick_models
        from kick_models import api
        from kick_models.cache import cache_key, cache_key_parts, model_identity
        from kick_models.compress.calibration import fingerprint, load_calibration, model_max_positions

        memo = cache.file_hash_memo()
        identity = model_identity(
            pretrained, model=model, revision=revision, gguf_file=gguf_file, subfolder=subfolder,
            commit_hash=getattr(getattr(model, "config", None), "_commit_hash", None)
            or getattr(getattr(self, "_config", None), "_commit_hash", None),
            memo=memo,
        )
        extra = {}
        for name, value in (("peft", peft), ("delta", delta)):
            if value:
                extra[name] = model_identity(value, memo=memo)
        memo.save()
        cfg = self._kick_config
        tokens = None
        if cfg.needs_calibration:
            tokens = load_calibration(cfg.calibration, self.tokenizer, model_max_positions(model))
        parts = cache_key_parts(
            identity=identity,
            config=cfg.to_dict(),
            calibration_fingerprint=fingerprint(tokens) if tokens is not None else None,
            dtype=str(next(model.parameters()).dtype),
            device_type=self._kick_device(model).type,
            algorithm_version=getattr(api, "ALGORITHM_VERSION", None) or kick_models.__version__,
            extra=extra or None,
        )
        return cache_key(parts), parts, tokens

    def _kick_apply(self, pretrained, revision, gguf_file, subfolder, peft, delta) -> None:
        """Compress the loaded model (or load it from the cache) and keep the record."""
        from kick_models import distributed
        from kick_models.api import check_coverage
        from kick_models.cache import CompressionCache

        model = self._kick_model()
        check_coverage(model, self._kick_config)  # uncovered block weights refused before any calibration work
        rank, world = distributed.world()
        record = self._kick_record
        record.update(compressed_in_this_process=False, compress_device=str(self._kick_device(model)))
        from kick_models.compress.placement import describe

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

        if self._kick_is_noop():
            self._kick_report = self._kick_compress(model, progress=False)  # measures only
            record["compressed_in_this_process"] = False
            record["cache"] = {"status": "not used (sparsity=0: the model stays dense)"}
            self._kick_finish(model, t0)
            return

        cache = CompressionCache.open(self._kick_cache_dir) if self._kick_cache_enabled else None
        status = "miss" if cache is not None else ("disabled" if not self._kick_cache_enabled else "unwritable")
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
            self._kick_report = self._kick_compress(model, progress=rank == 0)
            record["cache"] = {"status": status}
            self._kick_finish(model, t0)
            return

        from kick_models.distributed import HeldLock

        if pg and rank != 0:
            key, parts = distributed.broadcast_object(None)
            tokens = None
            lock = HeldLock(cache.root / "locks" / f"{key}.lock")  # released by rank 0 when the entry exists
        else:
            key, parts, tokens = self._kick_key(cache, model, pretrained, revision, gguf_file, subfolder, peft, delta)
            lock = HeldLock(cache.root / "locks" / f"{key}.lock")
            if pg:
                distributed.broadcast_object((key, parts))
        with lock:
            t_load = time.perf_counter()
            report = cache.load_into(key, model)
            if report is not None:
                status = "hit"
                record["cache_load_seconds"] = round(time.perf_counter() - t_load, 3)
                logger.info("kick: loaded compressed weights from cache entry %s", cache.entry_dir(key))
            else:
                report = self._kick_compress(model, calibration=tokens, progress=rank == 0)
                stored = cache.store(key, model, report, parts)
                if stored is None:
                    status = "miss (not written)"
        self._kick_report = report
        record["cache"] = {
            "status": status if tmp_root is None else f"{status} (temporary multi-process cache, cache=false)",
            "key": key,
            "dir": str(cache.root) if tmp_root is None else None,
        }
        if tmp_root is not None:
            distributed.barrier()
            if rank == 0:
                shutil.rmtree(tmp_root, ignore_errors=True)
        self._kick_finish(model, t0)

    def _kick_finish(self, model, t0: float) -> None:
        from kick_models import distributed
        from kick_models.export import save_compressed

        report = self._kick_report
        summary = report.summary()
        record = self._kick_record
        record["setup_seconds"] = round(time.perf_counter() - t0, 3)
        rank, _ = distributed.world()
        if self._kick_save_to is not None and rank == 0:
            path = save_compressed(
                model, self.tokenizer, report, self._kick_save_to,
                source=self._kick_source, extra={"cache": record.get("cache")},
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

    # -- reporting --------------------------------------------------------------
    @property
    def compression_report(self):
        """The :class:`~kick_models.compress.report.CompressionReport` of this model."""
        return self._kick_report

    def compression_info(self) -> dict:
        """JSON-safe record of what was done to the weights (also in ``get_model_info()``)."""
        report = self._kick_report
        summary = report.summary() if report is not None else {}
        per_block = report.block_sparsity() if report is not None and hasattr(report, "block_sparsity") else {}
        return {
            "model_class": self.MODEL_NAME,
            "source": {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in self._kick_source.items()},
            "config": self._kick_config.to_dict(),
            "measured_sparsity": summary.get("measured_sparsity"),
            "block_sparsity": summary.get("block_sparsity"),
            "block_sparsity_per_block": [round(v, 6) for v in per_block.values()] if per_block else None,
            "bits_per_weight": summary.get("bits_per_weight"),
            "compression_seconds": summary.get("seconds"),
            "n_layers": summary.get("n_layers"),
            "coverage": summary.get("coverage"),
            **{k: summary[k] for k in ("damp_raised", "expert_tokens") if k in summary},
            "calibration_fingerprint": summary.get("calibration_fingerprint"),
            **self._kick_record,
        }

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["kick_compression"] = self.compression_info()
        return info


class KickPrunedLM(_KickCompressedLM):
    """``kick-pruned``: magnitude / Wanda / SparseGPT, unstructured or N:M, at load time.

    Model args: ``method`` (required), ``sparsity`` (default 0.5, or N/M), ``sparsity_type``
    (``unstructured`` | ``N:M``), ``use_variant`` (Wanda), ``blocksize``/``damp`` (SparseGPT),
    ``calib`` (c4 | wikitext2 | file | HF dataset id), ``nsamples``, ``seqlen``, ``seed``,
    ``moe_calibration`` (all | routed: which tokens MoE experts' statistics see), ``allow_partial``
    (compress a model whose blocks hold weights kick cannot compress), plus the compute args of the
    module docstring and every ``hf`` argument.
    """

    MODEL_NAME = "kick-pruned"

    @classmethod
    def parse_compression_args(cls, args: dict) -> tuple[PruneConfig, dict]:
        return parse_prune_args(args)


class KickQuantizedLM(_KickCompressedLM):
    """``kick-gptq``: GPTQ (default) or RTN fake quantization at load time.

    Model args: ``method`` (gptq | rtn), ``wbits`` (2/3/4/8), ``groupsize`` (-1 = per row),
    ``act_order``, ``sym``, ``static_groups``, ``true_sequential``, ``damp``, ``blocksize``,
    ``calib`` (default wikitext2, which needs the Hub), ``nsamples``, ``seqlen``, ``seed``,
    ``moe_calibration``, ``allow_partial`` (as for kick-pruned), plus the compute args of the module
    docstring and every ``hf`` argument.
    """

    MODEL_NAME = "kick-gptq"
    DEFAULT_METHOD = "gptq"

    @classmethod
    def parse_compression_args(cls, args: dict) -> tuple[QuantConfig, dict]:
        args = dict(args)
        if cls.DEFAULT_METHOD == "rtn":
            method = str(args.get("method", "rtn")).strip().lower()
            if method != "rtn":
                raise CompressionConfigError(
                    f"Invalid method={args['method']!r} for --model kick-rtn: it always uses round-to-nearest. "
                    "Use --model kick-gptq for method=gptq."
                )
            args["method"] = "rtn"
        return parse_quant_args(args)


class KickRTNLM(KickQuantizedLM):
    """``kick-rtn``: :class:`KickQuantizedLM` with ``method=rtn`` (no calibration data)."""

    MODEL_NAME = "kick-rtn"
    DEFAULT_METHOD = "rtn"


# ------------------------------------------------------------------------------------------ bitsandbytes

BNB_METHODS = ("int8", "nf4", "fp4")
_BNB_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class KickBitsAndBytesLM(HFLM):
    """``kick-bnb``: LLM.int8 / NF4 / FP4 load-time quantization through transformers' BitsAndBytesConfig.

    Model args: ``method`` (int8 | nf4 | fp4, default nf4), ``compute_dtype`` (4-bit compute dtype:
    float32 | float16 | bfloat16; default the model dtype), ``double_quant`` (4-bit nested
    quantization of the scales, default false), plus every ``hf`` argument. Needs the optional
    dependency ``bitsandbytes`` (``pip install 'kick-eval[bnb]'``).
    """

    MODEL_NAME = "kick-bnb"

    def __init__(self, pretrained: Any = None, method: str = "nf4", compute_dtype: str | None = None,
                 double_quant: bool | str = False, **kwargs: Any) -> None:
        if pretrained is None:
            raise CompressionConfigError("--model kick-bnb needs pretrained=<hub id or local folder>.")
        if not isinstance(method, str) or method.strip().lower() not in BNB_METHODS:
            raise CompressionConfigError(f"Invalid method={method!r}: kick-bnb methods are {', '.join(BNB_METHODS)}.")
        method = method.strip().lower()
        double_quant = as_bool("double_quant", double_quant)
        if method == "int8" and (double_quant or compute_dtype is not None):
            raise CompressionConfigError(
                "Invalid compute_dtype/double_quant with method=int8: they apply only to the 4-bit methods nf4/fp4."
            )
        if compute_dtype is not None and str(compute_dtype) not in _BNB_DTYPES:
            raise CompressionConfigError(
                f"Invalid compute_dtype={compute_dtype!r}: expected one of {', '.join(_BNB_DTYPES)}."
            )
        _check_typos(kwargs, BNB_ARGS)
        if not isinstance(pretrained, str):
            raise CompressionConfigError(
                "kick-bnb quantizes while loading, so pretrained must be a hub id or a folder, not a model object."
            )
        if kwargs.get("gguf_file"):
            raise CompressionConfigError(
                "kick-bnb cannot quantize a GGUF checkpoint (gguf_file=...): transformers dequantizes GGUF with "
                "its own quantizer. Export the model to safetensors first (e.g. kick-pruned sparsity=0 "
                "save_compressed=DIR) and load that folder."
            )
        check_pretrained(pretrained)
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError(
                "--model kick-bnb needs the optional dependency bitsandbytes: pip install 'kick-eval[bnb]' "
                "(or pip install bitsandbytes)."
            )
        from transformers import BitsAndBytesConfig

        if method == "int8":
            self._bnb_config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            self._bnb_config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=method,
                bnb_4bit_use_double_quant=double_quant,
                bnb_4bit_compute_dtype=_BNB_DTYPES[compute_dtype] if compute_dtype else None,
            )
        self._bnb_method = method
        self._bnb_seconds = None
        super().__init__(pretrained=pretrained, **kwargs)

    def _create_model(self, pretrained: str, *args: Any, quantization_config: Any = None, **kwargs: Any) -> None:
        if quantization_config is not None:
            raise CompressionConfigError(
                f"{pretrained} is already quantized ({getattr(quantization_config, 'quant_method', quantization_config)}); "
                "kick-bnb needs an unquantized checkpoint."
            )
        t0 = time.perf_counter()
        super()._create_model(pretrained, *args, quantization_config=self._bnb_config, **kwargs)
        self._bnb_seconds = round(time.perf_counter() - t0, 3)

    def compression_info(self) -> dict:
        """Method, quantized Linear count and storage bits per weight (incl. scales)."""
        total_bits = 0.0
        numel = 0
        n_layers = 0
        for module in self._model.modules():
            weight = getattr(module, "weight", None)
            kind = type(module).__name__
            if kind == "Linear4bit" and weight is not None:
                state = getattr(weight, "quant_state", None)
                block = getattr(state, "blocksize", 64) or 64
                if getattr(state, "nested", False):
                    overhead = 8 / block + 32 / (block * 256)
                else:
                    overhead = 32 / block
                n = module.in_features * module.out_features
                total_bits += n * (4 + overhead)
            elif kind == "Linear8bitLt" and weight is not None:
                n = module.in_features * module.out_features
                total_bits += n * (8 + 32 / module.in_features)  # one fp32 scale per output row
            else:
                continue
            numel += n
            n_layers += 1
        return {
            "model_class": self.MODEL_NAME,
            "config": self._bnb_config.to_dict(),
            "method": self._bnb_method,
            "n_layers": n_layers,
            "bits_per_weight": total_bits / numel if numel else None,
            "load_seconds": self._bnb_seconds,
        }

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["kick_compression"] = self.compression_info()
        return info
