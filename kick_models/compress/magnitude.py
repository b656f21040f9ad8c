"""Magnitude pruning (Wanda repository's ``prune_magnitude``): no calibration data."""

from __future__ import annotations

import time
from typing import ClassVar

import torch
from torch import nn

from kick_models.compress.base import LayerStats
from kick_models.compress.config import PruneConfig
from kick_models.compress.nm import count_zeros, nm_mask, threshold_mask


class MagnitudePruner:
    """Zero the smallest ``|W|``: one threshold per matrix, or, for N:M, the N smallest in each group of M
    consecutive inputs of each row.

    Unstructured follows the reference exactly: ``|W| <= sort(|W|.flatten())[int(numel * sparsity)]``, so
    ``int(numel * sparsity) + 1`` weights plus ties are pruned (the measured sparsity is slightly above
    the requested one).
    """

    needs_calibration: ClassVar[bool] = False

    def __init__(self, layer: nn.Linear, config: PruneConfig) -> None:
        self.layer = layer
        self.config = config

    def add_batch(self, inp: torch.Tensor) -> None:  # pragma: no cover - never called (no calibration)
        raise RuntimeError("magnitude pruning uses no calibration data")

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        W = self.layer.weight.data
        metric = W.abs().float()
        nm = self.config.nm
        if nm is not None:
            mask = nm_mask(metric, *nm)
        else:
            mask = threshold_mask(metric, self.config.sparsity)
        W[mask] = 0
        return LayerStats(numel=W.numel(), zeros=count_zeros(W), seconds=time.perf_counter() - start)

    def free(self) -> None:
        pass
