"""Typed compression configs. ALL validation of user input happens here, before any model loads.

    cfg, rest = parse_prune_args({"method": "wanda", "sparsity": "0.5", "pretrained": "x"})
    cfg, rest = parse_quant_args({"method": "gptq", "wbits": "4", "groupsize": "-1.0"})

Values may arrive as strings or as lm-eval's casts (``"-1"`` -> ``-1.0``, ``"True"`` -> ``True``);
every field is cast and checked here. Errors are :class:`CompressionConfigError` naming the
argument, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from kick_models.compress.errors import CompressionConfigError

PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt")
QUANT_METHODS = ("gptq", "rtn")
WBITS = (2, 3, 4, 8)
BUILTIN_CALIBRATION = ("c4", "wikitext2")
MOE_CALIBRATION = ("all", "routed")
CALIBRATION_FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
_FILE_LIKE_SUFFIXES = CALIBRATION_FILE_SUFFIXES + (".json", ".csv", ".tsv", ".gz", ".arrow", ".md")


class UnsupportedModelError(CompressionConfigError):
    """The model holds something kick cannot compress truly (the message names the module/weights and why):
    refused before any weight changes."""


# --------------------------------------------------------------------------- casting helpers


def _err(name: str, value: Any, allowed: str) -> CompressionConfigError:
    return CompressionConfigError(f"Invalid {name}={value!r}: {allowed}.")


def as_int(name: str, value: Any) -> int:
    """Cast ``128``, ``128.0``, ``"128"``, ``"-1"``, ``-1.0`` to int; refuse 1.5, True, "abc"."""
    if isinstance(value, bool):
        raise _err(name, value, "expected an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise _err(name, value, "expected an integer")
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise _err(name, value, "expected an integer") from None
            return as_int(name, f)
    raise _err(name, value, "expected an integer")


def as_float(name: str, value: Any) -> float:
    """Cast ``0.5``, ``"0.5"``, ``1`` to a finite float; refuse booleans, NaN, text."""
    if isinstance(value, bool):
        raise _err(name, value, "expected a number, not a boolean")
    if isinstance(value, (int, float)):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            raise _err(name, value, "expected a number") from None
    else:
        raise _err(name, value, "expected a number")
    if not math.isfinite(f):
        raise _err(name, value, "expected a finite number")
    return f


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


class PretrainedNotFoundError(CompressionConfigError, FileNotFoundError):
    """``pretrained`` names a local path that does not exist (an OSError too, like the loader's own)."""


def check_pretrained(pretrained: Any) -> None:
    """Refuse a ``pretrained`` written as a local path (``/...``, ``./...``, ``../...``, ``~/...``) that does
    not exist, before anything loads; Hub ids (``org/name``) and in-memory models pass through."""
    if not isinstance(pretrained, str) or not pretrained.startswith(("/", "./", "../", "~")):
        return
    if not os.path.exists(os.path.expanduser(pretrained)):
        raise PretrainedNotFoundError(
            f"pretrained={pretrained!r} is a local path that does not exist; give an existing model folder "
            "or a Hugging Face Hub id such as HuggingFaceTB/SmolLM2-135M."
        )


def as_bool(name: str, value: Any) -> bool:
    """Cast ``True``, ``"true"``, ``1``, ``"0"``, ``"no"`` ... to bool; refuse anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _err(name, value, "expected a boolean (true/false, 1/0, yes/no)")


def parse_nm(value: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"2:4"`` -> (2, 4); anything else -> CompressionConfigError."""
    text = str(value).strip()
    if text.lower() == "unstructured":
        return None
    parts = text.split(":")
    allowed = "expected 'unstructured' or an N:M pattern with integers 0 < N < M, e.g. '2:4' or '4:8'"
    if len(parts) != 2:
        raise _err("sparsity_type", value, allowed)
    try:
        n, m = int(parts[0]), int(parts[1])
    except ValueError:
        raise _err("sparsity_type", value, allowed) from None
    if m <= 0 or n <= 0 or n >= m:
        raise _err("sparsity_type", value, allowed)
    return n, m


# --------------------------------------------------------------------------- configs


def _check_calibration_source(source: str) -> None:
    if not isinstance(source, str) or not source.strip():
        raise _err("calib", source, "expected 'c4', 'wikitext2', a .txt/.jsonl/.parquet file or a Hugging Face dataset id")
    if source in BUILTIN_CALIBRATION:
        return
    path = os.path.expanduser(source)
    lower = path.lower()
    looks_like_file = lower.endswith(_FILE_LIKE_SUFFIXES) or os.path.sep in path and os.path.exists(path)
    if os.path.isdir(path):
        raise _err("calib", source, "this is a directory; give a .txt, .jsonl or .parquet file")
    if looks_like_file or os.path.exists(path):
        if not lower.endswith(CALIBRATION_FILE_SUFFIXES):
            raise _err("calib", source, f"calibration files must end with one of {', '.join(CALIBRATION_FILE_SUFFIXES)}")
        if not os.path.isfile(path):
            raise CompressionConfigError(
                f"Invalid calib={source!r}: the calibration file does not exist. Give an existing "
                f".txt/.jsonl/.parquet file, or calib=c4 / calib=wikitext2."
            )


@dataclass(frozen=True)
class CalibrationConfig:
    """Where calibration windows come from and how many: ``nsamples`` windows of ``seqlen`` tokens."""

    source: str = "c4"  # "c4" | "wikitext2" | path to .txt/.jsonl/.parquet | HF dataset id
    nsamples: int = 128
    seqlen: int = 2048  # capped at the model's max positions (warning) when windows are built
    seed: int = 0

    def __post_init__(self) -> None:
        _check_calibration_source(self.source)
        for name, value in (("nsamples", self.nsamples), ("seqlen", self.seqlen)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise _err(name, value, "expected a positive integer")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise _err("seed", self.seed, "expected an integer")

    def to_dict(self) -> dict:
        return asdict(self)


class _RecordsCalibration:
    """``to_dict`` for configs with a ``calibration`` field: recorded only when the method uses it (so is
    ``moe_calibration``, which only says which calibration tokens MoE experts' statistics see)."""

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.needs_calibration:
            d["calibration"] = None
            d["moe_calibration"] = None
        return d


def _check_coverage_args(config: Any) -> None:
    """``moe_calibration`` in {all, routed}; ``allow_partial`` a bool."""
    if not isinstance(config.moe_calibration, str) or config.moe_calibration not in MOE_CALIBRATION:
        raise _err("moe_calibration", config.moe_calibration,
                   "expected 'all' (every expert's statistics see every calibration token) or 'routed' (only the "
                   "tokens the router sends it)")
    if not isinstance(config.allow_partial, bool):
        raise _err("allow_partial", config.allow_partial, "expected a boolean (true/false)")


@dataclass(frozen=True)
class PruneConfig(_RecordsCalibration):
    """Unstructured or N:M pruning with magnitude, Wanda or SparseGPT.

    ``sparsity=None`` means 0.5 for unstructured and N/M for an N:M pattern; after construction
    it is always a float. An N:M pattern with a different explicit sparsity is an error (the
    paper's code silently ran 50% in that case).
    """

    method: str
    sparsity: float | None = None  # [0, 1); for N:M it is N/M
    sparsity_type: str = "unstructured"  # "unstructured" or "N:M" e.g. "2:4"
    use_variant: bool = False  # Wanda appendix variant (per-row cumulative-score threshold)
    blocksize: int = 128  # SparseGPT
    damp: float = 0.01  # SparseGPT: damp * mean(diag H)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    moe_calibration: str = "all"  # MoE experts' statistics: "all" tokens or the "routed" ones
    allow_partial: bool = False  # proceed when the blocks hold >= 2-D weights no handler compresses

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise _err("method", self.method, f"pruning methods are {', '.join(PRUNE_METHODS)}")
        nm = parse_nm(self.sparsity_type)
        object.__setattr__(self, "sparsity_type", "unstructured" if nm is None else f"{nm[0]}:{nm[1]}")
        if self.sparsity is None:
            sparsity = 0.5 if nm is None else nm[0] / nm[1]
        else:
            sparsity = as_float("sparsity", self.sparsity)
        if not 0.0 <= sparsity < 1.0:
            raise _err("sparsity", self.sparsity, "expected a fraction in [0, 1), e.g. 0.5")
        if nm is not None and not math.isclose(sparsity, nm[0] / nm[1], abs_tol=1e-9):
            raise CompressionConfigError(
                f"Invalid sparsity={self.sparsity!r} with sparsity_type={self.sparsity_type!r}: an N:M pattern "
                f"fixes the sparsity at N/M = {nm[0] / nm[1]:g}. Omit sparsity or set it to {nm[0] / nm[1]:g}."
            )
        object.__setattr__(self, "sparsity", sparsity)
        if not isinstance(self.use_variant, bool):
            raise _err("use_variant", self.use_variant, "expected a boolean")
        if self.use_variant and self.method != "wanda":
            raise _err("use_variant", self.use_variant, f"the variant exists only for method=wanda (got method={self.method})")
        if self.use_variant and nm is not None:
            raise _err("use_variant", self.use_variant, "the Wanda variant applies only to unstructured sparsity")
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize <= 0:
            raise _err("blocksize", self.blocksize, "expected a positive integer")
        if nm is not None and self.method == "sparsegpt" and self.blocksize % nm[1] != 0:
            raise _err("blocksize", self.blocksize, f"SparseGPT N:M needs a blocksize that is a multiple of M={nm[1]}")
        damp = as_float("damp", self.damp)
        if not 0.0 < damp <= 1.0:
            raise _err("damp", self.damp, "expected a fraction in (0, 1], e.g. 0.01")
        object.__setattr__(self, "damp", damp)
        if not isinstance(self.calibration, CalibrationConfig):
            raise _err("calibration", self.calibration, "expected a CalibrationConfig")
        _check_coverage_args(self)

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for N:M sparsity, else None."""
        return parse_nm(self.sparsity_type)

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude"


@dataclass(frozen=True)
class QuantConfig(_RecordsCalibration):
    """GPTQ or round-to-nearest fake quantization (quantize-dequantize in place)."""

    method: str = "gptq"  # "gptq" | "rtn"
    wbits: int = 4  # 2, 3, 4, 8
    groupsize: int = 128  # -1 = one group per row
    act_order: bool = False
    sym: bool = False
    static_groups: bool = False
    true_sequential: bool = False
    damp: float = 0.01
    blocksize: int = 128
    calibration: CalibrationConfig = field(default_factory=lambda: CalibrationConfig(source="wikitext2"))
    moe_calibration: str = "all"  # MoE experts' statistics: "all" tokens or the "routed" ones
    allow_partial: bool = False  # proceed when the blocks hold >= 2-D weights no handler compresses

    def __post_init__(self) -> None:
        if self.method not in QUANT_METHODS:
            raise _err("method", self.method, f"quantization methods are {', '.join(QUANT_METHODS)}")
        if isinstance(self.wbits, bool) or self.wbits not in WBITS:
            raise _err("wbits", self.wbits, f"allowed bit widths are {', '.join(map(str, WBITS))}")
        if isinstance(self.groupsize, bool) or not isinstance(self.groupsize, int) or self.groupsize == 0 or self.groupsize < -1:
            raise _err("groupsize", self.groupsize, "expected a positive group size (e.g. 128) or -1 for one group per row")
        for name in ("act_order", "sym", "static_groups", "true_sequential"):
            if not isinstance(getattr(self, name), bool):
                raise _err(name, getattr(self, name), "expected a boolean")
        if self.static_groups and self.groupsize == -1:
            raise CompressionConfigError(
                "Invalid static_groups=True with groupsize=-1: static groups fix each group's scale/zero before "
                "quantizing, which needs groups. Set groupsize (e.g. 128) or static_groups=False."
            )
        if self.method == "rtn":
            for name in ("act_order", "static_groups", "true_sequential"):
                if getattr(self, name):
                    raise CompressionConfigError(
                        f"Invalid {name}=True with method=rtn: round-to-nearest uses no calibration data "
                        f"(no Hessian), so {name} has no meaning. Use method=gptq or drop {name}."
                    )
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize <= 0:
            raise _err("blocksize", self.blocksize, "expected a positive integer")
        damp = as_float("damp", self.damp)
        if not 0.0 < damp <= 1.0:
            raise _err("damp", self.damp, "expected a fraction in (0, 1], e.g. 0.01")
        object.__setattr__(self, "damp", damp)
        if not isinstance(self.calibration, CalibrationConfig):
            raise _err("calibration", self.calibration, "expected a CalibrationConfig")
        _check_coverage_args(self)

    @property
    def needs_calibration(self) -> bool:
        return self.method != "rtn"


# --------------------------------------------------------------------------- parsing model_args

_CALIB_KEYS = ("calib", "nsamples", "seqlen", "seed")
_COVERAGE_KEYS = ("moe_calibration", "allow_partial")


def _parse_calibration(args: dict, default_source: str, method: str, needs_calibration: bool,
                       default_seqlen: int = 2048) -> CalibrationConfig:
    given = [k for k in _CALIB_KEYS if k in args]
    if not needs_calibration:
        if given:
            raise CompressionConfigError(
                f"Invalid {', '.join(f'{k}={args[k]!r}' for k in given)} with method={method}: {method} uses no "
                f"calibration data. Remove {', '.join(given)}."
            )
        return CalibrationConfig(source=default_source)
    source = args.get("calib", default_source)
    if not isinstance(source, str):
        raise _err("calib", source, "expected 'c4', 'wikitext2', a .txt/.jsonl/.parquet file or a Hugging Face dataset id")
    return CalibrationConfig(
        source=source.strip(),
        nsamples=as_int("nsamples", args.get("nsamples", 128)),
        seqlen=as_int("seqlen", args.get("seqlen", default_seqlen)),
        seed=as_int("seed", args.get("seed", 0)),
    )


def _parse_coverage_args(args: dict, method: str, needs_calibration: bool) -> dict:
    out: dict[str, Any] = {}
    if "moe_calibration" in args:
        if not needs_calibration:
            raise CompressionConfigError(
                f"Invalid moe_calibration={args['moe_calibration']!r} with method={method}: {method} uses no "
                "calibration data, so there are no expert statistics. Remove moe_calibration.")
        value = args["moe_calibration"]
        out["moe_calibration"] = value.strip().lower() if isinstance(value, str) else value
    if "allow_partial" in args:
        out["allow_partial"] = as_bool("allow_partial", args["allow_partial"])
    return out


def _method(args: dict, allowed: tuple[str, ...], default: str | None) -> str:
    if "method" not in args:
        if default is None:
            raise CompressionConfigError(f"Missing method: give method=<one of {', '.join(allowed)}>.")
        return default
    method = args["method"]
    if not isinstance(method, str) or method.strip().lower() not in allowed:
        raise _err("method", method, f"allowed methods are {', '.join(allowed)}")
    return method.strip().lower()


def parse_prune_args(args: dict) -> tuple[PruneConfig, dict]:
    """Build a :class:`PruneConfig` from (possibly string) arguments; return it and the unused args.

    Keys: method (required), sparsity, sparsity_type, use_variant, calib, nsamples, seqlen, seed,
    blocksize, damp (the last two only for sparsegpt), moe_calibration, allow_partial.
    """
    args = dict(args)
    method = _method(args, PRUNE_METHODS, None)
    for key in ("blocksize", "damp"):
        if key in args and method != "sparsegpt":
            raise CompressionConfigError(f"Invalid {key}={args[key]!r} with method={method}: {key} is used only by method=sparsegpt.")
    for key in ("wbits", "groupsize", "act_order", "sym", "static_groups", "true_sequential"):
        if key in args:
            raise CompressionConfigError(f"Invalid {key}={args[key]!r} for pruning: {key} is a quantization argument (use kick-gptq / quantize()).")
    kwargs: dict[str, Any] = {"method": method}
    if "sparsity" in args:
        kwargs["sparsity"] = as_float("sparsity", args["sparsity"])
    if "sparsity_type" in args:
        kwargs["sparsity_type"] = str(args["sparsity_type"])
    if "use_variant" in args:
        kwargs["use_variant"] = as_bool("use_variant", args["use_variant"])
    if "blocksize" in args:
        kwargs["blocksize"] = as_int("blocksize", args["blocksize"])
    if "damp" in args:
        kwargs["damp"] = as_float("damp", args["damp"])
    kwargs["calibration"] = _parse_calibration(args, "c4", method, method != "magnitude")
    kwargs.update(_parse_coverage_args(args, method, method != "magnitude"))
    config = PruneConfig(**kwargs)
    consumed = {"method", "sparsity", "sparsity_type", "use_variant", "blocksize", "damp", *_CALIB_KEYS, *_COVERAGE_KEYS}
    return config, {k: v for k, v in args.items() if k not in consumed}


def parse_quant_args(args: dict) -> tuple[QuantConfig, dict]:
    """Build a :class:`QuantConfig` from (possibly string) arguments; return it and the unused args.

    Keys: method (default gptq), wbits, groupsize, act_order, sym, static_groups, true_sequential,
    damp, blocksize, calib, nsamples, seqlen, seed, moe_calibration, allow_partial.
    """
    args = dict(args)
    method = _method(args, QUANT_METHODS, "gptq")
    for key in ("sparsity", "sparsity_type", "use_variant"):
        if key in args:
            raise CompressionConfigError(f"Invalid {key}={args[key]!r} for quantization: {key} is a pruning argument (use kick-pruned / prune()).")
    if method == "rtn":
        for key in ("damp", "blocksize"):
            if key in args:
                raise CompressionConfigError(f"Invalid {key}={args[key]!r} with method=rtn: {key} is used only by method=gptq.")
    kwargs: dict[str, Any] = {"method": method}
    for key in ("wbits", "groupsize", "blocksize"):
        if key in args:
            kwargs[key] = as_int(key, args[key])
    for key in ("act_order", "sym", "static_groups", "true_sequential"):
        if key in args:
            kwargs[key] = as_bool(key, args[key])
    if "damp" in args:
        kwargs["damp"] = as_float("damp", args["damp"])
    kwargs["calibration"] = _parse_calibration(args, "wikitext2", method, method != "rtn")
    kwargs.update(_parse_coverage_args(args, method, method != "rtn"))
    config = QuantConfig(**kwargs)
    consumed = {"method", "wbits", "groupsize", "blocksize", "act_order", "sym", "static_groups", "true_sequential", "damp",
                *_CALIB_KEYS, *_COVERAGE_KEYS}
    return config, {k: v for k, v in args.items() if k not in consumed}


# --------------------------------------------------------------------------- compressed-tensors schemes

SCHEME_METHODS = ("rtn", "gptq", "awq")
AWQ_SCHEMES = ("W4A16", "W4A16_ASYM", "W8A16")  # the integer weight-only schemes llm-awq's search applies to
QUANTIZERS = ("scheme", "reference")  # awq / smoothquant: the scheme's arithmetic, or the reference code's own


@dataclass(frozen=True)
class SchemeConfig:
    """A compressed-tensors preset scheme (``FP8``, ``NVFP4``, ``W4A16`` ...; :mod:`kick_models.compress.schemes`)
    applied at load time: weights by ``method`` (rtn | gptq), input activations fake-quantized at run time."""

    scheme: str = "W4A16"
    method: str = "rtn"
    ignore: tuple[str, ...] = ("lm_head",)
    group_size: int | None = None  # explicit override of the scheme's group size (recorded)
    damp: float = 0.01  # gptq
    blocksize: int = 128  # gptq
    calibration: CalibrationConfig | None = None  # None: no calibration data given
    moe_calibration: str = "all"
    allow_partial: bool = False
    smoothquant: float | None = None  # SmoothQuant's alpha: smoothing before an activation-quantizing scheme
    quantizer: str = "scheme"  # awq / smoothquant: "reference" quantizes with llm-awq's / SmoothQuant's arithmetic
    duo_scaling: bool = False  # awq: llm-compressor's scale formula x^r / w^(1-r) instead of llm-awq's x^r

    def __post_init__(self) -> None:
        from kick_models.compress import schemes

        if not isinstance(self.scheme, str):
            raise _err("scheme", self.scheme, f"known schemes are {', '.join(schemes.SCHEMES)}")
        object.__setattr__(self, "scheme", self.scheme.strip().upper())
        if self.method not in SCHEME_METHODS:
            raise _err("method", self.method, f"kick-quant weight methods are {', '.join(SCHEME_METHODS)}")
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", tuple(p for p in self.ignore.replace("|", ",").split(",") if p))
        if not isinstance(self.ignore, (tuple, list)) or not all(isinstance(p, str) and p for p in self.ignore):
            raise _err("ignore", self.ignore, "expected module names / suffixes or re:<regex> patterns")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if self.group_size is not None:
            object.__setattr__(self, "group_size", as_int("group_size", self.group_size))
        scheme = self.quantization_scheme()  # unknown scheme / bad group_size refused here
        if self.method == "gptq" and scheme.weights is None:
            raise CompressionConfigError(
                f"Invalid method=gptq with scheme={self.scheme}: the scheme quantizes no weights, so GPTQ has "
                "nothing to do. Use method=rtn.")
        _check_scaling_transforms(self, scheme)
        damp = as_float("damp", self.damp)
        if not 0.0 < damp <= 1.0:
            raise _err("damp", self.damp, "expected a fraction in (0, 1], e.g. 0.01")
        object.__setattr__(self, "damp", damp)
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize <= 0:
            raise _err("blocksize", self.blocksize, "expected a positive integer")
        if self.needs_calibration and self.calibration is None:
            why = (f"method={self.method} needs calibration data" if self.method in ("gptq", "awq") else
                   "smoothquant needs activation maxima from calibration data" if self.smoothquant is not None else
                   f"scheme {self.scheme} has static input activation scales, calibrated on data")
            raise CompressionConfigError(
                f"Invalid scheme={self.scheme} method={self.method} without calibration data: {why}. Pass "
                "calibration=<c4 | wikitext2 | file | token ids> (calib=... in model_args).")
        if self.calibration is not None and not self.needs_calibration:
            raise CompressionConfigError(
                f"Invalid calibration with scheme={self.scheme} method={self.method}: it uses no calibration data "
                "(weights by round to nearest, activations dynamic). Remove the calibration.")
        if self.calibration is not None and not isinstance(self.calibration, CalibrationConfig):
            raise _err("calibration", self.calibration, "expected a CalibrationConfig")
        _check_coverage_args(self)

    def quantization_scheme(self):
        """compressed-tensors' ``QuantizationScheme`` (with the group_size override)."""
        from kick_models.compress import schemes

        return schemes.resolve_scheme(self.scheme, self.group_size)

    @property
    def needs_calibration(self) -> bool:
        from kick_models.compress import schemes

        return (self.method in ("gptq", "awq") or self.smoothquant is not None
                or schemes.has_static_activations(self.quantization_scheme()))

    def to_dict(self) -> dict:
        from kick_models.compress import schemes

        scheme = self.quantization_scheme()
        d = asdict(self)
        d["ignore"] = list(self.ignore)
        if self.method != "gptq":
            d["damp"] = d["blocksize"] = None
        if not self.needs_calibration:
            d["moe_calibration"] = None
        d["weights"] = schemes.describe_args(scheme.weights)
        d["input_activations"] = schemes.describe_args(scheme.input_activations)
        d["activation_format"] = schemes.activation_format(scheme.input_activations)
        if self.smoothquant is None:  # the transforms' keys only where they apply (other cache keys unchanged)
            d.pop("smoothquant")
        if self.method != "awq":
            d.pop("duo_scaling")
        if self.method != "awq" and self.smoothquant is None:
            d.pop("quantizer")
        return d


def _check_scaling_transforms(config: SchemeConfig, scheme) -> None:
    """AWQ only before the integer weight-only schemes; smoothquant's alpha in (0, 1] and only before a scheme
    that quantizes input activations; quantizer=reference only where a reference arithmetic exists."""
    if config.method == "awq" and config.scheme not in AWQ_SCHEMES:
        raise CompressionConfigError(
            f"Invalid method=awq with scheme={config.scheme}: kick runs AWQ as llm-awq does, an integer min-max scale "
            f"and clip search, so only before the integer weight-only schemes {', '.join(AWQ_SCHEMES)}. Use "
            "method=rtn or gptq with this scheme.")
    if config.smoothquant is not None:
        alpha = as_float("smoothquant", config.smoothquant)
        if not 0.0 < alpha <= 1.0:
            raise _err("smoothquant", config.smoothquant, "expected the migration strength alpha in (0, 1] (the "
                       "reference's default is 0.5; its published LLaMA runs use 0.8 - 0.9)")
        object.__setattr__(config, "smoothquant", alpha)
        if scheme.input_activations is None:
            raise CompressionConfigError(
                f"Invalid smoothquant={alpha} with scheme={config.scheme}: SmoothQuant moves activation outliers into "
                "the weights, which helps only a scheme that quantizes input activations (W8A8, FP8_DYNAMIC ...); "
                f"{config.scheme} is weight-only.")
        if config.method == "gptq":
            raise CompressionConfigError(
                "Invalid smoothquant with method=gptq: not supported yet (GPTQ propagates quantized activations, "
                "SmoothQuant calibrates on the dense model's). Use method=rtn.")
    if config.quantizer not in QUANTIZERS:
        raise _err("quantizer", config.quantizer, f"expected one of {', '.join(QUANTIZERS)}")
    if config.quantizer == "reference" and not (
            config.method == "awq" or (config.smoothquant is not None and config.scheme == "W8A8")):
        raise CompressionConfigError(
            f"Invalid quantizer=reference with scheme={config.scheme} method={config.method}: the reference "
            "arithmetic exists for method=awq (llm-awq) and for smoothquant=<alpha> with scheme=W8A8 (SmoothQuant's "
            "per-channel weights / per-token activations).")
    if not isinstance(config.duo_scaling, bool):
        raise _err("duo_scaling", config.duo_scaling, "expected a boolean")
    if config.duo_scaling and config.method != "awq":
        raise CompressionConfigError(f"Invalid duo_scaling=True with method={config.method}: an option of method=awq.")


def parse_scheme_args(args: dict) -> tuple[SchemeConfig, dict]:
    """Build a :class:`SchemeConfig` from (possibly string) model arguments; return it and the unused args.

    Keys: scheme (required), method (rtn | gptq | awq, default rtn), ignore (``|``-separated; default lm_head),
    group_size, damp / blocksize (gptq), smoothquant (alpha), quantizer (scheme | reference), duo_scaling (awq),
    calib / nsamples / seqlen / seed, moe_calibration, allow_partial.
    """
    from kick_models.compress import schemes

    args = dict(args)
    if "scheme" not in args:
        raise CompressionConfigError(f"Missing scheme: give scheme=<one of {', '.join(schemes.SCHEMES)}>.")
    method = _method(args, SCHEME_METHODS, "rtn")
    for key in ("wbits", "groupsize", "act_order", "sym", "static_groups", "sparsity", "sparsity_type", "use_variant"):
        if key in args:
            hint = " (use group_size= to override the scheme's group)" if key == "groupsize" else ""
            raise CompressionConfigError(
                f"Invalid {key}={args[key]!r} for kick-quant: the scheme fixes the format{hint}; {key} belongs to "
                "kick-gptq / kick-pruned.")
    if method in ("rtn", "awq"):
        for key in ("damp", "blocksize"):
            if key in args:
                raise CompressionConfigError(f"Invalid {key}={args[key]!r} with method={method}: {key} is used only by method=gptq.")
    kwargs: dict[str, Any] = {"scheme": args["scheme"], "method": method}
    if "smoothquant" in args:
        kwargs["smoothquant"] = as_float("smoothquant", args["smoothquant"])
    if "quantizer" in args:
        kwargs["quantizer"] = str(args["quantizer"]).strip().lower()
    if "duo_scaling" in args:
        kwargs["duo_scaling"] = as_bool("duo_scaling", args["duo_scaling"])
    if "ignore" in args:
        kwargs["ignore"] = str(args["ignore"])
    if "group_size" in args:
        kwargs["group_size"] = as_int("group_size", args["group_size"])
    for key in ("blocksize",):
        if key in args:
            kwargs[key] = as_int(key, args[key])
    if "damp" in args:
        kwargs["damp"] = as_float("damp", args["damp"])
    needs = method in ("gptq", "awq") or "smoothquant" in kwargs or schemes.has_static_activations(
        schemes.resolve_scheme(kwargs["scheme"], kwargs.get("group_size")))
    if needs:  # AWQ and SmoothQuant: the references' 512-token windows
        scaling = method == "awq" or "smoothquant" in kwargs
        kwargs["calibration"] = _parse_calibration(args, "c4", method, True, default_seqlen=512 if scaling else 2048)
    else:
        _parse_calibration(args, "c4", f"{method} with scheme={str(args['scheme']).upper()}", False)
    kwargs.update(_parse_coverage_args(args, method, needs))
    config = SchemeConfig(**kwargs)
    consumed = {"scheme", "method", "ignore", "group_size", "blocksize", "damp", "smoothquant", "quantizer", "duo_scaling",
                *_CALIB_KEYS, *_COVERAGE_KEYS}
    return config, {k: v for k, v in args.items() if k not in consumed}


def parser_for(model: str):
    """The argument parser of an lm-eval kick model class (``kick-quant``, ``kick-gptq`` / ``kick-rtn``,
    else ``kick-pruned``)."""
    if model == "kick-quant":
        return parse_scheme_args
    return parse_quant_args if model in ("kick-gptq", "kick-rtn") else parse_prune_args
