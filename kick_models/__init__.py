"""kick_models: load-time compression of Hugging Face causal LMs for lm-eval.

Public API (imported lazily so that ``import kick_models`` stays cheap):

* :func:`prune` - magnitude / Wanda / SparseGPT on an in-memory model.
* :func:`quantize` - GPTQ / RTN fake quantization on an in-memory model.
* ``kick_models.api.compress(model, tokenizer, config)`` - the typed-config entry both use
  (``kick_models.compress`` is the subpackage with the algorithms).
* lm-eval model classes in :mod:`kick_models.lm` (``kick-pruned``, ``kick-gptq``).
* :mod:`kick_models.data` - the ONE data resolver (local data dir, online source, provenance) that
  calibration, the tasks and the judge share.

The bottom layer: imports nothing from ``kick_tasks`` or ``kick_analysis`` (tests/test_layering.py).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "prune": "kick_models.api",
    "quantize": "kick_models.api",
    "CompressionReport": "kick_models.compress.report",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kick_models' has no attribute {name!r}")


__all__ = list(_LAZY)
