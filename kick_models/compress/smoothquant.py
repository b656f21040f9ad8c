"""SmoothQuant (Xiao et al., ICML 2023), as mit-han-lab/smoothquant computes it.

Per decoder block, on the DENSE model's activations (the reference collects every maximum in one pass over the
unchanged model before it smooths anything):

1. ``collect``: per input channel, ``max |x|`` over every calibration token entering the Linears after each norm
   (``calibration.get_act_scales``: float32 running maximum).
2. ``smooth_scales`` (``smooth.smooth_ln_fcs_llama_like``): ``s = max|X| ** alpha / max|W| ** (1 - alpha)``, with
   ``max|W|`` per input column over all Linears fed by the norm, clamped at 1e-5, ``s`` clamped at 1e-5.
3. Fold: norm weight / s (and bias), the Linears' input columns * s. Only the two norms (before q/k/v and before
   gate/up) are smoothed, as the reference does for LLaMA-like models; o_proj and down_proj are not.

The reference quantizer (``fake_quant.py``: weights per output channel absmax / 127, activations per token
absmax / 127, both round-to-nearest without clamping) is here as :func:`quantize_weight_per_channel_absmax` and
:func:`quantize_activation_per_token_absmax`; kick's default is the scheme's own arithmetic.

``alpha``: the reference's default is 0.5; its published LLaMA runs use 0.8 - 0.9 (e.g. Llama-2 0.85).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from kick_models.compress.base import LayerStats
from kick_models.compress.nm import count_zeros
from kick_models.compress.scaling import BlockMappings, fold, run_dense_block


@torch.no_grad()
def smooth_scales(act_max: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    """``max|X|^alpha / max|W|^(1-alpha)`` per input channel (the reference's arithmetic, in the weights' dtype)."""
    device, dtype = linears[0].weight.device, linears[0].weight.dtype
    act_max = act_max.to(device=device, dtype=dtype)
    weight_max = torch.cat([fc.weight.abs().max(dim=0, keepdim=True)[0] for fc in linears], dim=0)
    weight_max = weight_max.max(dim=0)[0].clamp(min=1e-5)
    return (act_max.pow(alpha) / weight_max.pow(1 - alpha)).clamp(min=1e-5).to(device).to(dtype)


@torch.no_grad()
def quantize_weight_per_channel_absmax(w: torch.Tensor, n_bits: int = 8) -> torch.Tensor:
    """The reference's weight fake-quantization (in place, as ``fake_quant.quantize_weight_per_channel_absmax``)."""
    scales = w.abs().max(dim=-1, keepdim=True)[0]
    scales.clamp_(min=1e-5).div_(2 ** (n_bits - 1) - 1)
    return w.div_(scales).round_().mul_(scales)


@torch.no_grad()
def quantize_activation_per_token_absmax(t: torch.Tensor, n_bits: int = 8) -> torch.Tensor:
    """The reference's activation fake-quantization, in place like the reference (so Linears sharing one input,
    q/k/v or gate/up, each re-quantize the tensor the previous one quantized, as ``W8A8Linear`` does)."""
    scales = t.abs().max(dim=-1, keepdim=True)[0]
    scales.clamp_(min=1e-5).div_(2 ** (n_bits - 1) - 1)
    return t.div_(scales).round_().mul_(scales)


REFERENCE_HOOK_ATTR = "_kick_reference_w8a8_hook"


def attach_reference_activation_quantization(linear: nn.Linear, n_bits: int = 8) -> None:
    """Quantize ``linear``'s inputs at run time as the reference's ``W8A8Linear`` does (per token, in place)."""
    old = getattr(linear, REFERENCE_HOOK_ATTR, None)
    if old is not None:
        old.remove()
    setattr(linear, REFERENCE_HOOK_ATTR, linear.register_forward_pre_hook(
        lambda mod, args: (quantize_activation_per_token_absmax(args[0], n_bits), *args[1:])))


def install_reference_w8a8(linear: nn.Linear, n_bits: int = 8) -> None:
    """The reference's ``W8A8Linear.from_float`` in place: per-channel weights now, per-token inputs at run time."""
    quantize_weight_per_channel_absmax(linear.weight.data, n_bits)
    attach_reference_activation_quantization(linear, n_bits)


class ReferenceW8A8Weights:
    """Per-target final weight quantizer with SmoothQuant's arithmetic (``quantizer=reference``, scheme W8A8):
    per output channel absmax / 127, round, no clamp. ``quant_params``: ``weight_scale`` ``[rows, 1]``."""

    needs_calibration = False

    def __init__(self, target: nn.Module, bits_per_weight) -> None:
        self.target, self.bits_per_weight = target, bits_per_weight

    def add_batch(self, inp: torch.Tensor) -> None:  # pragma: no cover - never called (no calibration)
        raise RuntimeError("the final quantizer uses no calibration data")

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        w = self.target.weight.data
        scale = w.abs().max(dim=-1, keepdim=True)[0].clamp(min=1e-5) / 127
        quantize_weight_per_channel_absmax(w)
        rows, columns = w.shape
        return LayerStats(numel=w.numel(), zeros=count_zeros(w), seconds=time.perf_counter() - start,
                          bits_per_weight=self.bits_per_weight(rows, columns),
                          quant_params={"weight_scale": scale.float().cpu()})

    def free(self) -> None:
        pass


@dataclass
class SmoothResult:
    scales: dict[tuple[str, tuple[str, ...]], torch.Tensor] = field(default_factory=dict)
    act_max: dict[str, torch.Tensor] = field(default_factory=dict)


class SmoothQuant:
    """SmoothQuant for one decoder block: ``collect`` -> ``smooth`` -> ``free`` (:meth:`run` does all)."""

    def __init__(self, block: nn.Module, mappings: BlockMappings, alpha: float) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"smoothquant alpha must be in (0, 1], got {alpha}")
        self.block, self.alpha = block, alpha
        self.mappings = BlockMappings(mappings.norm_mappings(), mappings.skipped)
        self.act_max: dict[str, torch.Tensor] = {}

    def add_batch(self, name: str, x: torch.Tensor) -> None:
        incoming = x.reshape(-1, x.shape[-1]).abs().detach().max(dim=0)[0].float().cpu()
        self.act_max[name] = incoming if name not in self.act_max else torch.max(self.act_max[name], incoming)

    def collect(self, inps, calls) -> list[torch.Tensor]:
        """Per-channel maxima of each norm's output (seen by its first Linear); returns the dense outputs."""
        firsts = [m.linears[0] for m in self.mappings.mappings]
        return run_dense_block(self.block, inps, calls, self.mappings, firsts, self.add_batch)

    def smooth(self) -> dict[tuple[str, tuple[str, ...]], torch.Tensor]:
        scales = {}
        for m in self.mappings.mappings:
            s = smooth_scales(self.act_max[m.linears[0]], [self.block.get_submodule(n) for n in m.linears], self.alpha)
            fold(self.block, m, s)
            scales[(m.prev, m.linears)] = s.cpu()
        return scales

    def free(self) -> None:
        self.act_max = {}

    def run(self, inps, calls) -> tuple[list[torch.Tensor], SmoothResult]:
        try:
            outs = self.collect(inps, calls)
            act_max = dict(self.act_max)
            return outs, SmoothResult(self.smooth(), act_max)
        finally:
            self.free()
