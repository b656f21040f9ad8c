"""Min-max uniform quantizer (IST-DASLab GPTQ ``quant.py``), shared by GPTQ and RTN.

Per output row (and per group of input columns when ``groupsize > 0``): the range is
``[min(x.min, 0), max(x.max, 0)]``; ``maxq = 2**bits - 1``; ``scale = (xmax - xmin) / maxq``;
asymmetric ``zero = round(-xmin / scale)``, symmetric ``xmax = max(|xmin|, xmax)``, ``xmin = -xmax``
(when xmin < 0) and ``zero = (maxq + 1) / 2``. An all-zero row uses the range [-1, 1].
Quantize-dequantize: ``scale * (clamp(round(x / scale) + zero, 0, maxq) - zero)``.
"""

from __future__ import annotations

import torch


def maxq_for(bits: int) -> int:
    return 2 ** bits - 1


def find_params(x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, zero)``, each of shape ``[rows, 1]``, for the 2-D float tensor ``x``."""
    maxq = maxq_for(bits)
    zero_t = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    xmin = torch.minimum(x.min(1)[0], zero_t)
    xmax = torch.maximum(x.max(1)[0], zero_t)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        neg = xmin < 0
        xmin = torch.where(neg, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both_zero, torch.full_like(xmin, -1), xmin)
    xmax = torch.where(both_zero, torch.full_like(xmax, 1), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale.reshape(-1, 1), zero.reshape(-1, 1)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` (broadcasting ``scale``/``zero``, e.g. ``[rows, 1]`` for a matrix, ``[rows]``
    for one column); into ``out`` when given (no temporaries: the GPTQ column loop)."""
    q = torch.div(x, scale) if out is None else torch.div(x, scale, out=out)
    return q.round_().add_(zero).clamp_(0, maxq).sub_(zero).mul_(scale)


def group_starts(columns: int, groupsize: int) -> list[int]:
    """First column of each group (one group when ``groupsize == -1``); the last group may be short."""
    if groupsize == -1:
        return [0]
    return list(range(0, columns, groupsize))


def bits_per_weight(bits: int, rows: int, columns: int, groupsize: int) -> float:
    """Storage bits per weight: ``bits`` plus a 16-bit scale and a ``bits``-bit zero per group and row."""
    n_groups = len(group_starts(columns, groupsize))
    return bits + (16 + bits) * n_groups * rows / (rows * columns)


def rtn_quantize(w: torch.Tensor, bits: int, sym: bool, groupsize: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of the float matrix ``w``; returns ``(q, scales, zeros, g_idx)``.

    ``scales``/``zeros`` are ``[n_groups, rows]`` (the packed-checkpoint layout), ``g_idx[j]`` the
    group of input column ``j``.
    """
    rows, columns = w.shape
    maxq = maxq_for(bits)
    q = torch.empty_like(w)
    scales, zeros = [], []
    size = columns if groupsize == -1 else groupsize
    for start in group_starts(columns, groupsize):
        block = w[:, start:start + size]
        scale, zero = find_params(block, bits, sym)
        q[:, start:start + size] = quantize(block, scale, zero, maxq)
        scales.append(scale.flatten())
        zeros.append(zero.flatten())
    g_idx = torch.arange(columns, device=w.device, dtype=torch.int32) // size
    return q, torch.stack(scales), torch.stack(zeros), g_idx
