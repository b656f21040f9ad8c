"""What a compression run did: per-Linear stats, timing, calibration fingerprint; JSON-safe summary."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from kick_models.compress.base import LayerStats
from kick_models.compress.spill import tensor_spec


@dataclass
class CompressionReport:
    method: str
    config: dict  # config.to_dict()
    layers: list[LayerStats] = field(default_factory=list)  # one per compressed matrix (Linear, Conv1D, expert slice)
    seconds: float = 0.0  # wall time of compression (excluding model load)
    calibration_fingerprint: str | None = None
    # one record per >= 2-D parameter the decoder blocks hold, measured from its values after compression:
    # {"name", "block", "role": compressed | router | bias | unused | uncovered, "numel", "zeros", "dtype_bits"}
    weights: list[dict] = field(default_factory=list)
    # one record per decoder block a transform changed (AWQ, SmoothQuant: :mod:`.transforms`)
    transforms: list[dict] = field(default_factory=list)

    def transformed_params(self) -> list[str]:
        """Parameters a transform changed besides the compressed matrices (norm weights and biases)."""
        return [p for record in self.transforms for p in record.get("params", [])]

    def _weights_or_layers(self) -> list:
        """Block weights (the truth); reports without them (older caches) fall back to the compressed matrices."""
        if self.weights:
            return [(w["block"], w["numel"], w["zeros"]) for w in self.weights]
        return [(layer.block, layer.numel, layer.zeros) for layer in self.layers]

    def measured_sparsity(self) -> float:
        """Exact zeros / weights over ALL >= 2-D weights of the decoder blocks (compressed or not)."""
        rows = self._weights_or_layers()
        numel = sum(n for _, n, _ in rows)
        return sum(z for _, _, z in rows) / numel if numel else 0.0

    def _param_bits(self) -> dict[str, float]:
        """Numel-weighted storage bits per weight of each quantized parameter (fused experts: over their slices)."""
        acc: dict[str, list[float]] = {}
        for layer in self.layers:
            if layer.bits_per_weight is None:
                continue
            a = acc.setdefault(layer.param or f"{layer.name}.weight", [0.0, 0])
            a[0] += layer.bits_per_weight * layer.numel
            a[1] += layer.numel
        return {k: b / n for k, (b, n) in acc.items() if n}

    def bits_per_weight(self) -> float | None:
        """Storage bits per weight over ALL >= 2-D block weights (quantization only; None for pruning): quantized
        ones at their bits incl. scale/zero overhead, the others (routers, uncovered) at their dtype's bits."""
        quant = [layer for layer in self.layers if layer.bits_per_weight is not None]
        if not quant:
            return None
        if not self.weights:
            numel = sum(layer.numel for layer in quant)
            return sum(layer.bits_per_weight * layer.numel for layer in quant) / numel
        bits = self._param_bits()
        total = sum(w["numel"] for w in self.weights)
        return sum(w["numel"] * bits.get(w["name"], w["dtype_bits"]) for w in self.weights) / total

    def block_sparsity(self) -> dict[int, float]:
        """Sparsity of each decoder block (over all its >= 2-D weights)."""
        totals: dict[int, list[int]] = {}
        for block, numel, zeros in self._weights_or_layers():
            if block is None:
                continue
            t = totals.setdefault(block, [0, 0])
            t[0] += zeros
            t[1] += numel
        return {b: z / n for b, (z, n) in sorted(totals.items()) if n}

    def coverage(self) -> dict | None:
        """Share of the blocks' >= 2-D weights that were compressed, and every weight kept as it is, with why."""
        if not self.weights:
            return None
        total = sum(w["numel"] for w in self.weights)
        done = sum(w["numel"] for w in self.weights if w["role"] == "compressed")
        reasons = {"router": "router (kept dense, as in llm-compressor's ignore lists)",
                   "bias": "expert bias (not a weight matrix; kept as it is)",
                   "unused": "no calibration input reached its module (the forward never calls it: unused, or "
                             "its weight read directly); kept as it is",
                   "uncovered": "no compression handler for this weight (allow_partial=true)"}
        kept = {w["name"]: reasons[w["role"]] for w in self.weights if w["role"] != "compressed"}
        return {"compressed_fraction": done / total if total else 0.0, "n_block_weights": len(self.weights),
                "n_compressed": sum(w["role"] == "compressed" for w in self.weights), "kept": kept}

    def damp_raised(self) -> dict[str, float]:
        """Matrices whose Hessian damping had to be raised to factorize: ``{name: damp really used}``."""
        requested = self.config.get("damp")
        return {layer.name: layer.damp for layer in self.layers
                if layer.damp is not None and requested is not None and layer.damp != requested}

    def expert_tokens(self) -> dict | None:
        """MoE experts' calibration tokens: min/max over expert matrices, and those that saw fewer tokens than
        their input width (statistics of rank < width; ``moe_calibration=routed``)."""
        experts = [layer for layer in self.layers if layer.expert is not None and layer.tokens is not None]
        if not experts:
            return None
        few = {layer.name: layer.tokens for layer in experts if layer.tokens < (layer.in_features or 0)}
        return {"min": min(layer.tokens for layer in experts), "max": max(layer.tokens for layer in experts),
                "under_input_width": few}

    def summary(self) -> dict:
        """JSON-safe summary for results files and logs."""
        blocks = list(self.block_sparsity().values())
        bpw = self.bits_per_weight()
        out = {
            "method": self.method,
            "config": self.config,
            "seconds": round(self.seconds, 3),
            "measured_sparsity": self.measured_sparsity(),
            "block_sparsity": {"min": min(blocks), "mean": sum(blocks) / len(blocks), "max": max(blocks)} if blocks else None,
            "bits_per_weight": bpw,
            "n_layers": len(self.layers),
            "calibration_fingerprint": self.calibration_fingerprint,
            "coverage": self.coverage(),
        }
        raised = self.damp_raised()
        if raised:
            out["damp_raised"] = raised
        tokens = self.expert_tokens()
        if tokens is not None:
            out["expert_tokens"] = tokens
        if self.transforms:
            out["transforms"] = self.transforms_summary()
        return out

    def transforms_summary(self) -> dict:
        """AWQ / SmoothQuant: how many blocks, which mappings were scaled, what was skipped and why (deduplicated)."""
        scaled = sorted({f"{s['prev']} -> {', '.join(s['linears'])}" for r in self.transforms for s in r["scaled"]})
        skipped = sorted({f"{names}: {why}" for r in self.transforms for names, why in r["skipped"]})
        return {"method": self.transforms[0]["method"], "blocks": len(self.transforms), "scaled": scaled,
                "skipped": skipped, "params": len(self.transformed_params())}

    def quant_params(self) -> QuantParams:
        """``"<linear name>.scales"``, ``".zeros"``, ``".g_idx"`` for export (scales/zeros ``[n_groups, out]``): a
        mapping over the layers' parameters, each read when accessed (spilled ones from their file, :mod:`.spill`)."""
        return QuantParams(self.layers)


class QuantParams(Mapping):
    """``"<layer name>.<key>" -> tensor`` over the ``quant_params`` of ``layers``, read on access (never all held
    at once by the mapping itself); :meth:`specs` gives ``(dtype, shape)`` without reading a spilled tensor."""

    def __init__(self, layers: list[LayerStats]):
        self._where = {f"{layer.name}.{key}": (layer.quant_params, key) for layer in layers for key in layer.quant_params}

    def __getitem__(self, name: str) -> torch.Tensor:
        tensors, key = self._where[name]
        return tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def specs(self, prefix: str = "") -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """``{prefix + name: (dtype, shape)}`` of every tensor, none read from a file."""
        return {prefix + name: tensor_spec(tensors, key) for name, (tensors, key) in self._where.items()}
