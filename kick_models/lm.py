"""lm-eval model classes that compress a Hugging Face model at load time.

    lm_eval --model kick-pruned --model_args pretrained=ID,method=wanda,sparsity=0.5 ...
    lm_eval --model kick-gptq   --model_args pretrained=ID,wbits=4,groupsize=128,calib=c4 ...
    lm_eval --model kick-rtn    --model_args pretrained=ID,wbits=4 ...
    lm_eval --model kick-bnb    --model_args pretrained=ID,method=nf4 ...
    lm_eval --model kick-hf     --model_args pretrained=ID,score_batch_size=4 --batch_size 16 ...

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

Every kick class (``kick-hf`` too: the uncompressed model) scores loglikelihood requests with
:mod:`kick_models.scoring` (the same log-likelihoods as ``hf``, one batch of logits held at once) and takes
``score_batch_size=N``: at most N sequences per scoring forward pass, so that generation can run at a larger
``--batch_size`` than the scoring's logits fit in memory for.

The compression record (config, measured sparsity overall and per block, bits per weight,
wall time, cache status and key) is returned by :meth:`get_model_info`, which lm-eval writes
into the ``config`` block of the results JSON, under ``kick_compression``.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import time
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from kick_models.compress.config import (
    CompressionConfigError,
    PruneConfig,
    QuantConfig,
    as_bool,
    check_pretrained,
    parse_prune_args,
    parse_quant_args,
    parse_scheme_args,
)
from kick_models.loadtime import LoadTimeOptions, is_noop
from kick_models.scoring import BoundedLoglikelihoodMixin

#: Arguments this module adds to every compressing class.
COMPUTE_ARGS = ("compress_device", "compress_batch_size", "cache_dir", "cache", "save_compressed")
PRUNE_ARGS = ("method", "sparsity", "sparsity_type", "use_variant", "blocksize", "damp", "calib", "nsamples", "seqlen", "seed",
              "moe_calibration", "allow_partial")
QUANT_ARGS = ("method", "wbits", "groupsize", "act_order", "sym", "static_groups", "true_sequential", "damp",
              "blocksize", "calib", "nsamples", "seqlen", "seed", "moe_calibration", "allow_partial")
BNB_ARGS = ("method", "compute_dtype", "double_quant")
#: Arguments of kick's loglikelihood scoring, on every kick class (kick_models/scoring.py).
SCORING_ARGS = ("score_batch_size",)
SCHEME_ARGS = ("scheme", "method", "ignore", "group_size", "damp", "blocksize", "calib", "nsamples", "seqlen", "seed",
               "moe_calibration", "allow_partial", "smoothquant", "quantizer", "duo_scaling")
_ALL_KICK_ARGS = sorted(set(COMPUTE_ARGS + PRUNE_ARGS + QUANT_ARGS + BNB_ARGS + SCHEME_ARGS + SCORING_ARGS))
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


class _KickCompressedLM(BoundedLoglikelihoodMixin, HFLM):
    """HFLM that compresses ``self._model`` right after it is loaded (before any request)."""

    #: lm-eval name, for the record.
    MODEL_NAME = "kick"
    #: ``method`` used when none is given (None = required).
    DEFAULT_METHOD: str | None = None
    #: The class's own compression arguments (for the typo check).
    KNOWN_ARGS: tuple[str, ...] = ()

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
        if pretrained is None:
            raise CompressionConfigError(f"--model {self.MODEL_NAME} needs pretrained=<hub id, local folder or model>.")
        self._kick_config, rest = self.parse_compression_args(kwargs)
        _check_typos(rest, self.KNOWN_ARGS)
        self._kick_options = LoadTimeOptions.from_args(compress_device=compress_device,
                                                       compress_batch_size=compress_batch_size, cache_dir=cache_dir,
                                                       cache=cache, save_compressed=save_compressed)
        if self._kick_options.save_to is not None and getattr(self._kick_config, "quantizer", "scheme") == "reference":
            raise CompressionConfigError(
                "Invalid save_compressed with quantizer=reference: the reference code's fake quantization is not "
                "the scheme's format a compressed-tensors checkpoint holds. Export with quantizer=scheme (default).")
        self._kick_report = None
        self._kick_record: dict[str, Any] = {}
        self._kick_source = {
            "pretrained": pretrained if isinstance(pretrained, str) else getattr(pretrained, "name_or_path", type(pretrained).__name__),
            **{k: rest[k] for k in ("revision", "gguf_file", "subfolder", "peft", "delta") if rest.get(k)},
        }
        check_pretrained(pretrained)  # after every argument check, before the load
        if self._kick_config.needs_calibration and not is_noop(self._kick_config):
            from kick_models.compress.calibration import resolve_source

            # calibration data resolved (or a DataNotFoundError listing every place tried) before the load
            self._kick_record["calibration_data"] = resolve_source(self._kick_config.calibration.source)[2]
        from kick_models.compress.host_memory import PhaseMemory

        self._kick_memory = PhaseMemory()  # peak host / CUDA memory per phase, in the record (issue 27)
        self._kick_memory.start("load")
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

    def _kick_apply(self, pretrained, revision, gguf_file, subfolder, peft, delta) -> None:
        """Hand the loaded model to the load-time driver (:func:`kick_models.loadtime.compress_or_load`)."""
        from kick_models.loadtime import ModelSource, compress_or_load

        model = self._model
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None:
            model = accelerator.unwrap_model(model)
        source = ModelSource(
            pretrained=pretrained, revision=revision, gguf_file=gguf_file, subfolder=subfolder, peft=peft,
            delta=delta, commit_hash=getattr(getattr(self, "_config", None), "_commit_hash", None),
            described=self._kick_source,
        )
        self._kick_memory.stop()  # the load
        self._kick_report, self._kick_record = compress_or_load(
            model, self.tokenizer, self._kick_config, source, self._kick_options, self._kick_record,
            memory=self._kick_memory)
        self._kick_memory.start("evaluation")  # until lm-eval asks for get_model_info, after its evaluation

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
            **{k: summary[k] for k in ("damp_raised", "expert_tokens", "transforms") if k in summary},
            "calibration_fingerprint": summary.get("calibration_fingerprint"),
            **self._kick_record,
            "memory": self._kick_memory.record(),
        }

    def get_model_info(self) -> dict:
        self._kick_memory.stop()  # lm-eval asks after its evaluation: that phase ends here
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
    KNOWN_ARGS = PRUNE_ARGS

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
    KNOWN_ARGS = QUANT_ARGS

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


class KickQuantSchemeLM(_KickCompressedLM):
    """``kick-quant``: a compressed-tensors preset scheme (FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4, NVFP4A16, MXFP4,
    MXFP4A16, W8A8, W8A16, W4A16, W4A16_ASYM) at load time, as vLLM serves it.

    Model args: ``scheme`` (required), ``method`` (rtn | gptq | awq, default rtn), ``ignore`` (``|``-separated
    module names / suffixes / ``re:`` patterns, default lm_head), ``group_size`` (override of the scheme's
    group, recorded), ``damp`` / ``blocksize`` (gptq), ``smoothquant`` (alpha, before activation schemes),
    ``quantizer`` (scheme | reference: awq / smoothquant), ``duo_scaling`` (awq), ``calib`` / ``nsamples`` / ``seqlen`` / ``seed``
    (gptq and static activation scales: FP8, NVFP4), ``moe_calibration``, ``allow_partial``, plus the compute
    args of the module docstring and every ``hf`` argument.
    """

    MODEL_NAME = "kick-quant"
    DEFAULT_METHOD = "rtn"
    KNOWN_ARGS = SCHEME_ARGS

    @classmethod
    def parse_compression_args(cls, args: dict):
        return parse_scheme_args(args)


# ------------------------------------------------------------------------------------------ bitsandbytes

BNB_METHODS = ("int8", "nf4", "fp4")
_BNB_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class KickBitsAndBytesLM(BoundedLoglikelihoodMixin, HFLM):
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


class KickHFLM(BoundedLoglikelihoodMixin, HFLM):
    """``kick-hf``: lm-eval's ``hf`` model, uncompressed, scored by kick's bounded loglikelihood scoring (the same
    log-likelihoods as ``hf``; ``score_batch_size`` caps the sequences per scoring forward pass). The dense baseline
    of a ``kick sweep --score_batch_size N`` run. kick does not compress it: a report labels it from what its
    checkpoint holds, as a plain ``hf`` run."""

    MODEL_NAME = "kick-hf"
