"""SparseGPT (Frantar & Alistarh 2023), IST-DASLab ``fasterprune`` without quantization."""

from __future__ import annotations

import time

import torch

from kick_models.compress.base import LayerStats
from kick_models.compress.hessian import HessianStatistics, dead_inputs, inverse_cholesky_upper
from kick_models.compress.nm import count_zeros, threshold_mask


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                    blocksize: int = 128, damp: float = 0.01, name: str = "", record: dict | None = None) -> tuple[torch.Tensor, float]:
    """Prune the float32 matrix ``W`` (rows x columns) with Hessian ``H``; returns (pruned W, loss).

    Unstructured: per block of ``blocksize`` columns, the reference rule over the whole rows x count
    block of ``w^2 / diag(Hinv)^2``: ``mask = score <= sort(score.flatten())[int(numel * sparsity)]``
    (``int(numel * sparsity) + 1`` weights plus ties, as IST-DASLab SparseGPT). N:M: at each block
    column ``i % M == 0`` pick, per row, the N lowest scores of the next M columns from the
    already-updated weights. The loss is ``sum(err^2) / 2`` with ``err = (w - q) / Hinv_ii``.
    """
    W = W.clone()
    H = H.clone()
    dead = dead_inputs(H)
    W[:, dead] = 0
    rows, columns = W.shape
    Hinv = inverse_cholesky_upper(H, damp, name, record)
    loss = torch.zeros((), dtype=W.dtype, device=W.device)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        # The block is swept transposed (one contiguous row per column); every element sees the same
        # float operations as the reference's column loop, so the result is bit-identical.
        W1T = W[:, i1:i2].t().contiguous()
        Q1T = torch.empty_like(W1T)
        Err1T = torch.empty_like(W1T)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d_block = torch.diag(Hinv1)
        if nm is None:
            score = W1T.t() ** 2 / d_block.reshape(1, -1) ** 2
            keep1T = (~threshold_mask(score, sparsity)).t().to(W.dtype)
        else:
            keep1T = torch.ones_like(W1T)
            n, m = nm
        for i in range(count):
            w = W1T[i]
            if nm is not None and i % m == 0:
                score = W1T[i:i + m] ** 2 / d_block[i:i + m].reshape(-1, 1) ** 2
                keep1T[i:i + m].scatter_(0, torch.topk(score, n, dim=0, largest=False)[1], 0.0)
            q = torch.mul(w, keep1T[i], out=Q1T[i])
            err1 = torch.div(w - q, Hinv1[i, i], out=Err1T[i])
            W1T[i:].sub_(Hinv1[i, i:].unsqueeze(1) * err1)
        W[:, i1:i2] = Q1T.add_(0.0).t()  # w * 0 is -0.0 for negative w; + 0.0 makes it +0.0 as in the reference
        loss += torch.sum(Err1T ** 2) / 2  # err1 = (w - q) / d: the reference's (w - q)^2 / d^2 per weight
        W[:, i2:] -= Err1T.t().contiguous().matmul(Hinv[i1:i2, i2:])
    return W, float(loss.item())


class SparseGPTPruner(HessianStatistics):
    """One Linear: accumulate H over calibration inputs, then prune with OBS weight updates."""

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        weight = self.layer.weight
        used: dict = {}
        W, loss = sparsegpt_prune(weight.data.float(), self.hessian.H, self.config.sparsity, self.config.nm,
                                  self.config.blocksize, self.config.damp, self.name, used)
        weight.data.copy_(W.to(weight.dtype))
        return LayerStats(numel=weight.numel(), zeros=count_zeros(weight.data), seconds=time.perf_counter() - start,
                          error=loss, damp=used.get("damp"))
