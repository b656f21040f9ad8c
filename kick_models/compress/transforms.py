"""Block transforms for the sequential driver: AWQ and SmoothQuant, each as ``fn(layer, inps, calls, prefix,
target_names) -> (dense_outputs, record)`` (see :func:`kick_models.compress.sequential.compress_layers`).

The record (JSON-safe) says what the transform did to the block: which scales were folded where, which
Linears were clipped, what was skipped and why, and ``params``: the parameters it changed besides the
compressed matrices (the norms' weights and biases), which the cache and the export must carry too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from kick_models.compress.awq import AWQ, AWQSettings
from kick_models.compress.config import CompressionConfigError
from kick_models.compress.scaling import BlockMappings, block_mappings
from kick_models.compress.smoothquant import SmoothQuant

logger = logging.getLogger(__name__)


class NoFoldableMapping(CompressionConfigError):
    """A block offers no operation to fold scales into (AWQ / SmoothQuant cannot work on it)."""


def checked_mappings(layer: nn.Module, prefix: str, method: str, norms_only: bool = False,
                     log: bool = True) -> BlockMappings:
    """The block's mappings; refused (:class:`NoFoldableMapping`) if none is usable, what is skipped logged."""
    mappings = block_mappings(layer)
    if norms_only and mappings.norm_mappings():  # SmoothQuant: no Linear -> Linear fold, whatever the shapes
        mappings = BlockMappings(mappings.norm_mappings(), tuple(
            [(n, w) for n, w in mappings.skipped if n != "self_attn.o_proj"]
            + [(", ".join(m.linears), f"{method} smooths only the Linears after a norm (as its reference)")
               for m in mappings.mappings if m.kind == "linear"]
            + ([("self_attn.o_proj", f"{method} smooths only the Linears after a norm (as its reference)")]
               if any(n == "self_attn.o_proj" for n, _ in mappings.skipped) else [])))
    usable = mappings.norm_mappings() if norms_only else mappings.mappings
    if not usable:
        reasons = "; ".join(f"{names}: {why}" for names, why in mappings.skipped)
        raise NoFoldableMapping(f"{method}: {prefix} ({type(layer).__name__}) has no norm or Linear that kick can fold "
                                f"scales into ({reasons}). {method} supports decoder blocks in the LLaMA layout "
                                "(LLaMA, Mistral, Qwen 2/3, Gemma 2/3); use method=gptq or rtn for this model.")
    for names, why in mappings.skipped if log else ():  # as the reference does: info; a layout kick lacks: warning
        logger.log(logging.WARNING if "MoE" in why else logging.INFO, "%s: %s.%s not scaled: %s", method, prefix, names, why)
    return mappings


def _norm_params(layer: nn.Module, prefix: str, mappings) -> list[str]:
    out = []
    for m in mappings:
        if m.kind == "norm":
            norm = layer.get_submodule(m.prev)
            out += [f"{prefix}.{m.prev}.{p}" for p, _ in norm.named_parameters()]
    return out


def _record(method: str, prefix: str, layer: nn.Module, mappings, scales: dict, skipped, **extra: Any) -> dict:
    return {"method": method, "block": prefix,
            "scaled": [{"prev": prev, "linears": list(linears), "min": float(s.min()), "max": float(s.max())}
                       for (prev, linears), s in scales.items()],
            "skipped": [[names, why] for names, why in skipped],
            "params": _norm_params(layer, prefix, mappings), **extra}


def awq_transform(settings: AWQSettings) -> Callable:
    def run(layer: nn.Module, inps, calls, prefix: str, target_names: list[str]):
        mappings = checked_mappings(layer, prefix, "AWQ")
        outs, result = AWQ(layer, mappings, settings, linears=target_names).run(inps, calls)
        return outs, _record("awq", prefix, layer, mappings.mappings, result.scales, result.skipped,
                             clipped=sorted(result.clips))
    return run


def smoothquant_transform(alpha: float) -> Callable:
    def run(layer: nn.Module, inps, calls, prefix: str, target_names: list[str]):
        mappings = checked_mappings(layer, prefix, "SmoothQuant", norms_only=True)
        sq = SmoothQuant(layer, mappings, alpha)
        outs, result = sq.run(inps, calls)
        return outs, _record("smoothquant", prefix, layer, sq.mappings.mappings, result.scales, mappings.skipped,
                             alpha=alpha)
    return run


# --------------------------------------------------------------------------- kick-quant (SchemeConfig) wiring


def awq_settings(config) -> AWQSettings:
    """AWQ's search settings from the scheme's weight args (bits, group or channel, symmetry)."""
    args = config.quantization_scheme().weights
    group = args.group_size if args.strategy == "group" else -1
    return AWQSettings(bits=args.num_bits, group_size=group, symmetric=args.symmetric,
                       duo_scaling=config.duo_scaling)


def scheme_block_transform(model: nn.Module, config) -> Callable | None:
    """The block transform a kick-quant config asks for (method=awq, smoothquant=<alpha>), or None; every block's
    structure is checked first, so an unsupported layout is refused before any calibration work."""
    if config.method != "awq" and config.smoothquant is None:
        return None
    from kick_models.compress.sequential import find_decoder_layers

    method = "AWQ" if config.method == "awq" else "SmoothQuant"
    path, layers = find_decoder_layers(model)
    for i, layer in enumerate(layers):
        checked_mappings(layer, f"{path}.{i}", method, norms_only=method == "SmoothQuant", log=False)
    return awq_transform(awq_settings(config)) if config.method == "awq" else smoothquant_transform(config.smoothquant)


def reference_compressor_factory(config) -> Callable | None:
    """``quantizer=reference``: per-target quantizers with the reference code's arithmetic (None otherwise)."""
    if config.quantizer != "reference":
        return None
    from kick_models.compress import schemes
    from kick_models.compress.awq import ReferenceQuantizer
    from kick_models.compress.smoothquant import ReferenceW8A8Weights

    args = config.quantization_scheme().weights

    def bits(target):
        return lambda rows, columns: schemes.weight_bits_per_weight(args, rows, columns, target.weight.dtype)
    if config.method == "awq":
        settings = awq_settings(config)
        return lambda target: ReferenceQuantizer(target, settings, bits(target))
    return lambda target: ReferenceW8A8Weights(target, bits(target))


def attach_reference_runtime(model: nn.Module, config, layers: list) -> bool:
    """``quantizer=reference`` with smoothquant: the reference's per-token activation quantization on every
    quantized Linear (instead of the scheme's). Returns whether it applies."""
    if config.quantizer != "reference" or config.smoothquant is None:
        return False
    from kick_models.compress.smoothquant import (
        attach_reference_activation_quantization,
    )

    for stats in layers:
        attach_reference_activation_quantization(model.get_submodule(stats.name))
    return True
