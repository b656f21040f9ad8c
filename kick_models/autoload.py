"""Lazy start-up hook that makes the kick models and tasks visible to lm-eval.

lm-eval 0.4.13 has no plugin discovery, so ``kick_autoload.pth`` (installed
into site-packages with the wheel) calls :func:`install` at interpreter start.
``install`` only appends a tiny import hook to ``sys.meta_path``: it imports
neither torch nor lm_eval. When (and only when) lm-eval itself is imported,
the hook patches two things right after the module has executed:

* ``lm_eval.api.registry.get_model``: makes sure lm-eval's built-in models are
  imported first (so ``--model hf`` keeps working) and then registers the kick
  models lazily (``"kick_models.lm:KickPrunedLM"``).
* ``lm_eval.tasks.manager.TaskManager.__init__``: appends the kick task folder
  to ``include_path``, so ``--tasks 'kick_*'`` and ``lm_eval ls tasks`` see
  the kick tasks without ``--include_path``.

Set ``KICK_NO_AUTOLOAD=1`` to turn the hook off.
"""

from __future__ import annotations

import sys

#: lm-eval model name -> "module:Class" (materialised on first use).
KICK_MODELS = {
    "kick-pruned": "kick_models.lm:KickPrunedLM",
    "kick-gptq": "kick_models.lm:KickQuantizedLM",
    "kick-rtn": "kick_models.lm:KickRTNLM",
    "kick-bnb": "kick_models.lm:KickBitsAndBytesLM",
}

_WATCHED = ("lm_eval.api.registry", "lm_eval.tasks.manager")


def task_yaml_dir() -> str:
    """Folder holding the kick task YAMLs (works for wheel and editable installs)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("task_yaml")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "task_yaml")


def register_models() -> None:
    """Register the kick models with lm-eval's model registry (idempotent)."""
    from lm_eval.api import registry

    if len(registry.model_registry) == 0:
        import lm_eval.models  # noqa: F401  built-ins first, see module docstring
    for name, target in KICK_MODELS.items():
        if name not in registry.model_registry:
            registry.model_registry.register(name, target=target)


def _patch_registry(module) -> None:
    original = module.get_model
    if getattr(original, "_kick_patched", False):
        return

    def get_model(model_name: str):
        register_models()
        return original(model_name)

    get_model._kick_patched = True  # type: ignore[attr-defined]
    get_model.__doc__ = original.__doc__
    module.get_model = get_model


def _patch_task_manager(module) -> None:
    cls = module.TaskManager
    original = cls.__init__
    if getattr(original, "_kick_patched", False):
        return

    def __init__(self, *args, include_path=None, **kwargs):
        return original(self, *args, include_path=with_kick_tasks(include_path), **kwargs)

    __init__._kick_patched = True  # type: ignore[attr-defined]
    cls.__init__ = __init__


def with_kick_tasks(include_path):
    """``include_path`` (None, a path, or a list) plus the kick task folder."""
    kick = task_yaml_dir()
    if include_path is None:
        return [kick]
    paths = list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    if kick not in [str(p) for p in paths]:
        paths.append(kick)
    return paths


_PATCHES = {"lm_eval.api.registry": _patch_registry, "lm_eval.tasks.manager": _patch_task_manager}


class _PatchingLoader:
    def __init__(self, wrapped, name):
        self._wrapped = wrapped
        self._name = name

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        self._wrapped.exec_module(module)
        _PATCHES[self._name](module)


class _Finder:
    def find_spec(self, fullname, path, target=None):
        if fullname not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Install the lazy hook (called from ``kick_autoload.pth``)."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    # lm-eval already imported (e.g. install() called late from the kick CLI).
    for name in _WATCHED:
        if name in sys.modules:
            _PATCHES[name](sys.modules[name])
    sys.meta_path.insert(0, _Finder())


def ensure_loaded() -> None:
    """Eager variant for the Python API and the ``kick`` CLI."""
    install()
    import lm_eval.tasks.manager  # noqa: F401  (triggers the patch)
    import lm_eval.api.registry  # noqa: F401
