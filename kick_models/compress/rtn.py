"""Round-to-nearest fake quantization: GPTQ's min-max quantizer without error feedback; no calibration."""

from __future__ import annotations

import time
from typing import ClassVar

import torch
from torch import nn

from kick_models.compress.base import LayerStats
from kick_models.compress.config import QuantConfig
from kick_models.compress.nm import count_zeros
from kick_models.compress.quantizer import bits_per_weight, rtn_quantize


class RTNQuantizer:
    """Per row (and per group of ``groupsize`` input columns) min-max quantize-dequantize in place."""

    needs_calibration: ClassVar[bool] = False

    def __init__(self, layer: nn.Linear, config: QuantConfig) -> None:
        self.layer = layer
        self.config = config

    def add_batch(self, inp: torch.Tensor) -> None:  # pragma: no cover - never called (no calibration)
        raise RuntimeError("RTN uses no calibration data")

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        c = self.config
        weight = self.layer.weight
        Q, scales, zeros, g_idx = rtn_quantize(weight.data.float(), c.wbits, c.sym, c.groupsize)
        weight.data.copy_(Q.to(weight.dtype))
        rows, columns = weight.shape
        return LayerStats(numel=weight.numel(), zeros=count_zeros(weight.data), seconds=time.perf_counter() - start,
                          bits_per_weight=bits_per_weight(c.wbits, rows, columns, c.groupsize),
                          quant_params={"scales": scales.float().cpu(), "zeros": zeros.float().cpu(), "g_idx": g_idx.cpu()})

    def free(self) -> None:
        pass
