"""Layer compressors for compressed-tensors schemes (``kick-quant``): the weight-method dispatch.

``SCHEME_METHODS[config.method]`` builds one compressor per target (the protocol of
:mod:`kick_models.compress.base`); every method quantizes the weight with the scheme's quantizer
(:mod:`kick_models.compress.schemes`) and, for schemes with static input activations, observes the
inputs the sequential driver feeds it (the block's input with upstream blocks already compressed, activations
unquantized during calibration as in llm-compressor's sequential pipeline).

A :class:`SchemeRun` is shared by the compressors of one run: it remembers each target's ORIGINAL weight
statistics, so NVFP4's global scale of a fused set (q/k/v, gate/up) is computed from the unquantized
weights of the whole set whichever member is compressed first.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from kick_models.compress import schemes
from kick_models.compress.base import LayerStats
from kick_models.compress.nm import count_zeros


class SchemeRun:
    """State shared by one run's compressors: the scheme and the original min/max of every weight seen."""

    def __init__(self, config) -> None:
        self.config = config
        self.scheme = config.quantization_scheme()
        self.weight_absmax: dict[str, torch.Tensor] = {}  # TENSOR_GROUP (NVFP4) only
        self.pending: list[SchemeRTN] = []  # built, not yet registered under their name

    def register_pending(self) -> None:
        """Record the original weight statistics of every compressor built so far (the driver names them right
        after building a group, before any of them compresses)."""
        for comp in self.pending:
            if comp._original is not None and comp.name:
                self.weight_absmax[comp.name] = comp._original
                comp._original = None
        self.pending = [c for c in self.pending if c._original is not None]

    def global_scale(self, name: str) -> torch.Tensor | None:
        args = self.scheme.weights
        if args.strategy != "tensor_group":
            return None
        found = [self.weight_absmax[n] for n in schemes.fused_partners(name) if n in self.weight_absmax]
        return schemes.global_scale_from([(-a, a) for a in found])


class SchemeRTN:
    """Round to nearest per the scheme's weight args (llm-compressor's QuantizationModifier); observes static
    input activations when the scheme has them."""

    def __init__(self, target: Any, config: Any, run: SchemeRun) -> None:
        self.target = target
        self.run = run
        self.name = ""
        self.args = run.scheme.weights
        acts = run.scheme.input_activations
        self.observer = schemes.ActivationObserver(acts) if schemes.has_static_activations(run.scheme) else None
        self._original = None
        if self.args is not None and self.args.strategy == "tensor_group":
            # before any weight of the block changes (all compressors of a group are built first)
            lo, hi = schemes.observe(target.weight.data, self.args, "weight")
            self._original = torch.max(-lo.min(), hi.max())
        run.pending.append(self)

    @property
    def needs_calibration(self) -> bool:
        return self.observer is not None

    def add_batch(self, inp: torch.Tensor) -> None:
        if self.observer is not None:
            self.observer.add(inp)

    def share_statistics_from(self, other: SchemeRTN) -> None:
        self.observer = other.observer

    def use_identity_statistics(self) -> None:  # an expert no token reached: nothing observed
        if self.observer is not None and self.observer.lo is None:
            raise RuntimeError(f"{self.name}: no calibration token reached this expert, so its static input scale "
                               "cannot be calibrated (use moe_calibration=all).")

    def quantize(self, weight: torch.Tensor, global_scale: torch.Tensor | None) -> tuple[torch.Tensor, dict, float | None]:
        """``(quantized weight, qparams, error)``: the weight method (RTN here; GPTQ overrides it)."""
        q, qparams = schemes.quantize_weight(weight, self.args, global_scale)
        return q, qparams, None

    @torch.no_grad()
    def compress(self) -> LayerStats:
        start = time.perf_counter()
        weight = self.target.weight
        rows, columns = weight.shape[-2], weight.shape[-1]
        quant_params: dict[str, torch.Tensor] = {}
        bits = None
        error = None
        self.run.register_pending()
        ignored = schemes.is_ignored(self.name, self.run.config.ignore)
        if ignored:
            bits = float(torch.finfo(weight.dtype).bits)
        elif self.args is not None:
            q, qparams, error = self.quantize(weight.data, self.run.global_scale(self.name))
            weight.data.copy_(q)
            quant_params.update({f"weight_{k}": v.detach().cpu() for k, v in qparams.items()})
            bits = schemes.weight_bits_per_weight(self.args, rows, columns, weight.dtype)
        if self.observer is not None and not ignored:
            for k, v in self.observer.qparams(weight.dtype).items():
                quant_params[f"input_{k}"] = v.detach().cpu()
        return LayerStats(numel=weight.numel(), zeros=count_zeros(weight.data), seconds=time.perf_counter() - start,
                          error=error, bits_per_weight=bits, quant_params=quant_params)

    def free(self) -> None:
        if self.observer is not None:
            self.observer = None


