"""THE entry point every door uses (lm-eval model classes, Python users, ``kick sweep``, benchmarks).

    from kick_models import prune, quantize
    report = prune(model, tokenizer, method="wanda", sparsity=0.5)             # C4 calibration
    report = prune(model, tokenizer, method="sparsegpt", sparsity_type="2:4", calibration=tokens)
    report = quantize(model, tokenizer, method="gptq", wbits=4, groupsize=128)  # WikiText-2 calibration
    print(report.summary())

All compression is in place, one decoder layer at a time on ``device`` (default: the model's).
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from kick_models.compress import placement
from kick_models.compress.base import LayerStats
from kick_models.compress.calibration import fingerprint, load_calibration, model_max_positions
from kick_models.compress.config import (
    CalibrationConfig,
    CompressionConfigError,
    PruneConfig,
    QuantConfig,
    SchemeConfig,
)
from kick_models.compress.gptq import GPTQQuantizer
from kick_models.compress.magnitude import MagnitudePruner
from kick_models.compress.nm import count_zeros
from kick_models.compress.report import CompressionReport
from kick_models.compress.rtn import RTNQuantizer
from kick_models.compress.sequential import check_expert_layouts, check_nm_widths, compress_layers, find_decoder_layers, layer_targets, linear_modules
from kick_models.compress.sparsegpt import SparseGPTPruner
from kick_models.compress.targets import block_roles, measure_block
from kick_models.compress.wanda import WandaPruner

logger = logging.getLogger(__name__)

#: Part of every compressed-weights cache key: bump it whenever an algorithm's output changes,
#: so stale cache entries are never loaded.
ALGORITHM_VERSION = "kick-compress-4"  # 2: reference "<= threshold" rule (SparseGPT, magnitude); 3: fused MoE
# experts, Conv1D and every >= 2-D block weight measured (entries before 3 left MoE experts dense); 4: layer
# outputs carried as the model hands them on (GLM-DSA top-k), expert layouts read from the module (Llama 4,
# DBRX experts and router), Linears no calibration input reaches kept

ALGORITHMS = {
    "magnitude": MagnitudePruner,
    "wanda": WandaPruner,
    "sparsegpt": SparseGPTPruner,
    "gptq": GPTQQuantizer,
    "rtn": RTNQuantizer,
}

__all__ = ["compress", "prune", "quantize", "CompressionReport"]


def _check_tokens(tokens: torch.Tensor, max_positions: int | None) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise CompressionConfigError(
            f"Invalid calibration tensor: expected integer token ids of shape [nsamples, seqlen], got "
            f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}.")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise CompressionConfigError(f"Invalid calibration tensor: empty shape {tuple(tokens.shape)}.")
    if max_positions is not None and tokens.shape[1] > max_positions:
        raise CompressionConfigError(
            f"Invalid calibration tensor: seqlen {tokens.shape[1]} exceeds the model's max positions {max_positions}.")
    return tokens.long()


def uncovered_weights(model: nn.Module) -> list[str]:
    """Names of the decoder blocks' >= 2-D parameters that no compression handler covers and that are not
    routers (structure only: no value is read, so it works before calibration and on offloaded models)."""
    path, layers = find_decoder_layers(model)
    return [f"{path}.{i}.{name}" for i, layer in enumerate(layers)
            for name, role in block_roles(layer, linear_modules(layer)).items() if role == "uncovered"]


def check_coverage(model: nn.Module, config: PruneConfig | QuantConfig) -> None:
    """Refuse a model whose blocks hold weights no handler compresses, unless ``config.allow_partial``."""
    missing = uncovered_weights(model)
    if not missing:
        return
    shown = ", ".join(missing[:12]) + (f" ... ({len(missing)} in all)" if len(missing) > 12 else "")
    if not config.allow_partial:
        raise CompressionConfigError(
            f"{type(model).__name__}: the decoder blocks hold >= 2-D weights that kick cannot compress: {shown}. "
            "The reported sparsity/bits would not describe the model you asked for. Pass allow_partial=true to "
            "compress the rest anyway (the results then record the partial coverage).")
    logger.warning("allow_partial=true: %d block weight(s) stay as they are (no compression handler): %s",
                   len(missing), shown)


def measure_layer(layer: nn.Module, path: str, index: int) -> tuple[list[LayerStats], list[dict]]:
    """Without changing anything: stats of the block's compression targets and the record of every >= 2-D weight
    (values read: the layer must be on a real device)."""
    prefix = f"{path}.{index}"
    stats = [LayerStats(name=f"{prefix}.{n}", numel=t.weight.numel(), zeros=count_zeros(t.weight.data), block=index,
                        param=f"{prefix}.{t.param}", expert=t.expert, in_features=t.in_features)
             for n, t in layer_targets(layer).items()]
    return stats, measure_block(layer, block_roles(layer, linear_modules(layer)), prefix, index)


def _measured_only(model: nn.Module) -> tuple[list[LayerStats], list[dict]]:
    """Stats of every decoder target and block weight without changing anything (sparsity 0)."""
    path, layers = find_decoder_layers(model)
    stats: list[LayerStats] = []
    weights: list[dict] = []
    fallback = placement.model_device(model)
    for i, layer in enumerate(layers):
        with placement.onloaded(layer, placement.execution_device(layer) or fallback, write_back=False):  # offloaded
            s, w = measure_layer(layer, path, i)
        stats += s
        weights += w
    return stats, weights


def compress(model: nn.Module, tokenizer, config: PruneConfig | QuantConfig, calibration: torch.Tensor | None = None,
             device: str | torch.device | None = None, batch_size: int | None = None,
             progress: bool = True) -> CompressionReport:
    """Compress ``model`` in place per ``config``; return a :class:`CompressionReport`.

    ``calibration``: explicit token ids ``[nsamples, seqlen]``; else built from ``config.calibration``.
    ``device``: compute device for one decoder layer at a time (default: the model's device).
    """
    if not isinstance(config, (PruneConfig, QuantConfig, SchemeConfig)):
        raise TypeError(f"config must be a PruneConfig, QuantConfig or SchemeConfig, got {type(config).__name__}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise CompressionConfigError(f"Invalid batch_size={batch_size!r}: expected a positive integer or None.")
    if device is not None:
        device = placement.check_compute_device(device, "device")
    start = time.perf_counter()
    model.eval()
    path, layers = find_decoder_layers(model)
    check_coverage(model, config)
    check_expert_layouts(model)
    block_transform = None
    if isinstance(config, SchemeConfig):
        from kick_models.compress import scheme_quant, transforms

        scheme_quant.check_model(model, config)  # group / block widths refused before any work
        block_transform = transforms.scheme_block_transform(model, config)  # AWQ / SmoothQuant: layouts checked
        make_compressor = (transforms.reference_compressor_factory(config)
                           or scheme_quant.make_compressor_factory(config))
    else:
        algorithm = ALGORITHMS[config.method]
        make_compressor = lambda target: algorithm(target, config)  # noqa: E731
    if isinstance(config, PruneConfig):
        if config.nm is not None:
            check_nm_widths(model, layers, path, config.nm[1])
        if config.sparsity == 0:
            logger.info("sparsity=0: nothing to prune")
            stats, weights = _measured_only(model)
            return CompressionReport(config.method, config.to_dict(), stats, time.perf_counter() - start, weights=weights)
    tokens = None
    if config.needs_calibration:
        max_positions = model_max_positions(model)
        if calibration is None:
            tokens = load_calibration(config.calibration, tokenizer, max_positions)
        else:
            tokens = _check_tokens(calibration, max_positions)
    elif calibration is not None:
        raise CompressionConfigError(f"method={config.method} uses no calibration data; do not pass calibration.")
    weights: list[dict] = []
    transformed: list[dict] = []
    stats = compress_layers(
        model,
        make_compressor,
        needs_calibration=config.needs_calibration,
        tokens=tokens,
        device=device,
        batch_size=batch_size,
        true_sequential=getattr(config, "true_sequential", False),
        progress=progress,
        desc=config.method,
        moe_calibration=config.moe_calibration,
        block_weights=weights,
        block_transform=block_transform,
        transforms=transformed,
    )
    report = CompressionReport(config.method, config.to_dict(), stats, time.perf_counter() - start,
                               fingerprint(tokens) if tokens is not None else None, weights, transformed)
    apply_runtime(model, config, report)
    for name, damp in report.damp_raised().items():
        logger.warning("%s: Hessian damping raised from %g to %g to factorize", name, config.damp, damp)
    few = (report.expert_tokens() or {}).get("under_input_width")
    if few:
        logger.warning("%d expert matrix(es) saw fewer calibration tokens than their input width "
                       "(moe_calibration=%s): %s", len(few), config.moe_calibration,
                       ", ".join(f"{n}={t}" for n, t in list(few.items())[:8]) + (" ..." if len(few) > 8 else ""))
    logger.info("%s done in %.1fs: %s", config.method, report.seconds,
                {k: v for k, v in report.summary().items() if k != "config"})
    return report


def apply_runtime(model: nn.Module, config, report: CompressionReport) -> None:
    """What the weights alone do not hold: a scheme's run-time input activation fake-quantization (after a
    compression, and after loading compressed weights from the cache)."""
    if isinstance(config, SchemeConfig):
        from kick_models.compress import scheme_quant, transforms

        if not transforms.attach_reference_runtime(model, config, report.layers):
            scheme_quant.attach_activation_quantization(model, config, report.layers)


def _no_calibration(method: str, calibration: str | torch.Tensor | None) -> None:
    if isinstance(calibration, torch.Tensor):
        raise CompressionConfigError(f"method={method} uses no calibration data; do not pass calibration tokens.")


def _calibration(calibration: str | torch.Tensor, nsamples: int, seqlen: int, seed: int
                 ) -> tuple[CalibrationConfig, torch.Tensor | None]:
    """The calibration config (``source="tensor"`` for explicit token ids) and the explicit tokens, if any."""
    if isinstance(calibration, torch.Tensor):
        return CalibrationConfig(source="tensor", nsamples=max(1, calibration.shape[0]),
                                 seqlen=max(1, calibration.shape[-1]), seed=seed), calibration
    return CalibrationConfig(source=calibration, nsamples=nsamples, seqlen=seqlen, seed=seed), None


def prune(model: nn.Module, tokenizer, method: str = "wanda", sparsity: float | None = None,
          sparsity_type: str = "unstructured", calibration: str | torch.Tensor = "c4", nsamples: int = 128,
          seqlen: int = 2048, seed: int = 0, use_variant: bool = False, blocksize: int = 128, damp: float = 0.01,
          device: str | torch.device | None = None, batch_size: int | None = None,
          progress: bool = True, moe_calibration: str = "all", allow_partial: bool = False) -> CompressionReport:
    """Prune ``model`` in place with magnitude, Wanda or SparseGPT (``sparsity`` defaults to 0.5, or N/M).

    ``moe_calibration``: ``all`` | ``routed``, which tokens MoE experts' statistics see; ``allow_partial``:
    proceed when the blocks hold weights no handler compresses (else refused)."""
    if method == "magnitude":
        _no_calibration(method, calibration)
        calib_cfg, tokens = CalibrationConfig(), None
    else:
        calib_cfg, tokens = _calibration(calibration, nsamples, seqlen, seed)
    config = PruneConfig(method=method, sparsity=sparsity, sparsity_type=sparsity_type, use_variant=use_variant,
                         blocksize=blocksize, damp=damp, calibration=calib_cfg, moe_calibration=moe_calibration,
                         allow_partial=allow_partial)
    return compress(model, tokenizer, config, tokens, device, batch_size, progress)


def quantize(model: nn.Module, tokenizer, method: str | None = None, wbits: int = 4, groupsize: int = 128,
             act_order: bool = False, sym: bool = False, static_groups: bool = False, true_sequential: bool = False,
             damp: float = 0.01, blocksize: int = 128, calibration: str | torch.Tensor | None = "wikitext2",
             nsamples: int = 128, seqlen: int = 2048, seed: int = 0, device: str | torch.device | None = None,
             batch_size: int | None = None, progress: bool = True, moe_calibration: str = "all",
             allow_partial: bool = False, scheme: str | None = None, ignore: tuple[str, ...] | str = ("lm_head",),
             group_size: int | None = None, smoothquant: float | None = None, quantizer: str = "scheme",
             duo_scaling: bool = False) -> CompressionReport:
    """Fake-quantize ``model`` in place (``moe_calibration``/``allow_partial``: see :func:`prune`).

    Without ``scheme``: kick's integer GPTQ (default) or RTN (``wbits``, ``groupsize``, ``sym`` ...).
    With ``scheme`` (compressed-tensors' preset names: ``FP8``, ``FP8_DYNAMIC``, ``NVFP4``, ``W4A16`` ...):
    the scheme's format, weights by ``method`` (rtn default | gptq), input activations fake-quantized at run
    time; ``ignore`` module names / ``re:`` patterns kept as they are; ``group_size`` overrides the scheme's
    group; ``calibration`` is needed by gptq and static activation scales (None otherwise). ``method="awq"``
    (schemes W4A16, W4A16_ASYM, W8A16) and ``smoothquant=<alpha>`` (activation schemes) transform each block
    first (:mod:`kick_models.compress.transforms`); ``quantizer="reference"`` quantizes with their reference
    code's arithmetic; ``duo_scaling``: llm-compressor's AWQ scale formula.
    """
    if scheme is not None:
        method = method or "rtn"
        if calibration == "wikitext2":  # the integer path's default: not a request for data
            calibration = None
        calib_cfg, tokens = (None, None) if calibration is None else _calibration(calibration, nsamples, seqlen, seed)
        config = SchemeConfig(scheme=scheme, method=method, ignore=ignore, group_size=group_size, damp=damp,
                              blocksize=blocksize, calibration=calib_cfg, moe_calibration=moe_calibration,
                              allow_partial=allow_partial, smoothquant=smoothquant, quantizer=quantizer,
                              duo_scaling=duo_scaling)
        return compress(model, tokenizer, config, tokens, device, batch_size, progress)
    method = method or "gptq"
    if method == "rtn":
        _no_calibration(method, calibration)
        calib_cfg, tokens = CalibrationConfig(source="wikitext2"), None
    else:
        calib_cfg, tokens = _calibration(calibration, nsamples, seqlen, seed)
    config = QuantConfig(method=method, wbits=wbits, groupsize=groupsize, act_order=act_order, sym=sym,
                         static_groups=static_groups, true_sequential=true_sequential, damp=damp, blocksize=blocksize,
                         calibration=calib_cfg, moe_calibration=moe_calibration, allow_partial=allow_partial)
    return compress(model, tokenizer, config, tokens, device, batch_size, progress)
