"""Whether a replayed output equals the model's own (the calibration replay check, the fused-experts probe)."""

from __future__ import annotations

from typing import Any

import torch


def outputs_close(a: Any, b: Any) -> bool:
    """Two layer/module outputs (tensors, or tuples of them and None) equal up to a few roundings of their dtype:
    integer tensors exactly; floating ones by the relative error of the whole tensor (kernels of another
    summation order differ by a few ulps, a wrong replay by far more)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            return torch.equal(a, b.to(a.device))
        # relative error of the whole tensor, within a few roundings of its dtype (bf16 kernels differ in order)
        tol = max(1e-4, 4 * torch.finfo(a.dtype).eps)
        a, b = a.float(), b.float().to(a.device)
        if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
            return False
        a, b = a.nan_to_num(), b.nan_to_num()
        return float((a - b).norm()) <= tol * float(b.norm()) + 1e-6
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(outputs_close(x, y) for x, y in zip(a, b))
    return (a is None) == (b is None)
