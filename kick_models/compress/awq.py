"""AWQ, activation-aware weight quantization (Lin et al., MLSys 2024), as mit-han-lab/llm-awq computes it.

Per decoder block, on the DENSE model's activations (the reference computes the next block's input before it
scales or clips anything):

1. ``collect``: one forward pass of the dense block per calibration batch, keeping the inputs of every Linear a
   mapping names (:mod:`.scaling`); its outputs are the next block's inputs.
2. ``search_scales`` (``auto_scale.py``): per mapping, ``x_mean = mean |x|`` per input channel; for ratio
   ``i / 20``, ``i = 0..19``: ``s = x_mean ** ratio`` clamped at 1e-4, divided by ``sqrt(max(s) * min(s))``;
   quantize-dequantize ``W * s`` and divide by ``s``; the loss is the mean squared difference of the inspected
   module's output (self_attn with the layer's keyword arguments, the mlp, or the single Linear); the best ratio's
   scales win. All searches see the unchanged block; then every scale is folded (norm -> q/k/v, v -> o,
   norm -> gate/up, up -> down) and the kept inputs divided by their scales.
3. ``search_clips`` (``auto_clip.py``): for every Linear whose name contains none of q_, k_, query, key, Wqkv, per
   output row and input group: shrink the max |w| by ``1 - i / 20`` for ``i = 0..9``, quantize the clamped weight
   and keep the shrink with the smallest mean squared error of ``(x * w).sum`` over sampled tokens (every
   ``n_tokens // 512``-th). Then clamp.
4. Quantization is the caller's (the reference quantizes after all blocks, which is the same thing since the next
   block's inputs come from the dense block): :func:`pseudo_quantize` is the reference's arithmetic.

The search always quantizes with the reference's arithmetic (:func:`pseudo_quantize`), so scales and clip values
are the reference's whatever final quantizer is used.

Where kick differs, only where the reference cannot run: fewer than 512 tokens (reference: slice step 0),
output widths not divisible by 64 (reference: assertion), per-channel groups (reference: assertion in the clip
search) and symmetric schemes (the reference's symmetric branch is unreachable: ``assert min_val is None``
raises; kick uses its evident intent, absmax / (2^(b-1) - 1)).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from kick_models.compress.base import LayerStats
from kick_models.compress.nm import count_zeros
from kick_models.compress.scaling import BlockMappings, fold, run_dense_block

logger = logging.getLogger(__name__)

N_GRID = 20
MAX_SHRINK = 0.5
N_SAMPLE_TOKEN = 512
CLIP_SKIP = ("q_", "k_", "query", "key", "Wqkv")  # "due to qk bmm, it is hard to clip precisely"


@dataclass(frozen=True)
class AWQSettings:
    bits: int = 4
    group_size: int = 128   # -1: one group per output row
    symmetric: bool = False  # the reference: zero point on
    clip: bool = True
    duo_scaling: bool = False  # llm-compressor's option: s = x_mean^r / (w_mean^(1-r) + 1e-4)


@torch.no_grad()
def pseudo_quantize(w: torch.Tensor, bits: int, group_size: int, symmetric: bool = False,
                    with_params: bool = False):
    """Quantize-dequantize with llm-awq's arithmetic (``quantizer.pseudo_quantize_tensor``); ``with_params``:
    also the per-group ``scales`` and unsigned ``zeros`` (symmetric: ``2^(b-1)``), each ``[n_groups_total]``."""
    shape = w.shape
    w = w.reshape(-1, group_size if group_size > 0 else shape[-1])
    if not symmetric:
        max_val = w.amax(dim=1, keepdim=True)
        min_val = w.amin(dim=1, keepdim=True)
        max_int, min_int = 2 ** bits - 1, 0
        scales = (max_val - min_val).clamp(min=1e-5) / max_int
        zeros = (-torch.round(min_val / scales)).clamp_(min_int, max_int)
    else:
        max_val = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5)
        max_int, min_int = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
        scales = max_val / max_int
        zeros = 0
    q = ((torch.clamp(torch.round(w / scales) + zeros, min_int, max_int) - zeros) * scales).reshape(shape)
    if not with_params:
        return q
    unsigned_zeros = zeros if not symmetric else torch.full_like(scales, 2 ** (bits - 1))
    return q, scales.flatten(), unsigned_zeros.flatten()


def _group_weight_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """llm-compressor's ``w_mean``: |W| normalized by each group's max, averaged over output rows."""
    w = torch.cat(weights, dim=0)
    shape = w.shape
    w = w.reshape(-1, group_size if group_size > 0 else shape[-1])
    w = (w.abs() / (w.abs().amax(dim=1, keepdim=True) + 1e-6)).reshape(shape)
    return w.mean(0)


def _call(module: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = module(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def search_scale(inspect: nn.Module, linears: list[nn.Linear], xs: list[torch.Tensor], kwargs: list[dict],
                 settings: AWQSettings) -> torch.Tensor:
    """Best per-channel scales for ``linears`` (llm-awq ``_search_module_scale``); ``xs`` one input per batch."""
    org_out = torch.cat([_call(inspect, x, kw) for x, kw in zip(xs, kwargs)])
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    x_max = x.abs().view(-1, x.shape[-1]).mean(0)
    w_mean = _group_weight_mean([fc.weight for fc in linears], settings.group_size) if settings.duo_scaling else None
    originals = [fc.weight.data.clone() for fc in linears]
    best_error, best_scales, history = float("inf"), None, []
    for i in range(N_GRID):
        ratio = i * 1 / N_GRID
        if w_mean is None:
            scales = x_max.pow(ratio).clamp(min=1e-4).view(-1)
        else:
            scales = (x_max.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4).view(-1)
        scales = scales / (scales.max() * scales.min()).sqrt()
        for fc in linears:
            fc.weight.mul_(scales.view(1, -1).to(fc.weight.device))
            fc.weight.data = pseudo_quantize(fc.weight.data, settings.bits, settings.group_size,
                                             settings.symmetric) / scales.view(1, -1)
        out = torch.cat([_call(inspect, x_, kw) for x_, kw in zip(xs, kwargs)])
        loss = (org_out - out).float().pow(2).mean().item()
        history.append(loss)
        if loss < best_error:
            best_error, best_scales = loss, scales
        for fc, w in zip(linears, originals):
            fc.weight.data = w.clone()
    if best_scales is None or torch.isnan(best_scales).any():
        raise FloatingPointError(f"AWQ scale search found no finite loss: {history}")
    return best_scales.view(-1).detach()


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, settings: AWQSettings) -> torch.Tensor:
    """Best clipping max per output row and input group, ``[rows, n_groups, 1]`` (llm-awq ``auto_clip_layer``)."""
    group_size = settings.group_size if settings.group_size > 0 else w.shape[1]
    x = x.view(-1, x.shape[-1])
    x = x.reshape(1, x.shape[0], -1, group_size)
    x = x[:, 0::max(1, x.shape[1] // N_SAMPLE_TOKEN)]
    w = w.reshape(w.shape[0], 1, -1, group_size)
    oc_batch = 256 if w.shape[0] % 256 == 0 else 64
    best_all = []
    for start in range(0, w.shape[0], oc_batch):
        wb = w[start:start + oc_batch]
        org_max_val = wb.abs().amax(dim=-1, keepdim=True)
        best_max_val = org_max_val.clone()
        min_errs = torch.ones_like(org_max_val) * 1e9
        x = x.to(wb.device)
        org_out = (x * wb).sum(dim=-1)
        for i_s in range(int(MAX_SHRINK * N_GRID)):
            max_val = org_max_val * (1 - i_s / N_GRID)
            cur_w = torch.clamp(wb, -max_val, max_val)
            q_w = pseudo_quantize(cur_w, settings.bits, settings.group_size if settings.group_size > 0 else group_size,
                                  settings.symmetric)
            cur_out = (x * q_w).sum(dim=-1)
            err = (cur_out - org_out).pow(2).mean(dim=1).view(min_errs.shape)
            better = err < min_errs
            min_errs[better] = err[better]
            best_max_val[better] = max_val[better]
        best_all.append(best_max_val)
    return torch.cat(best_all, dim=0).squeeze(1)


@torch.no_grad()
def apply_clip(linear: nn.Linear, max_val: torch.Tensor) -> None:
    """Clamp each row's groups to ``[-max_val, max_val]`` (llm-awq ``apply_clip``)."""
    max_val = max_val.to(linear.weight.device).to(linear.weight.dtype)
    shape = linear.weight.shape
    w = linear.weight.data.reshape(*max_val.shape[:2], -1)
    linear.weight.data = torch.clamp(w, -max_val, max_val).reshape(shape)


