"""SparseGPT (Frantar & Alistarh 2023), IST-DASLab ``fasterprune`` without quantization."""

from __future__ import annotations

import time
from typing import ClassVar

import torch
from torch import nn

from kick_models.compress.base import LayerStats
from kick_models.compress.config import PruneConfig
from kick_models.compress.hessian import HessianAccumulator, dead_inputs, inverse_cholesky_upper
from kick_models.compress.nm import count_zeros, threshold_mask


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                    blocksize: int = 128, damp: float = 0.01, name: str = "") -> tuple[torch.Tensor, float]:
    """Prune the float32 matrix ``W`` (rows x columns) with Hessian ``H``; returns (pruned W, loss).

    Unstructured: per block of ``blocksize`` columns, the reference rule over the whole rows x count
    block of ``w^2 / diag(Hinv)^2``: ``mask = score <= sort(score.flatten())[int(numel * sparsity)]``
    (``int(numel * sparsity) + 1`` weights plus ties, as IST-DASLab SparseGPT). N:M: at each block column ``i % M == 0`` pick, per row, the N lowest scores of
    the next M columns from the already-updated weights.
    """
    W = W.clone()
    H = H.clone()
    dead = dead_inputs(H)
    W[:, dead] = 0
    rows, columns = W.shape
    Hinv = inverse_cholesky_upper(H, damp, name)
    losses = torch.zeros(rows, device=W.device)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d_block = torch.diag(Hinv1)
        if nm is None:
            score = W1 ** 2 / d_block.reshape(1, -1) ** 2
            mask1 = threshold_mask(score, sparsity)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            n, m = nm
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % m == 0:
                score = W1[:, i:i + m] ** 2 / d_block[i:i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(score, n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, float(losses.sum().item())


class SparseGPTPruner:
    """One Linear: accumulate H over calibration inputs, then prune with OBS weight updates."""

    needs_calibration: ClassVar[bool] = True

    def __init__(self, layer: nn.Linear, config: PruneConfig) -> None:
        self.layer = layer
        self.config = config
        self.name = ""
        self.hessian = HessianAccumulator(layer.weight.shape[1], layer.weight.device)

    def add_batch(self, inp: torch.Tensor) -> None:
        self.hessian.add_batch(inp)

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        weight = self.layer.weight
        W, loss = sparsegpt_prune(weight.data.float(), self.hessian.H, self.config.sparsity, self.config.nm,
                                  self.config.blocksize, self.config.damp, self.name)
        weight.data.copy_(W.to(weight.dtype))
        return LayerStats(numel=weight.numel(), zeros=count_zeros(weight.data), seconds=time.perf_counter() - start,
                          error=loss)

    def share_statistics_from(self, other: "SparseGPTPruner") -> None:
        """Use ``other``'s Hessian (same input tensor); ``compress`` clones it before modifying it."""
        self.hessian = other.hessian

    def free(self) -> None:
        self.hessian = None  # drop the reference only: a sibling Linear may share the accumulator
