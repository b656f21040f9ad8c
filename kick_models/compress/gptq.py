"""GPTQ (Frantar et al. 2022), IST-DASLab ``fasterquant``: fake quantization with error feedback."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from kick_models.compress.base import LayerStats
from kick_models.compress.hessian import HessianStatistics, dead_inputs, inverse_cholesky_upper
from kick_models.compress.nm import count_zeros
from kick_models.compress.quantizer import bits_per_weight, find_params, maxq_for, quantize


def act_order_permutation(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(perm, invperm)``: columns by descending ``diag(H)``; ``W[:, perm][:, invperm] == W``."""
    perm = torch.argsort(torch.diag(H), descending=True)
    return perm, torch.argsort(perm)


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, groupsize: int = 128, sym: bool = False,
                  act_order: bool = False, static_groups: bool = False, blocksize: int = 128, damp: float = 0.01,
                  name: str = "", record: dict | None = None,
                  column_quantizer: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """Quantize-dequantize the float32 matrix ``W`` column by column with error feedback through ``H``.

    Returns ``(Q, {"scales", "zeros", "g_idx"}, loss)``; scales/zeros are ``[n_groups, rows]`` and
    ``g_idx[j]`` is the group of ORIGINAL input column ``j``. As in the reference, dynamic group
    parameters are computed from ``W`` at the group's first column (weights updated by earlier
    blocks, not by earlier columns of the same block); with act-order the groups follow the
    permuted order; static groups are fixed on the unpermuted ``W`` before anything is quantized.

    ``column_quantizer(w, j)`` (another grid, e.g. a compressed-tensors scheme whose parameters were fixed on
    the unquantized weight, as llm-compressor's GPTQModifier fixes them) replaces the integer grid: it returns
    column ``j`` quantize-dequantized (``bits``, ``groupsize``, ``sym``, ``static_groups`` and ``act_order``
    are then unused, and the returned parameters are empty).
    """
    W = W.clone()
    H = H.clone()
    rows, columns = W.shape
    maxq = maxq_for(bits)
    on_grid = column_quantizer is not None
    if on_grid:
        groupsize, static_groups, act_order = -1, False, False
        scale = zero = torch.zeros(rows, 1, dtype=W.dtype, device=W.device)  # unused
    else:
        scale, zero = find_params(W, bits, sym)  # used as-is when groupsize == -1
    dead = dead_inputs(H)
    W[:, dead] = 0
    static: list[tuple[torch.Tensor, torch.Tensor]] = []
    if static_groups:
        static = [find_params(W[:, i:i + groupsize], bits, sym) for i in range(0, columns, groupsize)]
    perm = invperm = None
    if act_order:
        perm, invperm = act_order_permutation(H)
        W = W[:, perm]
        H = H[perm][:, perm]
    Hinv = inverse_cholesky_upper(H, damp, name, record)
    Q = torch.zeros_like(W)
    loss = torch.zeros((), dtype=W.dtype, device=W.device)
    dyn_scales: list[torch.Tensor] = []
    dyn_zeros: list[torch.Tensor] = []
    scale_row, zero_row = scale.flatten(), zero.flatten()
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        # Swept transposed (one contiguous row per column): the same float operations per element as the
        # reference's column loop, so the result is bit-identical.
        W1T = W[:, i1:i2].t().contiguous()
        Q1T = torch.empty_like(W1T)
        Err1T = torch.empty_like(W1T)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1T[i]
            if on_grid:
                q = Q1T[i]
                q.copy_(column_quantizer(w, i1 + i))
            else:
                if groupsize != -1:
                    if not static_groups:
                        if (i1 + i) % groupsize == 0:
                            scale, zero = find_params(W[:, i1 + i:i1 + i + groupsize], bits, sym)
                            scale_row, zero_row = scale.flatten(), zero.flatten()
                            dyn_scales.append(scale_row)
                            dyn_zeros.append(zero_row)
                    else:
                        idx = i1 + i
                        if act_order:
                            idx = int(perm[idx])
                        scale, zero = static[idx // groupsize]
                        scale_row, zero_row = scale.flatten(), zero.flatten()
                q = quantize(w, scale_row, zero_row, maxq, out=Q1T[i])
            err1 = torch.div(w - q, Hinv1[i, i], out=Err1T[i])
            W1T[i:].sub_(Hinv1[i, i:].unsqueeze(1) * err1)
        Q[:, i1:i2] = Q1T.t()
        loss += torch.sum(Err1T ** 2) / 2  # err1 = (w - q) / d: the reference's (w - q)^2 / d^2 per weight
        W[:, i2:] -= Err1T.t().contiguous().matmul(Hinv[i1:i2, i2:])
    if on_grid:
        return Q, {}, float(loss.item())
    if act_order:
        Q = Q[:, invperm]
    position = torch.arange(columns, device=W.device)
    if groupsize == -1:
        scales, zeros = scale.reshape(1, -1), zero.reshape(1, -1)
        g_idx = torch.zeros(columns, dtype=torch.int32, device=W.device)
    elif static_groups:
        scales = torch.stack([s.flatten() for s, _ in static])
        zeros = torch.stack([z.flatten() for _, z in static])
        g_idx = (position // groupsize).to(torch.int32)
    else:
        scales, zeros = torch.stack(dyn_scales), torch.stack(dyn_zeros)
        g_idx = (position // groupsize).to(torch.int32)
        if act_order:
            g_idx = g_idx[invperm]  # original column j sat at permuted position invperm[j]
    params = {"scales": scales.float().cpu(), "zeros": zeros.float().cpu(), "g_idx": g_idx.cpu()}
    return Q, params, float(loss.item())


class GPTQQuantizer(HessianStatistics):
    """One Linear: accumulate H over calibration inputs, then GPTQ fake quantization in place."""

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        c = self.config
        weight = self.layer.weight
        used: dict = {}
        Q, params, loss = gptq_quantize(weight.data.float(), self.hessian.H, c.wbits, c.groupsize, c.sym, c.act_order,
                                        c.static_groups, c.blocksize, c.damp, self.name, used)
        weight.data.copy_(Q.to(weight.dtype))
        rows, columns = weight.shape
        return LayerStats(numel=weight.numel(), zeros=count_zeros(weight.data), seconds=time.perf_counter() - start,
                          error=loss, damp=used.get("damp"), bits_per_weight=bits_per_weight(c.wbits, rows, columns, c.groupsize),
                          quant_params=params)