@dataclass
class AWQResult:
    """What AWQ did to one block: ``scales[(prev, linears)]``, ``clips[linear]``, mappings skipped and why."""

    scales: dict[tuple[str, tuple[str, ...]], torch.Tensor] = field(default_factory=dict)
    clips: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()


class AWQ:
    """AWQ for one decoder block: ``collect`` -> ``search_scales`` -> ``apply_scales`` -> ``search_clips`` ->
    ``apply_clips`` -> ``free`` (:meth:`run` does all). The block is left scaled and clipped, not quantized."""

    def __init__(self, block: nn.Module, mappings: BlockMappings, settings: AWQSettings,
                 linears: list[str] | None = None) -> None:
        """``linears``: the block's Linears to clip (default: every ``nn.Linear`` in it, as the reference)."""
        self.block, self.mappings, self.settings = block, mappings, settings
        self.linears = linears if linears is not None else [n for n, m in block.named_modules()
                                                             if isinstance(m, nn.Linear)]
        self.features: dict[str, list[torch.Tensor]] = {}
        self.kwargs: list[dict] = []

    def collect(self, inps, calls) -> list[torch.Tensor]:
        """Keep every mapped Linear's input per batch; return the dense block's outputs."""
        seen: list[tuple[torch.Tensor, str]] = []  # q/k/v (gate/up) get the same tensor: kept once, under the first

        def keep(name: str, x: torch.Tensor) -> None:
            owner = next((n for t, n in seen if t is x), None)
            if owner is None:
                seen.append((x, name))
                self.features.setdefault(name, []).append(x.detach())
            else:
                self.features.setdefault(name, self.features[owner])
        outs = []
        for x, call in zip(inps, calls):
            seen.clear()
            outs += run_dense_block(self.block, [x], [call], self.mappings, self.linears, keep)
        for rest, kwargs in calls:
            if rest:
                raise RuntimeError(f"{type(self.block).__name__} receives positional arguments besides the hidden "
                                   "states: AWQ cannot pass them to self_attn")
            self.kwargs.append({k: v for k, v in kwargs.items() if k != "use_cache"})
        return outs

    def search_scales(self) -> dict[tuple[str, tuple[str, ...]], torch.Tensor]:
        scales = {}
        for m in self.mappings.mappings:
            linears = [self.block.get_submodule(n) for n in m.linears]
            inspect = self.block.get_submodule(m.inspect) if m.inspect else linears[0]
            kwargs = self.kwargs if m.attention else [{} for _ in self.kwargs]
            scales[(m.prev, m.linears)] = search_scale(inspect, linears, self.features[m.linears[0]], kwargs,
                                                       self.settings).cpu()
        return scales

    def apply_scales(self, scales: dict[tuple[str, tuple[str, ...]], torch.Tensor]) -> None:
        """Fold every scale in mapping order; divide the kept inputs of the scaled Linears (for the clip search)."""
        divided: set[int] = set()
        for m in self.mappings.mappings:
            s = scales[(m.prev, m.linears)]
            fold(self.block, m, s)
            for name in m.linears:
                for i, x in enumerate(self.features.get(name, [])):
                    if id(x) not in divided:
                        x.div_(s.view(1, -1).to(x.device).to(x.dtype))
                        divided.add(id(x))

    def clip_targets(self) -> list[str]:
        """The reference's rule: every Linear that saw inputs, except those whose name marks a query or key."""
        return [n for n in self.linears if n in self.features and not any(k in n for k in CLIP_SKIP)]

    def search_clips(self) -> dict[str, torch.Tensor]:
        clips = {}
        for name in self.clip_targets():
            feats = self.features[name]
            x = feats[0] if len(feats) == 1 else torch.cat(feats)
            clips[name] = search_clip(self.block.get_submodule(name).weight, x, self.settings).cpu()
        return clips

    def apply_clips(self, clips: dict[str, torch.Tensor]) -> None:
        for name, max_val in clips.items():
            apply_clip(self.block.get_submodule(name), max_val)

    def free(self) -> None:
        self.features, self.kwargs = {}, []

    def run(self, inps, calls) -> tuple[list[torch.Tensor], AWQResult]:
        """The whole AWQ transform of the block; returns the dense block's outputs and what was done."""
        try:
            outs = self.collect(inps, calls)
            result = AWQResult(skipped=self.mappings.skipped)
            result.scales = self.search_scales()
            self.apply_scales(result.scales)
            if self.settings.clip:
                result.clips = self.search_clips()
                self.apply_clips(result.clips)
            return outs, result
        finally:
            self.free()


