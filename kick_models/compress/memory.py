"""Calibration memory: how many samples per forward pass, and what to do when CUDA runs out anyway.

:func:`default_batch_size` budgets free CUDA memory for what the sequential driver really keeps on the
compute device besides one batch's activations: the calibration inputs of every sample (held twice
while a block's outputs are produced), one block's statistics (a Hessian ``in x in`` fp32 matrix per
compressed weight for SparseGPT / GPTQ: 3.3 GB for a 70B ``down_proj``), the fp32 working copies of the
widest weight, and the block itself when it is brought from CPU or disk.

:func:`halve_batches` splits every stored batch in two (the hidden states and each call's batch-sized
tensors: attention masks, per-sample rotary embeddings), so the driver can retry a pass that hit a
CUDA out-of-memory error with half the batch.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Share of the free CUDA memory (after the fixed costs) given to one batch's activations.
ACTIVATION_SHARE = 0.5


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return config


def block_statistics_bytes(layer: nn.Module) -> tuple[int, int, int]:
    """(Hessian bytes, fp32 working bytes of the widest weight, block bytes) of one decoder block, from shapes only
    (works on meta tensors). Hessians: ``in^2 * 4`` per >= 2-D weight, per expert for fused 3-D expert tensors."""
    hessians = widest = block = 0
    for module in layer.modules():
        conv1d = type(module).__name__ == "Conv1D"  # GPT-2: weight stored [in, out]
        for p in module.parameters(recurse=False):
            block += p.numel() * p.element_size()
            if p.dim() < 2:
                continue
            width = p.shape[0] if conv1d else p.shape[-1]
            matrices = p.numel() // (p.shape[-1] * p.shape[-2])
            hessians += matrices * width * width * 4
            widest = max(widest, (p.shape[-1] * p.shape[-2]) * 4 * 3)  # W, Q/error and H^-1-sized work in fp32
    return hessians, widest, block


def default_batch_size(model: nn.Module, nsamples: int, seqlen: int, device: torch.device,
                       layer: nn.Module | None = None) -> int:
    """Calibration samples per forward pass. On CUDA: what fits in free memory after the stored inputs (twice),
    one block's Hessians and working copies and the block itself; on CPU ~8k tokens per batch."""
    if device.type != "cuda":
        return max(1, min(nsamples, 8192 // max(seqlen, 1)))
    config = _text_config(model)
    hidden = getattr(config, "hidden_size", 4096)
    inter = getattr(config, "intermediate_size", 4 * hidden)
    heads = getattr(config, "num_attention_heads", 32)
    dtype_bytes = next(model.parameters()).element_size()
    stored = 2 * nsamples * seqlen * hidden * dtype_bytes  # inputs + the outputs being produced
    hessians, widest, block = block_statistics_bytes(layer) if layer is not None else (0, 0, 0)
    per_sample = seqlen * (16 * hidden + 3 * inter) * 4 + heads * seqlen * seqlen * 4
    free, _ = torch.cuda.mem_get_info(device)
    budget = 0.9 * free - stored - hessians - widest - block
    size = int(ACTIVATION_SHARE * budget // per_sample)
    if size < 1:
        logger.warning("calibration on %s: %.1f GiB free for %.1f GiB of stored inputs/outputs, %.1f GiB of Hessians "
                       "and %.1f GiB for the block; using batch size 1 (reduce nsamples/seqlen if it runs out of memory)",
                       device, free / 2**30, stored / 2**30, hessians / 2**30, (widest + block) / 2**30)
    return max(1, min(nsamples, size))


def _split(value: Any, batch: int, half: int, part: int) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == batch:
            return value.split(half)[part]
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_split(v, batch, half, part) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_split(v, batch, half, part) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _split(v, batch, half, part)) for k, v in value.items())
    return value


def halve_batches(inps: list[torch.Tensor], calls: list[list], start: int, what: str, exc: BaseException
                  ) -> tuple[list[torch.Tensor], list[list]]:
    """Every batch of ``inps`` (and of the per-layer ``calls[start:]``) split in two; re-raises ``exc`` when every
    batch already holds one sample. Tensors whose first dimension is the batch size are split, others shared."""
    if max((x.shape[0] for x in inps), default=1) <= 1:
        raise exc
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    new_inps: list[torch.Tensor] = []
    new_calls: list[list] = [[] for _ in calls]
    for b, x in enumerate(inps):
        size = x.shape[0]
        half = math.ceil(size / 2)
        parts = range(2 if size > 1 else 1)
        new_inps += [x.split(half)[p] for p in parts]
        for j in range(start, len(calls)):
            if calls[j]:
                new_calls[j] += [_split(calls[j][b], size, half, p) for p in parts]
    logger.warning("CUDA out of memory while %s: retrying with half the calibration batch (%d -> %d samples)",
                   what, max(x.shape[0] for x in inps), max(x.shape[0] for x in new_inps))
    return new_inps, new_calls
