"""Shared mask helpers: N:M masks, the reference threshold rule and exact-count per-row masks (pure tensor code)."""

from __future__ import annotations

import torch


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask (True = prune) with the ``n`` lowest scores in every group of ``m`` consecutive columns of each row.

    ``score.shape[1]`` must be a multiple of ``m`` (checked by the driver before compressing).
    """
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"N:M sparsity needs the input width ({cols}) to be a multiple of M={m}")
    grouped = score.reshape(rows, cols // m, m)
    idx = torch.topk(grouped, n, dim=-1, largest=False)[1]
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def _lowest_k_rows(score: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of the 2-D ``score``: True for exactly the ``k`` lowest entries, ties broken by column order.

    Same result as taking the first ``k`` indices of a stable ascending sort, in O(n) with ``kthvalue``.
    """
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k <= 0:
        return mask
    if k >= score.shape[1]:
        return ~mask
    thr = torch.kthvalue(score, k, dim=1, keepdim=True).values
    below = score < thr
    need = k - below.sum(dim=1, keepdim=True)
    ties = score == thr
    return below | (ties & (torch.cumsum(ties, dim=1) <= need))


def threshold_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (True = prune) by the reference rule over the whole tensor:
    ``thresh = sort(score.flatten())[int(numel * sparsity)]; mask = score <= thresh``.

    This is what IST-DASLab SparseGPT (per block) and the Wanda repository's magnitude pruning (per
    matrix) do: it prunes ``int(numel * sparsity) + 1`` entries plus any ties with the threshold.
    ``kthvalue`` gives the same value as the sort, in O(n).
    """
    flat = score.reshape(-1)
    k = int(flat.numel() * sparsity)
    if k >= flat.numel():  # the reference would index past the end; prune everything
        return torch.ones_like(score, dtype=torch.bool)
    thresh = torch.kthvalue(flat, k + 1).values
    return score <= thresh


def row_lowest_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (True = prune) of exactly the ``k`` lowest entries in EACH row (Wanda's per-output rule)."""
    return _lowest_k_rows(score, k)


def count_zeros(weight: torch.Tensor) -> int:
    return int((weight == 0).sum().item())
