"""Lazy start-up hook that makes the kick models and tasks visible to lm-eval.

lm-eval 0.4.x has no plugin discovery, so ``kick_autoload.pth`` (installed
into site-packages with the wheel) calls :func:`install` at interpreter start.
``install`` only appends a tiny import hook to ``sys.meta_path``: it imports
neither torch nor lm_eval. When (and only when) lm-eval itself is imported,
the hook patches two things right after the module has executed:

* ``lm_eval.api.registry.get_model``: makes sure lm-eval's built-in models are
  imported first (so ``--model hf`` keeps working) and then registers the kick
  models (lazily, ``"kick_models.lm:KickPrunedLM"``, where the registry can:
  lm-eval >= 0.4.10; on 0.4.9 the class of the requested model is imported).
* ``TaskManager.__init__`` (``lm_eval.tasks.manager`` from lm-eval 0.4.12,
  ``lm_eval.tasks`` before): appends the kick task folder to ``include_path``,
  so ``--tasks 'kick_*'`` and ``lm_eval ls tasks`` see the kick tasks without
  ``--include_path``.

On an lm-eval or transformers outside the supported range
(:mod:`kick_models.versions`) nothing is patched; asking for a kick model or
kick task then stops with one error naming the range.

Set ``KICK_NO_AUTOLOAD=1`` to turn the hook off.
"""

from __future__ import annotations

import os
import sys

#: lm-eval model name -> "module:Class" (materialised on first use).
KICK_MODELS = {
    "kick-pruned": "kick_models.lm:KickPrunedLM",
    "kick-gptq": "kick_models.lm:KickQuantizedLM",
    "kick-rtn": "kick_models.lm:KickRTNLM",
    "kick-quant": "kick_models.lm:KickQuantSchemeLM",
    "kick-bnb": "kick_models.lm:KickBitsAndBytesLM",
    "kick-hf": "kick_models.lm:KickHFLM",
}

#: ``KICK_TASKS_ONLY=1``: lm-eval's TaskManager indexes kick's task folder (and ``--include_path``) only, not its
#: ~15,000 built-in task files (``kick sweep`` sets it in its children when kick's folder holds every task asked for)
TASKS_ONLY_ENV = "KICK_TASKS_ONLY"

# lm_eval.tasks.manager exists from lm-eval 0.4.12; before, TaskManager lives in lm_eval.tasks.
_WATCHED = ("lm_eval.api.registry", "lm_eval.tasks", "lm_eval.tasks.manager")


def task_yaml_dir() -> str:
    """Folder holding the kick task YAMLs (works for wheel and editable installs)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("task_yaml")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "task_yaml")


def register_models(names=None) -> None:
    """Register the kick models (all, or ``names``) with lm-eval's model registry (idempotent)."""
    from lm_eval.api import registry

    lazy = getattr(registry, "model_registry", None)
    if lazy is not None and hasattr(lazy, "register"):  # lm-eval >= 0.4.10: lazy "module:Class" targets
        if len(lazy) == 0:
            import lm_eval.models  # noqa: F401  built-ins first, see module docstring
        for name, target in KICK_MODELS.items():
            if name not in lazy:
                lazy.register(name, target=target)
        return
    # lm-eval 0.4.9: a plain dict of classes, filled by importing lm_eval.models.
    import importlib

    import lm_eval.models  # noqa: F401

    for name in names or KICK_MODELS:
        if name not in registry.MODEL_REGISTRY:
            module, cls = KICK_MODELS[name].split(":")
            registry.MODEL_REGISTRY[name] = getattr(importlib.import_module(module), cls)


def _patch_registry(module) -> None:
    original = module.get_model
    if getattr(original, "_kick_patched", False):
        return

    def get_model(model_name: str):
        if model_name in KICK_MODELS:
            from kick_models.versions import check

            check()
            register_models([model_name])
        elif hasattr(module, "model_registry"):  # lazy registry: list the kick models too
            if supported():
                register_models()
        elif not module.MODEL_REGISTRY:  # lm-eval 0.4.9: built-ins register when lm_eval.models is imported
            import lm_eval.models  # noqa: F401
        return original(model_name)

    get_model._kick_patched = True  # type: ignore[attr-defined]
    get_model.__doc__ = original.__doc__
    module.get_model = get_model


def _patch_task_manager(module) -> None:
    cls = module.__dict__.get("TaskManager")  # not getattr: never trigger a lazy import from here
    if cls is None:
        return
    original = cls.__init__
    if getattr(original, "_kick_patched", False):
        return

    code = original.__code__
    only_kick = (os.environ.get(TASKS_ONLY_ENV) == "1"
                 and "include_defaults" in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])

    def __init__(self, *args, include_path=None, **kwargs):
        if only_kick:  # set by kick sweep when kick's folder holds every requested task: skip indexing the built-ins
            kwargs.setdefault("include_defaults", False)
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


def supported() -> bool:
    """True when lm-eval and transformers are in the supported range (see :mod:`kick_models.versions`)."""
    from kick_models.versions import problems

    return not problems()


def _apply(name: str, module) -> None:
    if name == "lm_eval.api.registry":
        _patch_registry(module)  # always: a requested kick model gets the version error from there
        if not supported():
            from kick_models.versions import refuse_kick_command_line

            refuse_kick_command_line(sys.argv)
    elif supported():
        _patch_task_manager(module)


class _PatchingLoader:
    def __init__(self, wrapped, name):
        self._wrapped = wrapped
        self._name = name

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        self._wrapped.exec_module(module)
        _apply(self._name, module)


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
            _apply(name, sys.modules[name])
    sys.meta_path.insert(0, _Finder())


def ensure_loaded() -> None:
    """Eager variant for the Python API and the ``kick`` CLI (raises on an unsupported lm-eval/transformers)."""
    from kick_models.versions import check

    check()
    install()
    import lm_eval.tasks  # noqa: F401  (triggers the TaskManager patch, wherever it lives)
    import lm_eval.api.registry  # noqa: F401
