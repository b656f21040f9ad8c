"""Old import paths of modules that moved out of ``kick_tasks`` (issue 17): one release of re-exports.

Each old module (``kick_tasks/sweep.py`` ...) is a two-line shim calling :func:`moved`, which warns once
(``DeprecationWarning`` naming the new path) and makes the old name an alias of the new module, so
``from kick_tasks.sweep import main``, ``kick_tasks.report.collect`` and monkeypatching through the old
path all reach the one implementation.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType


def moved(old: str, new: str, alias: bool = True) -> ModuleType:
    """Warn that ``old`` is now ``new``, make ``sys.modules[old]`` the new module (unless ``alias`` is False:
    ``python -m kick_tasks.cli``, where the shim runs as ``__main__``) and return it."""
    warnings.warn(f"{old} moved to {new}; import {new} instead (the old path goes in the next release)",
                  DeprecationWarning, stacklevel=2)
    module = importlib.import_module(new)
    if alias:
        sys.modules[old] = module
    return module
