"""The running Hessian ``H = (2/N) sum_n X_n^T X_n`` (fp32) shared by SparseGPT and GPTQ, and its inverse factor."""

from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)


class HessianAccumulator:
    """Running mean over sequences of ``2 X^T X`` for one Linear's inputs (IST-DASLab ``add_batch``)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.H: torch.Tensor | None = torch.zeros(columns, columns, device=device, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        """``inp``: activations entering the Linear, ``(batch, seq, in)`` or ``(seq, in)``; one sequence per batch row."""
        count = inp.shape[0] if inp.dim() >= 3 else 1
        x = inp.reshape(-1, inp.shape[-1]).t().to(device=self.H.device, dtype=torch.float32)
        self.H *= self.nsamples / (self.nsamples + count)
        self.nsamples += count
        x = math.sqrt(2 / self.nsamples) * x
        self.H += x.matmul(x.t())

    def free(self) -> None:
        self.H = None


def dead_inputs(H: torch.Tensor) -> torch.Tensor:
    """Boolean mask of inputs never active in calibration (``H_ii == 0``); sets their ``H_ii = 1`` in place."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    return dead


def inverse_cholesky_upper(H: torch.Tensor, damp: float, name: str = "", record: dict | None = None) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``.

    If ``H`` is not positive definite at the requested damping (the reference would crash), the
    damping is multiplied by 10 (up to 4 times) with a warning. ``record["damp"]`` (if given)
    receives the damping really used.
    """
    columns = H.shape[0]
    diag = torch.arange(columns, device=H.device)
    mean_diag = torch.mean(torch.diag(H))
    for attempt in range(5):
        factor = damp * (10 ** attempt)
        Hd = H.clone()
        Hd[diag, diag] += factor * mean_diag
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:  # the inverse must factorize too (it may not, numerically, when H is near-singular)
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
        if int(info) == 0:
            if record is not None:
                record["damp"] = factor
            if attempt:
                logger.warning("%s: Hessian not positive definite at damp=%g; used damp=%g.", name, damp, factor)
            return U
    raise RuntimeError(f"{name}: the Hessian is not positive definite even with damp={damp * 10 ** 4:g}; "
                       f"check the calibration data (NaN/inf activations?).")


class HessianStatistics:
    """Calibration half of the protocol for algorithms driven by ``H`` (SparseGPT, GPTQ).

    Subclasses implement ``compress()``; they must clone ``self.hessian.H`` before modifying it,
    because Linears fed the same input tensor (q/k/v, gate/up) share one accumulator.
    """

    needs_calibration = True

    def __init__(self, layer, config) -> None:
        self.layer = layer
        self.config = config
        self.name = ""
        self.hessian: HessianAccumulator | None = HessianAccumulator(layer.weight.shape[1], layer.weight.device)

    def add_batch(self, inp: torch.Tensor) -> None:
        self.hessian.add_batch(inp)

    def use_identity_statistics(self) -> None:
        """No input seen: ``H = I`` (SparseGPT then prunes by magnitude, GPTQ rounds to nearest)."""
        if self.hessian.nsamples == 0:
            self.hessian.H = torch.eye(self.hessian.H.shape[0], device=self.hessian.H.device, dtype=self.hessian.H.dtype)

    def share_statistics_from(self, other: "HessianStatistics") -> None:
        """Use ``other``'s Hessian (same input tensor); ``compress`` clones it before modifying it."""
        self.hessian = other.hessian

    def free(self) -> None:
        self.hessian = None  # drop the reference only: a sibling Linear may share the accumulator
