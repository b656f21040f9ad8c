"""compressed-tensors quantization schemes (the formats vLLM serves): the scheme quantizer kick uses.

compressed-tensors (the vLLM project's library that defines these formats) is the source of truth:

* schemes are its preset ``QuantizationScheme`` objects (:func:`resolve_scheme`);
* scales, zero points and NVFP4 global scales come from its ``calculate_qparams`` / ``generate_gparam``,
  fed the min / max statistics llm-compressor's observers take (``memoryless_minmax`` for weights,
  ``static_minmax`` for static activations: the same flattening per strategy, :func:`observe`);
* weights and activations are fake-quantized by its ``fake_quantize`` / ``forward_quantize``, with the
  scales cast to the dtypes its ``initialize_module_for_quantization`` gives the checkpoint's parameters.

So a kick-quantized weight is bit-identical to the dequantized weight of the compressed-tensors checkpoint
llm-compressor writes for the same scheme (tests/test_quant_schemes.py checks every scheme).

Public pieces (used by the weight methods: RTN here, GPTQ, and AWQ / SmoothQuant built on them):

* :func:`weight_qparams` / :func:`quantize_weight`: one weight per the scheme's weight args;
* :func:`fused_global_scale`: NVFP4's global scale shared by a fused set (q/k/v, gate/up);
* :class:`ActivationObserver` + :func:`attach_input_quantization`: static activation calibration and the
  run-time input fake-quantization hook (dynamic per token / per group, or static scales);
* :func:`weight_bits_per_weight`: storage bits per weight incl. scales, zero points and global scales.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from kick_models.compress.errors import CompressionConfigError

#: The preset schemes kick-quant offers (compressed-tensors' names).
SCHEMES = ("FP8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4", "NVFP4A16", "MXFP4", "MXFP4A16",
           "W8A8", "W8A16", "W4A16", "W4A16_ASYM")

#: Fused sets whose NVFP4 weight global scale is shared (as llm-compressor's ``FUSED_LAYER_NAMES``).
FUSED_LAYER_NAMES = (("gate_proj", "up_proj"), ("q_proj", "k_proj", "v_proj"), ("q_a_proj", "kv_a_proj_with_mqa"),
                     ("w1", "w3"))


def _ct():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise ImportError("kick-quant needs compressed-tensors: pip install 'kick-eval[quant]' "
                          "(or pip install compressed-tensors)") from None
    from compressed_tensors import quantization

    return quantization


# ------------------------------------------------------------------------------------------ schemes

def resolve_scheme(name: str, group_size: int | None = None):
    """compressed-tensors' preset ``QuantizationScheme`` for ``name`` (targets ``Linear``); ``group_size``
    overrides the group of grouped weight (and grouped activation) args."""
    q = _ct()
    if not isinstance(name, str) or name.strip().upper() not in SCHEMES:
        raise CompressionConfigError(f"Unknown scheme={name!r}: known schemes are {', '.join(SCHEMES)}.")
    scheme = q.preset_name_to_scheme(name.strip().upper(), ["Linear"])
    if group_size is not None:
        if scheme.weights is None or scheme.weights.strategy not in ("group", "tensor_group"):
            raise CompressionConfigError(
                f"Invalid group_size={group_size} with scheme={name}: its weights are not quantized in groups "
                f"(strategy {getattr(scheme.weights, 'strategy', None)}).")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise CompressionConfigError(f"Invalid group_size={group_size!r}: expected a positive integer.")
        updates = {"weights": scheme.weights.model_copy(update={"group_size": group_size})}
        acts = scheme.input_activations
        if acts is not None and acts.strategy in ("group", "tensor_group") and acts.group_size == scheme.weights.group_size:
            updates["input_activations"] = acts.model_copy(update={"group_size": group_size})
        scheme = scheme.model_copy(update=updates)
    return scheme


def describe_args(args) -> dict | None:
    """JSON-safe record of a ``QuantizationArgs`` (for the results)."""
    if args is None:
        return None
    d = args.model_dump()
    return {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in d.items() if v is not None}


def has_static_activations(scheme) -> bool:
    """Input activations with a calibrated part (static scales, or NVFP4's static global scale)."""
    acts = scheme.input_activations
    return acts is not None and acts.dynamic is not True


def check_weight_shape(args, shape: tuple[int, ...], name: str) -> None:
    """Refuse a weight the scheme cannot quantize exactly (as llm-compressor's group-size validation)."""
    columns = shape[-1]  # rows need no check: a short last row block is padded, as compressed-tensors does
    if args.strategy in ("group", "tensor_group") and columns % args.group_size:
        raise CompressionConfigError(
            f"{name}: input width {columns} is not a multiple of the scheme's group size {args.group_size} "
            f"(llm-compressor refuses it too). Pass group_size=<a divisor of {columns}> (recorded in the results), "
            f"or ignore the layer (ignore=...).")
    if args.strategy == "block":
        block_cols = args.block_structure[1]
        if columns % block_cols:
            raise CompressionConfigError(
                f"{name}: input width {columns} is not a multiple of the block width {block_cols} of "
                f"block_structure {args.block_structure}; ignore the layer (ignore=...) or use another scheme.")


# ------------------------------------------------------------------------------------------ observers

def flatten_for_observation(value: torch.Tensor, args, base_name: str) -> torch.Tensor:
    """``(observations, *qparam_shape, group)``: llm-compressor's ``flatten_for_calibration``."""
    s = args.strategy
    if base_name == "weight":
        if s == "tensor":
            return value.reshape((1, 1, -1))
        if s == "channel":
            return value.unsqueeze(-2).unsqueeze(0)
        if s in ("group", "tensor_group"):
            return value.unflatten(-1, (-1, args.group_size)).unsqueeze(0)
        if s == "block":
            from compressed_tensors.quantization.utils import (
                maybe_pad_tensor_for_block_quant,
            )

            bh, bw = args.block_structure
            value = maybe_pad_tensor_for_block_quant(value, args.block_structure)
            rows, cols = value.shape
            return value.reshape(rows // bh, bh, cols // bw, bw).transpose(1, 2).flatten(-2, -1).unsqueeze(0)
        raise CompressionConfigError(f"weight strategy {s} is not supported")
    if s == "tensor":
        return value.reshape((-1, 1, value.size(-1)))
    if s == "token":
        return value
    if s in ("group", "tensor_group"):
        return value.flatten(0, -2).unflatten(-1, (-1, args.group_size))
    raise CompressionConfigError(f"activation strategy {s} is not supported")


def observe(value: torch.Tensor, args, base_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` per quantization parameter (llm-compressor's min-max observers' statistic)."""
    flat = flatten_for_observation(value, args, base_name)
    return torch.amin(flat, dim=(0, -1)), torch.amax(flat, dim=(0, -1))


def global_scale_from(stats: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """NVFP4 global scale from the min/max statistics of one tensor or a fused set (llm-compressor's
    ``Observer.get_global_scale``: the absmax over all of them through compressed-tensors' ``generate_gparam``)."""
    from compressed_tensors.quantization.utils import generate_gparam

    absmax = stats[0][1].max()
    for lo, hi in stats:
        absmax = torch.max(absmax, -lo.min())
        absmax = torch.max(absmax, hi.max())
    return generate_gparam(-absmax.reshape(1), absmax.reshape(1))


def fused_partners(name: str) -> tuple[str, ...]:
    """Names of the Linears sharing ``name``'s NVFP4 global scale (itself included), by the last name part."""
    head, _, last = name.rpartition(".")
    for group in FUSED_LAYER_NAMES:
        if last in group:
            return tuple(f"{head}.{n}" if head else n for n in group)
    return (name,)


def fused_global_scale(weights: list[torch.Tensor], args) -> torch.Tensor | None:
    """The global scale a fused set of weights shares (None unless the strategy is TENSOR_GROUP)."""
    if args.strategy != "tensor_group":
        return None
    return global_scale_from([observe(w, args, "weight") for w in weights])


# ------------------------------------------------------------------------------------------ weights

def _param_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype compressed-tensors gives a scale parameter observed in ``dtype``."""
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float16


def qparams_from_stats(lo: torch.Tensor, hi: torch.Tensor, args, dtype: torch.dtype,
                       global_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"scale", "zero_point"[, "global_scale"]}`` as a compressed-tensors checkpoint stores them."""
    from compressed_tensors.quantization.utils import calculate_qparams

    scale, zero_point = calculate_qparams(lo, hi, args, global_scale=global_scale)
    out = {"scale": scale.to(_param_dtype(dtype)), "zero_point": zero_point.to(args.zp_dtype)}
    if global_scale is not None:
        out["global_scale"] = global_scale.to(torch.float32)
    return out


def weight_qparams(weight: torch.Tensor, args, global_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Scale / zero point (and the global scale: given for a fused set, else this weight's own) of ``weight``."""
    lo, hi = observe(weight, args, "weight")
    if args.strategy == "tensor_group" and global_scale is None:
        global_scale = global_scale_from([(lo, hi)])
    return qparams_from_stats(lo, hi, args, weight.dtype, global_scale)


def fake_quantize(value: torch.Tensor, qparams: dict[str, torch.Tensor], args) -> torch.Tensor:
    """compressed-tensors' quantize-dequantize of ``value`` with the given parameters."""
    from compressed_tensors.quantization.lifecycle.forward import (
        fake_quantize as ct_fake_quantize,
    )

    return ct_fake_quantize(value, qparams["scale"], qparams["zero_point"], args,
                            global_scale=qparams.get("global_scale"))


def quantize_weight(weight: torch.Tensor, args, global_scale: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(fake-quantized weight, qparams)`` for ``weight`` (in its own dtype) per the scheme's weight args."""
    qparams = weight_qparams(weight, args, global_scale)
    return fake_quantize(weight, qparams, args), qparams


def column_quantizer(qparams: dict[str, torch.Tensor], args):
    """``(w, j) -> column j of the weight quantize-dequantized`` on the grid ``qparams`` fixes (for GPTQ's column
    loop), as llm-compressor's GPTQ quantizes one column: compressed-tensors' ``fake_quantize`` with the column's
    group parameters applied channel-wise."""
    from compressed_tensors.quantization.lifecycle.forward import (
        fake_quantize as ct_fake_quantize,
    )

    scale, zp, gs = qparams["scale"], qparams["zero_point"], qparams.get("global_scale")
    s = args.strategy
    if s in ("group", "tensor_group"):
        per_column = args.model_copy(update={"strategy": "channel"})
        size = args.group_size
        return lambda w, j: ct_fake_quantize(w, scale[:, j // size], zp[:, j // size], per_column, global_scale=gs)
    if s == "channel":
        return lambda w, j: ct_fake_quantize(w, scale[:, 0], zp[:, 0], args, global_scale=gs)
    if s == "tensor":
        return lambda w, j: ct_fake_quantize(w, scale, zp, args, global_scale=gs)
    if s == "block":
        width = args.block_structure[1]
        return lambda w, j: ct_fake_quantize(w.unsqueeze(1), scale[:, j // width:j // width + 1],
                                             zp[:, j // width:j // width + 1], args, global_scale=gs).squeeze(1)
    raise CompressionConfigError(f"GPTQ does not support weight strategy {s}")


def _dtype_bits(dtype: Any) -> int:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    return torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits


def weight_bits_per_weight(args, rows: int, columns: int, weight_dtype: torch.dtype) -> float:
    """Storage bits per weight in a compressed-tensors checkpoint: the value bits, plus every scale (in the
    scheme's ``scale_dtype``: FP8 E4M3 for NVFP4, E8M0 for MX; else the model dtype), every stored zero point
    (asymmetric only, at the value's bit width as it is packed) and the fp32 global scale (NVFP4)."""
    n = rows * columns
    s = args.strategy
    if s == "tensor":
        n_scales = 1
    elif s == "channel":
        n_scales = rows
    elif s in ("group", "tensor_group"):
        n_scales = rows * (-(-columns // args.group_size))
    elif s == "block":
        bh, bw = args.block_structure
        n_scales = (-(-rows // bh)) * (-(-columns // bw))
    else:  # pragma: no cover - validated earlier
        raise ValueError(s)
    scale_bits = 8 if args.scale_dtype is not None and _dtype_bits(args.scale_dtype) == 8 else _dtype_bits(
        _param_dtype(weight_dtype))
    bits = args.num_bits * n + scale_bits * n_scales
    if not args.symmetric:
        bits += args.num_bits * n_scales
    if s == "tensor_group":
        bits += 32
    return bits / n


def activation_format(args) -> str | None:
    """Short description of the input activation quantization, for the results."""
    if args is None:
        return None
    kind = f"{args.type}{args.num_bits}"
    how = "dynamic" if args.dynamic is True else ("dynamic local scales, static global scale"
                                                  if args.dynamic == "local" else "static")
    group = f" groups of {args.group_size}" if args.strategy in ("group", "tensor_group") else ""
    return f"{kind} per {args.strategy}{group} ({how})"


# ------------------------------------------------------------------------------------------ activations

class ActivationObserver:
    """Static activation statistic: running min / max over every calibration batch (llm-compressor's
    ``static_minmax`` observer, which its presets use for static input activations)."""

    def __init__(self, args) -> None:
        self.args = args
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        lo, hi = observe(x, self.args, "input")
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.min(lo, self.lo), torch.max(hi, self.hi)

    def qparams(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """What the checkpoint stores: ``global_scale`` only (NVFP4: local scales are dynamic), else scale / zp."""
        if self.lo is None:
            raise RuntimeError("no calibration input was observed")
        global_scale = global_scale_from([(self.lo, self.hi)]) if self.args.strategy == "tensor_group" else None
        if self.args.dynamic == "local":
            return {"global_scale": global_scale}
        return qparams_from_stats(self.lo, self.hi, self.args, dtype, global_scale)


INPUT_HOOK_ATTR = "_kick_input_quant_hook"


def attach_input_quantization(module: nn.Module, args, qparams: dict[str, torch.Tensor] | None = None) -> None:
    """Fake-quantize ``module``'s input on every forward exactly as compressed-tensors' quantized forward does
    (``forward_quantize``: dynamic scales computed per call, or the calibrated static ``qparams``)."""
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    detach_input_quantization(module)
    module.quantization_status = QuantizationStatus.FROZEN
    for key, value in (qparams or {}).items():
        setattr(module, f"input_{key}", value)  # plain attributes: never part of the state dict

    def hook(mod: nn.Module, inputs: tuple) -> tuple:
        x = inputs[0]
        for key in (qparams or {}):
            value = getattr(mod, f"input_{key}")
            if value.device != x.device:
                setattr(mod, f"input_{key}", value.to(x.device))
        return (forward_quantize(mod, x, "input", args), *inputs[1:])

    setattr(module, INPUT_HOOK_ATTR, module.register_forward_pre_hook(hook))


def detach_input_quantization(module: nn.Module) -> None:
    handle = getattr(module, INPUT_HOOK_ATTR, None)
    if handle is not None:
        handle.remove()
        delattr(module, INPUT_HOOK_ATTR)


# ------------------------------------------------------------------------------------------ ignore

def is_ignored(name: str, ignore: tuple[str, ...]) -> bool:
    """compressed-tensors' matching: ``re:<regex>`` (``re.match`` on the full module name) or a name / name
    suffix (``lm_head``, ``mlp.down_proj``, ``model.layers.0.self_attn.q_proj``)."""
    for pattern in ignore:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False