class SchemeGPTQ(SchemeRTN):
    """GPTQ on the scheme's grid (llm-compressor's GPTQModifier): the grid's scales / zero points / global scale
    fixed on the unquantized weight, then kick's GPTQ solver (:func:`kick_models.compress.gptq.gptq_quantize`)
    quantizes column by column with error feedback through the Hessian of the calibration inputs."""

    def __init__(self, target: Any, config: Any, run: SchemeRun) -> None:
        super().__init__(target, config, run)
        from kick_models.compress.hessian import HessianAccumulator

        self.config = config
        self.hessian = HessianAccumulator(target.weight.shape[-1], target.weight.device)
        self.damp_used: float | None = None

    @property
    def needs_calibration(self) -> bool:
        return True

    def add_batch(self, inp: torch.Tensor) -> None:
        super().add_batch(inp)
        self.hessian.add_batch(inp)

    def share_statistics_from(self, other: SchemeGPTQ) -> None:
        super().share_statistics_from(other)
        self.hessian = other.hessian

    def use_identity_statistics(self) -> None:
        super().use_identity_statistics()
        if self.hessian.nsamples == 0:
            H = self.hessian.H
            self.hessian.H = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)

    def quantize(self, weight: torch.Tensor, global_scale: torch.Tensor | None) -> tuple[torch.Tensor, dict, float | None]:
        from kick_models.compress.gptq import gptq_quantize

        qparams = schemes.weight_qparams(weight, self.args, global_scale)
        grid = schemes.column_quantizer(qparams, self.args)
        used: dict = {}
        q, _, loss = gptq_quantize(weight.float(), self.hessian.H, 0, blocksize=self.config.blocksize,
                                   damp=self.config.damp, name=self.name, record=used, column_quantizer=grid)
        self.damp_used = used.get("damp")
        return q.to(weight.dtype), qparams, loss

    @torch.no_grad()
    def compress(self) -> LayerStats:
        stats = super().compress()
        stats.damp = self.damp_used
        return stats

    def free(self) -> None:
        super().free()
        self.hessian = None  # a sibling Linear may share the accumulator: drop the reference only


# awq: the AWQ block transform (kick_models.compress.transforms) first, then the scheme's round to nearest
SCHEME_METHODS: dict[str, type] = {"rtn": SchemeRTN, "gptq": SchemeGPTQ, "awq": SchemeRTN}


def make_compressor_factory(config):
    """``target -> compressor`` for :func:`kick_models.compress.sequential.compress_layers` (one shared
    :class:`SchemeRun` per call)."""
    run = SchemeRun(config)
    cls = SCHEME_METHODS[config.method]
    return lambda target: cls(target, config, run)


def check_model(model: torch.nn.Module, config) -> None:
    """Before any work: every weight the scheme quantizes fits its groups / blocks, and activation schemes
    only target real ``nn.Linear`` modules (a run-time input hook needs one)."""
    from kick_models.compress.sequential import find_decoder_layers, layer_targets

    scheme = config.quantization_scheme()
    path, layers = find_decoder_layers(model)
    for index, layer in enumerate(layers):
        for name, target in layer_targets(layer).items():
            full = f"{path}.{index}.{name}"
            if schemes.is_ignored(full, config.ignore):
                continue
            if scheme.weights is not None:
                schemes.check_weight_shape(scheme.weights, tuple(target.weight.shape), full)
            acts = scheme.input_activations
            if acts is not None:
                if not isinstance(target.module, torch.nn.Linear) or target.param != f"{name}.weight":
                    from kick_models.compress.errors import CompressionConfigError

                    raise CompressionConfigError(
                        f"{full}: scheme {config.scheme} quantizes input activations at run time, which needs an "
                        f"nn.Linear module; this matrix is part of {target.param} (fused experts). Use a weight-only "
                        f"scheme (e.g. {config.scheme}A16 / W4A16) or ignore it (ignore=...).")
                if acts.strategy in ("group", "tensor_group") and target.in_features % acts.group_size:
                    from kick_models.compress.errors import CompressionConfigError

                    raise CompressionConfigError(
                        f"{full}: input width {target.in_features} is not a multiple of the activation group size "
                        f"{acts.group_size} of scheme {config.scheme}; pass group_size= or ignore the layer.")


def attach_activation_quantization(model: torch.nn.Module, config, layers: list) -> int:
    """Hook run-time input fake-quantization on every quantized Linear (static scales from the layer records).
    Returns how many modules were hooked."""
    scheme = config.quantization_scheme()
    acts = scheme.input_activations
    if acts is None:
        return 0
    count = 0
    for stats in layers:
        if schemes.is_ignored(stats.name, config.ignore):
            continue
        module = model.get_submodule(stats.name)
        qparams = {k[len("input_"):]: v for k, v in stats.quant_params.items() if k.startswith("input_")}
        if schemes.has_static_activations(scheme) and not qparams:
            raise RuntimeError(f"{stats.name}: no calibrated input scale recorded for scheme {config.scheme}")
        device = module.weight.device if module.weight.device.type != "meta" else torch.device("cpu")
        schemes.attach_input_quantization(module, acts, {k: v.to(device) for k, v in qparams.items()})
        count += 1
    return count
