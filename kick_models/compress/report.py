"""What a compression run did: per-Linear stats, timing, calibration fingerprint; JSON-safe summary."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kick_models.compress.base import LayerStats


@dataclass
class CompressionReport:
    method: str
    config: dict  # config.to_dict()
    layers: list[LayerStats] = field(default_factory=list)  # one per compressed nn.Linear
    seconds: float = 0.0  # wall time of compression (excluding model load)
    calibration_fingerprint: str | None = None

    def measured_sparsity(self) -> float:
        """Exact zeros / weights over all compressed Linears."""
        numel = sum(layer.numel for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / numel if numel else 0.0

    def bits_per_weight(self) -> float | None:
        """Numel-weighted mean storage bits per weight (quantization only; None for pruning)."""
        quant = [layer for layer in self.layers if layer.bits_per_weight is not None]
        if not quant:
            return None
        numel = sum(layer.numel for layer in quant)
        return sum(layer.bits_per_weight * layer.numel for layer in quant) / numel

    def block_sparsity(self) -> dict[int, float]:
        """Sparsity of each decoder block (over its compressed Linears)."""
        totals: dict[int, list[int]] = {}
        for layer in self.layers:
            if layer.block is None:
                continue
            t = totals.setdefault(layer.block, [0, 0])
            t[0] += layer.zeros
            t[1] += layer.numel
        return {b: z / n for b, (z, n) in sorted(totals.items()) if n}

    def summary(self) -> dict:
        """JSON-safe summary for results files and logs."""
        blocks = list(self.block_sparsity().values())
        bpw = self.bits_per_weight()
        return {
            "method": self.method,
            "config": self.config,
            "seconds": round(self.seconds, 3),
            "measured_sparsity": self.measured_sparsity(),
            "block_sparsity": {"min": min(blocks), "mean": sum(blocks) / len(blocks), "max": max(blocks)} if blocks else None,
            "bits_per_weight": bpw,
            "n_layers": len(self.layers),
            "calibration_fingerprint": self.calibration_fingerprint,
        }

    def quant_params(self) -> dict[str, torch.Tensor]:
        """``"<linear name>.scales"``, ``".zeros"``, ``".g_idx"`` for export (scales/zeros ``[n_groups, out]``)."""
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            for key, tensor in layer.quant_params.items():
                out[f"{layer.name}.{key}"] = tensor
        return out
