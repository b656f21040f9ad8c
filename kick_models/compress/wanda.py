"""Wanda (Sun et al. 2023): prune by ``|W_ij| * sqrt(mean_n ||X_n[:, j]||^2)`` per output row; no weight update."""

from __future__ import annotations

import time
from typing import ClassVar

import torch
from torch import nn

from kick_models.compress.base import LayerStats
from kick_models.compress.config import PruneConfig
from kick_models.compress.nm import count_zeros, nm_mask, row_lowest_k_mask


def wanda_variant_mask(metric: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The paper appendix variant: per row prune scores whose sorted cumulative sum is <= alpha * row sum;
    bisect alpha in [0, 0.8] (start 0.4) until the matrix sparsity is within 0.001 of the target.

    Deviation: a row where no cumulative score is <= alpha * sum prunes nothing (the reference
    gathers index -1 there and crashes).
    """
    sorted_metric, _ = torch.sort(metric, dim=-1, stable=True)
    cumsum = torch.cumsum(sorted_metric, dim=1)
    row_sum = metric.sum(dim=1)

    def given_alpha(alpha: float) -> tuple[torch.Tensor, float]:
        keep_count = (cumsum <= (row_sum * alpha).reshape(-1, 1)).sum(dim=1, keepdim=True)
        thres = torch.gather(sorted_metric, 1, (keep_count - 1).clamp(min=0))
        thres = torch.where(keep_count > 0, thres, torch.full_like(thres, -float("inf")))
        mask = metric <= thres
        return mask, mask.sum().item() / mask.numel()

    alpha, lo, hi = 0.4, 0.0, 0.8
    mask, cur = given_alpha(alpha)
    while abs(cur - sparsity) > 0.001 and hi - lo >= 0.001:
        if cur > sparsity:
            alpha_new = (alpha + lo) / 2.0
            hi = alpha
        else:
            alpha_new = (alpha + hi) / 2.0
            lo = alpha
        alpha = alpha_new
        mask, cur = given_alpha(alpha)
    return mask


class InputNormAccumulator:
    """Running mean over sequences of the squared L2 norm of each input feature (the Wanda repository's ``scaler_row``)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.scaler_row = torch.zeros(columns, device=device, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        count = inp.shape[0] if inp.dim() >= 3 else 1
        x = inp.reshape(-1, inp.shape[-1]).to(device=self.scaler_row.device, dtype=torch.float32)
        self.scaler_row *= self.nsamples / (self.nsamples + count)
        self.nsamples += count
        self.scaler_row += torch.norm(x, p=2, dim=0) ** 2 / self.nsamples


class WandaPruner:
    """Per-output-row Wanda pruning (unstructured, N:M, or the ``use_variant`` appendix rule)."""

    needs_calibration: ClassVar[bool] = True

    def __init__(self, layer: nn.Linear, config: PruneConfig) -> None:
        self.layer = layer
        self.config = config
        self.columns = layer.weight.shape[1]
        self.norms: InputNormAccumulator | None = InputNormAccumulator(self.columns, layer.weight.device)

    @property
    def scaler_row(self) -> torch.Tensor:
        return self.norms.scaler_row

    def add_batch(self, inp: torch.Tensor) -> None:
        self.norms.add_batch(inp)

    def use_identity_statistics(self) -> None:
        """No input seen: every input norm is 1, so the metric is ``|W|`` (magnitude per output row)."""
        if self.norms.nsamples == 0:
            self.norms.scaler_row.fill_(1.0)

    def share_statistics_from(self, other: "WandaPruner") -> None:
        """Use ``other``'s input norms (same input tensor); they are only read."""
        self.norms = other.norms

    def metric(self) -> torch.Tensor:
        return self.layer.weight.data.abs().float() * torch.sqrt(self.scaler_row.reshape(1, -1))

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        W = self.layer.weight.data
        metric = self.metric()
        nm = self.config.nm
        if nm is not None:
            mask = nm_mask(metric, *nm)
        elif self.config.use_variant:
            mask = wanda_variant_mask(metric, self.config.sparsity)
        else:
            mask = row_lowest_k_mask(metric, int(self.columns * self.config.sparsity))
        W[mask] = 0
        return LayerStats(numel=W.numel(), zeros=count_zeros(W), seconds=time.perf_counter() - start)

    def free(self) -> None:
        self.norms = None  # drop the reference only: a sibling Linear may share the accumulator
