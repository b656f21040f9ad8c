"""Write a kick-quant model as a compressed-tensors checkpoint (what llm-compressor writes and vLLM serves).

    save_compressed_tensors(model, tokenizer, report, config, "out/smollm2-nvfp4")
    AutoModelForCausalLM.from_pretrained("out/smollm2-nvfp4")   # with compressed-tensors installed
    vllm serve out/smollm2-nvfp4

The weights in memory are already on the scheme's grid, so compressed-tensors' own compressors pack them
exactly (``nvfp4-pack-quantized``, ``mxfp4-pack-quantized``, ``pack-quantized``, ``float-quantized``,
``int-quantized`` ...); the scales, zero points, global scales and static input scales are the ones kick
computed (the report's per-layer ``quant_params``). ``config.json`` gets the ``quantization_config`` naming the
scheme's args and ``ignore`` list, and ``kick_compression.json`` holds kick's record as for every export.

The export works on a deep copy of the model (compressing packs the weights in place), so it needs the
model's size again in CPU / GPU memory for the time of the export.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from kick_models.compress import schemes
from kick_models.export import (
    REPORT_FILE,
    ExportError,
    check_export_target,
    compression_record,
    staged_folder,
)


def _prepared_copy(model: torch.nn.Module, report: Any, config) -> torch.nn.Module:
    """A copy with compressed-tensors' quantization parameters set from kick's records (kick's hooks removed)."""
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
    )

    clone = copy.deepcopy(model)
    for module in clone.modules():
        schemes.detach_input_quantization(module)
        for key in ("scale", "zero_point", "global_scale"):
            if f"input_{key}" in module.__dict__:
                delattr(module, f"input_{key}")
        if "quantization_status" in module.__dict__:
            delattr(module, "quantization_status")
    scheme = config.quantization_scheme()
    ignored = [s.name for s in report.layers if schemes.is_ignored(s.name, config.ignore)]
    qconfig = QuantizationConfig(config_groups={config.scheme: scheme},
                                 ignore=sorted(set(config.ignore) | set(ignored)))
    apply_quantization_config(clone, qconfig, show_progress=False)
    for stats in report.layers:
        if schemes.is_ignored(stats.name, config.ignore):
            continue
        module = clone.get_submodule(stats.name)
        for key, value in stats.quant_params.items():
            param = getattr(module, key, None)
            if param is None:  # e.g. a zero point the format does not store
                continue
            param.data = value.to(device=param.device, dtype=param.dtype).reshape(param.shape)
    for module in clone.modules():
        if hasattr(module, "quantization_scheme"):
            module.quantization_status = QuantizationStatus.FROZEN
    return clone


def save_compressed_tensors(model: torch.nn.Module, tokenizer, report: Any, config, path: str | os.PathLike, *,
                            source: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` (quantized in place by kick-quant) as a compressed-tensors checkpoint at ``path``."""
    from compressed_tensors.compressors import ModelCompressor

    from kick_models.compress.placement import save_pretrained_kwargs
    from kick_models.export import without_gguf_quantizer

    target = check_export_target(path)
    fused = sorted({s.param for s in report.layers if s.param and s.param != f"{s.name}.weight"})
    if fused:
        raise ExportError(
            f"save_compressed: {len(fused)} matrices live in fused MoE expert tensors ({', '.join(fused[:3])} ...); "
            "compressed-tensors checkpoints quantize per-module Linear weights, so kick cannot write this model in "
            "that format. Evaluate without save_compressed, or load the model with per-expert Linears "
            "(transformers 4.x).")
    if getattr(config, "quantizer", "scheme") != "scheme":  # AWQ / SmoothQuant with the references' arithmetic
        raise ExportError("quantizer=reference: the weights hold the reference code's fake quantization, not the "
                          "scheme's format; export with quantizer=scheme")
    clone = _prepared_copy(model, report, config)
    compressor = ModelCompressor.from_pretrained_model(clone)
    groups = compressor.quantization_config.config_groups
    if len(groups) == 1:  # name the group after the scheme (rebuilt from the modules as "group_0")
        compressor.quantization_config.config_groups = {config.scheme: next(iter(groups.values()))}
    compressor.compress_model(clone)
    with staged_folder(target) as tmp:
        with without_gguf_quantizer(clone):
            clone.save_pretrained(tmp, safe_serialization=True, **save_pretrained_kwargs(clone))
        compressor.update_config(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = compression_record(model, report, source=source, extra=extra)
        record["format"] = {"compressed_tensors": str(compressor.quantization_config.format), "scheme": config.scheme}
        (tmp / REPORT_FILE).write_text(json.dumps(record, indent=2))
    del clone
    return target
