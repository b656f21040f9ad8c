"""Write a compressed model as a plain Hugging Face checkpoint.

    save_compressed(model, tokenizer, report, "out/llama-wanda50")
    lm_eval --model hf --model_args pretrained=out/llama-wanda50 ...

The folder holds what ``save_pretrained`` writes (``config.json``, ``model.safetensors``,
generation config, tokenizer files) plus:

* ``kick_compression.json``: the report summary, per-layer statistics, versions and the
  source model, so a reader knows what was done to the weights;
* ``quant_params.safetensors`` (GPTQ / RTN only): ``<linear>.scales``, ``.zeros``, ``.g_idx``,
  everything needed to produce a packed int checkpoint from the fake-quantized weights.

Models loaded from GGUF carry ``config.quantization_config`` (GGUF, dequantized at load
time) and refuse ``save_pretrained``; the weights in memory are ordinary tensors, so the
GGUF quantizer and config are detached while saving: the export is a normal dense
checkpoint of the compressed weights.

The folder is written to a temporary sibling and renamed into place (:func:`staged_folder`); an
existing folder is replaced only when it is a previous kick export (has ``kick_compression.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

REPORT_FILE = "kick_compression.json"
QUANT_PARAMS_FILE = "quant_params.safetensors"


class ExportError(ValueError):
    """``save_compressed`` cannot write to the requested folder."""


def check_export_target(path: str | os.PathLike) -> Path:
    """Validate an export folder before any work is done; returns it resolved.

    OK: a missing folder whose parent can be created, an empty folder, or a previous kick
    export (it will be replaced). Not OK: a file, or a folder with other content.
    """
    target = Path(path).expanduser().resolve()
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"save_compressed={path!r} is a file; give a folder path for the checkpoint")
        if any(target.iterdir()) and not (target / REPORT_FILE).is_file():
            raise ExportError(
                f"save_compressed={path!r} is a non-empty folder that is not a previous kick export; "
                "give a new or empty folder (an existing kick export is replaced)"
            )
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ExportError(f"save_compressed={path!r}: cannot create it, {parent} is not writable")
    return target


@contextmanager
def staged_folder(target: Path):
    """Yield a new temporary sibling of ``target`` to write a folder into; when the block succeeds it
    replaces ``target`` (a previous folder is moved aside first, then deleted), when it fails it is
    removed. Readers never see a half-written folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{time.time_ns()}")
            os.replace(target, old)
        os.replace(tmp, target)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def without_gguf_quantizer(model):
    """Temporarily detach the GGUF load-time quantizer (see module docstring)."""
    config = model.config
    qc = getattr(config, "quantization_config", None)
    method = getattr(qc, "quant_method", None) if qc is not None else None
    if isinstance(qc, dict):
        method = qc.get("quant_method")
    if str(getattr(method, "value", method)).lower() != "gguf":
        yield
        return
    quantizer = getattr(model, "hf_quantizer", None)
    model.hf_quantizer = None
    del config.quantization_config
    try:
        yield
    finally:
        model.hf_quantizer = quantizer
        config.quantization_config = qc


def versions() -> dict:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import kick_models

        out["kick"] = kick_models.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        from importlib.metadata import version

        out["lm_eval"] = version("lm_eval")
    except Exception:  # noqa: BLE001
        pass
    return out


def compression_record(model, report: Any, source: dict | None = None, extra: dict | None = None) -> dict:
    """What goes into ``kick_compression.json``."""
    from kick_models.cache import report_to_json

    record = {
        "summary": report.summary(),
        "layers": report_to_json(report).get("layers", []),
        "transforms": report_to_json(report).get("transforms", []),
        "source_model": source or {"name_or_path": getattr(model, "name_or_path", "")},
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        record.update(extra)
    return json.loads(json.dumps(record, default=str))


def save_compressed(
    model,
    tokenizer,
    report: Any,
    path: str | os.PathLike,
    *,
    source: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Save ``model`` (already compressed in place) + tokenizer + report as an HF checkpoint at ``path``."""
    from kick_models.cache import write_safetensors_streaming
    from kick_models.compress.placement import save_pretrained_kwargs

    target = check_export_target(path)
    with staged_folder(target) as tmp:
        with without_gguf_quantizer(model):
            model.save_pretrained(tmp, safe_serialization=True, **save_pretrained_kwargs(model))  # offloaded too
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = compression_record(model, report, source=source, extra=extra)
        qp = report.quant_params()  # streamed one tensor at a time (spilled ones read from their file)
        if qp:
            write_safetensors_streaming(tmp / QUANT_PARAMS_FILE, qp.specs(), qp.__getitem__,
                                        metadata={"format": "kick-gptq", "wbits": str(report.config.get("wbits"))})
            record["quant_params_file"] = QUANT_PARAMS_FILE
        (tmp / REPORT_FILE).write_text(json.dumps(record, indent=2))
    return target
