"""The one protocol every compression algorithm implements.

Pure tensor code, no model or I/O knowledge (IST-DASLab style):

    comp = Algorithm(linear, config)      # one per nn.Linear being compressed
    for x in batches: comp.add_batch(x)   # x: activations entering the Linear, (..., in_features)
    stats = comp.compress()               # rewrites linear.weight in place, returns LayerStats
    comp.free()                           # drop the statistics (H, norms)

Algorithms without calibration (magnitude, RTN) set ``needs_calibration = False``;
the sequential driver then skips the forward passes for statistics.

Calibration-based algorithms also implement ``comp.use_identity_statistics()``: replace statistics that
saw no input (an MoE expert no calibration token was routed to) by identity ones, so the matrix is
compressed by weight magnitude instead of being zeroed as "dead".

Optional: ``comp.share_statistics_from(other)`` makes ``comp`` use ``other``'s accumulated statistic
(same class, same input). The driver calls it for Linears that receive the very same input tensor
(q/k/v, gate/up), which are then fed to ONE accumulator only; ``compress`` must not modify the
shared statistic in place (clone it first) and ``free`` must only drop the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn


@dataclass
class LayerStats:
    """What compressing one Linear did."""

    name: str = ""
    numel: int = 0
    zeros: int = 0                       # exact zeros in the weight after compression
    seconds: float = 0.0
    error: float | None = None           # algorithm's own loss (e.g. GPTQ/SparseGPT sum of squared error)
    bits_per_weight: float | None = None  # quantization only: incl. scale/zero overhead
    # quantization only: tensors needed to produce a packed checkpoint (a read-only mapping reading them from disk
    # once the matrix was written to kick's disk offload store: :mod:`kick_models.compress.spill`)
    quant_params: Mapping[str, torch.Tensor] = field(default_factory=dict)
    block: int | None = None             # index of the decoder block holding this Linear
    param: str | None = None             # the model parameter holding this matrix (a fused-experts tensor, a Conv1D
                                         # weight stored [in, out]); None = "<name>.weight"
    expert: int | None = None            # MoE expert index, if this matrix belongs to one expert
    in_features: int | None = None       # input width of the matrix
    tokens: int | None = None            # calibration tokens (input rows) whose statistics this matrix saw
    damp: float | None = None            # Hessian methods: the damping really used (raised if H was not PD)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


class LayerCompressor(Protocol):
    needs_calibration: ClassVar[bool]

    def __init__(self, layer: nn.Linear, config: Any) -> None: ...

    def add_batch(self, inp: torch.Tensor) -> None: ...

    def compress(self) -> LayerStats: ...

    def free(self) -> None: ...