class ReferenceQuantizer:
    """Per-target final quantizer with llm-awq's arithmetic (``quantizer=reference``): the LayerCompressor protocol
    of :mod:`.base`, no calibration. ``quant_params`` hold ``scales`` / ``zeros`` ``[n_groups, rows]`` and ``g_idx``
    (dequantization ``scale * (q - zero)``, q unsigned); ``bits_per_weight(rows, columns)`` counts the storage."""

    needs_calibration: ClassVar[bool] = False

    def __init__(self, target: nn.Module, settings: AWQSettings, bits_per_weight) -> None:
        self.target, self.settings, self.bits_per_weight = target, settings, bits_per_weight

    def add_batch(self, inp: torch.Tensor) -> None:  # pragma: no cover - never called (no calibration)
        raise RuntimeError("the final quantizer uses no calibration data")

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        s = self.settings
        weight = self.target.weight
        rows, columns = weight.shape
        size = s.group_size if s.group_size > 0 else columns
        q, scales, zeros = pseudo_quantize(weight.data, s.bits, s.group_size, s.symmetric, with_params=True)
        weight.data.copy_(q)
        g_idx = torch.arange(columns, dtype=torch.int32) // size
        return LayerStats(numel=weight.numel(), zeros=count_zeros(weight.data), seconds=time.perf_counter() - start,
                          bits_per_weight=self.bits_per_weight(rows, columns),
                          quant_params={"scales": scales.reshape(rows, -1).t().float().contiguous().cpu(),
                                        "zeros": zeros.reshape(rows, -1).t().float().contiguous().cpu(),
                                        "g_idx": g_idx})

    def free(self) -> None:
        pass
