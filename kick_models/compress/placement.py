"""Where a model's weights live, and how one decoder block is brought onto a device and put back.

Large models are often *dispatched* by accelerate (``device_map="auto"``, ``parallelize=True``,
``cpu_offload``, ``disk_offload``): modules carry an ``AlignDevicesHook`` and, when offloaded, their
parameters sit on the ``meta`` device while the real values live in the hook's ``weights_map`` (CPU
RAM or memory-mapped files, possibly the source ``model.safetensors`` itself). Compressing such a
block takes three steps, all in :func:`onloaded`:

1. **onload**: every offloaded submodule is materialized on the compute device with accelerate's own
   ``align_module_device``; other tensors are moved there; every hook of the block is told to run on
   the compute device and to leave the weights alone while the block is being worked on;
2. the caller compresses (and runs) the block;
3. **write back**: the new values go back where they live -- replacing the entry of an in-RAM weights
   map, or written with accelerate's ``offload_weight`` into a NEW folder owned by kick (never into the
   user's checkpoint or offload folder) and chained in front of the hook's original map -- then the
   hooks offload the block again (parameters back to ``meta``) and moved tensors go home.

:func:`read_tensor` / :func:`write_tensor` give the value a module will really use (for the cache,
hashing and measurement); :func:`state_items` streams a model's state dict one tensor at a time.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Devices that hold data and can run a decoder block.
COMPUTE_DEVICE_TYPES = ("cpu", "cuda", "mps")


# --------------------------------------------------------------------------- hooks


def align_hooks(module: nn.Module) -> list[Any]:
    """The accelerate ``AlignDevicesHook`` objects attached to ``module`` itself (inside a SequentialHook too)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    from accelerate.hooks import AlignDevicesHook

    hooks = getattr(hook, "hooks", None) or [hook]
    return [h for h in hooks if isinstance(h, AlignDevicesHook)]


def is_dispatched(model: nn.Module) -> bool:
    """True when accelerate hooks place any part of ``model`` (device map, CPU or disk offload)."""
    return any(align_hooks(m) for m in model.modules())


def is_offloaded(module: nn.Module) -> bool:
    """True when ``module``'s own tensors are offloaded behind an accelerate hook (accelerate's
    ``has_offloaded_params``, also when the hook sits inside a SequentialHook, as ``cpu_offload`` leaves it)."""
    return any(h.offload for h in align_hooks(module))


def _offload_hook(module: nn.Module) -> Any:
    return next(h for h in align_hooks(module) if h.offload)


def _own_tensor_names(module: nn.Module, hook: Any) -> list[str]:
    """The tensors an offload hook manages, exactly as accelerate enumerates them."""
    from accelerate.utils import named_module_tensors

    return [name for name, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                     recurse=hook.place_submodules, remove_non_persistent=True)]


def _device(value: Any) -> torch.device | None:
    if value is None:
        return None
    if isinstance(value, int):
        return torch.device("cuda", value)
    return torch.device(value)


def execution_device(module: nn.Module) -> torch.device | None:
    """Where ``module`` runs: its hooks' execution device, else its first non-meta tensor's device."""
    for m in module.modules():
        for hook in align_hooks(m):
            if hook.execution_device is not None:
                return _device(hook.execution_device)
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if t.device.type != "meta":
                return t.device
    return None


def model_device(model: nn.Module) -> torch.device:
    """The device a dispatched or plain model takes its input ids on (the input embeddings' execution device)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for candidate in (embeddings, model):
        if candidate is not None:
            device = execution_device(candidate)
            if device is not None:
                return device
    return torch.device("cpu")


def check_compute_device(device: Any, what: str = "compress_device") -> torch.device:
    """``device`` as a torch.device that can hold data and compute (cpu, cuda[:i], mps), else a clear error."""
    from kick_models.compress.config import CompressionConfigError

    try:
        parsed = torch.device(str(device)) if not isinstance(device, torch.device) else device
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in COMPUTE_DEVICE_TYPES:
        raise CompressionConfigError(
            f"Invalid {what}={device!r}: expected a device that holds data, one of cpu, cuda, cuda:<index> or mps "
            f"(not meta, disk or other virtual devices).")
    return parsed


# --------------------------------------------------------------------------- kick's offload store


class OffloadStore:
    """A folder of kick's own where compressed weights of disk-offloaded modules are written (one safetensors
    file per tensor, read back by accelerate's ``OffloadedWeightsLoader``). Removed when the model is garbage
    collected or the process exits."""

    def __init__(self, model: nn.Module, near: str | os.PathLike | None):
        base = os.environ.get("KICK_OFFLOAD_DIR") or (str(near) if near and os.path.isdir(near) else None)
        self.folder = tempfile.mkdtemp(prefix="kick-offload-", dir=base)
        from accelerate.utils import OffloadedWeightsLoader

        self.loader = OffloadedWeightsLoader(save_folder=self.folder, index={})
        self._finalizer = weakref.finalize(model, shutil.rmtree, self.folder, True)
        logger.info("kick: compressed weights of disk-offloaded modules go to %s (removed at exit)", self.folder)

    def write(self, key: str, value: torch.Tensor) -> None:
        """One safetensors file per tensor, in the index as accelerate's loader reads a safetensors checkpoint:
        memory-mapped, so evaluating the compressed model reads its weights as file pages the system can drop,
        like the dense model's, instead of anonymous copies (accelerate's ``.dat`` files are copied on every read)."""
        from safetensors.torch import save_file

        path = os.path.join(self.folder, f"{key}.safetensors")
        tmp = path + ".tmp"
        save_file({key: value.detach().to("cpu").contiguous()}, tmp)
        os.replace(tmp, path)  # a value being read by a hook stays valid: its mapping keeps the old file
        self.loader.index[key] = {"safetensors_file": path, "weight_name": key,
                                  "dtype": str(value.dtype).removeprefix("torch.")}
        if key not in self.loader.all_keys:
            self.loader.all_keys.append(key)


def _store_of(model: nn.Module, near: str | None) -> OffloadStore:
    store = model.__dict__.get("_kick_offload_store")
    if store is None:
        store = OffloadStore(model, near)
        model.__dict__["_kick_offload_store"] = store
    return store


def offload_folder(model: nn.Module) -> str | None:
    """kick's offload folder for ``model``, if compressed weights were written to disk."""
    store = model.__dict__.get("_kick_offload_store")
    return store.folder if store is not None else None


# --------------------------------------------------------------------------- read / write one tensor


def _unprefixed(weights_map: Mapping) -> tuple[Mapping, str]:
    from accelerate.utils import PrefixedDataset

    if isinstance(weights_map, PrefixedDataset):
        return weights_map.dataset, weights_map.prefix
    return weights_map, ""


def _write_offloaded(root: nn.Module, qualname: str, hook: Any, name: str, value: torch.Tensor) -> str:
    """Write ``value`` where the offload ``hook`` of module ``qualname`` reads ``name`` from; ``"ram"`` or ``"disk"``."""
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset

    wmap = hook.weights_map
    if isinstance(wmap, collections.ChainMap) and getattr(wmap, "_kick_store", None) is not None:
        wmap._kick_store.write(f"{qualname}.{name}" if qualname else name, value)
        return "disk"
    base, prefix = _unprefixed(wmap)
    key = prefix + name
    cpu = value.detach().to("cpu").contiguous()
    if isinstance(base, OffloadedWeightsLoader) and key in base.state_dict:
        base.state_dict[key] = cpu
        return "ram"
    if isinstance(base, dict):
        base[key] = cpu
        return "ram"
    # Memory-mapped / safetensors-backed weights: a new file of kick's, chained in front of the original map.
    near = getattr(base, "save_folder", None)
    store = _store_of(root, near)
    full = f"{qualname}.{name}" if qualname else name
    store.write(full, value)
    chained = collections.ChainMap(PrefixedDataset(store.loader, f"{qualname}." if qualname else ""), wmap)
    chained._kick_store = store
    hook.weights_map = chained
    return "disk"


def disk_store_folder(root: nn.Module, qualified: str) -> str | None:
    """The folder of kick's offload store when tensor ``qualified`` lives in one of its files, else None."""
    module, qualname, name = _owner(root, qualified)
    if not is_offloaded(module):
        return None
    store = getattr(_offload_hook(module).weights_map, "_kick_store", None)
    key = f"{qualname}.{name}" if qualname else name
    return store.folder if store is not None and key in store.loader.index else None


def _owner(root: nn.Module, qualified: str) -> tuple[nn.Module, str, str]:
    """(module, its qualified name, tensor name) of a dotted tensor name."""
    qualname, _, name = qualified.rpartition(".")
    return (root.get_submodule(qualname) if qualname else root), qualname, name


def read_tensor(root: nn.Module, qualified: str) -> torch.Tensor:
    """The value ``root`` will use for tensor ``qualified`` (offloaded weights read from their hook's map)."""
    module, _, name = _owner(root, qualified)
    tensor = getattr(module, name)
    if tensor.device.type == "meta" and is_offloaded(module):
        return _offload_hook(module).weights_map[name]
    if tensor.device.type == "meta":
        raise RuntimeError(f"{qualified} is on the meta device and no accelerate offload hook holds its value.")
    return tensor.detach()


def write_tensor(root: nn.Module, qualified: str, value: torch.Tensor) -> None:
    """Set tensor ``qualified`` of ``root`` to ``value`` (dtype kept) wherever it lives."""
    module, qualname, name = _owner(root, qualified)
    tensor = getattr(module, name)
    if tuple(tensor.shape) != tuple(value.shape):
        raise ValueError(f"{qualified} has shape {tuple(tensor.shape)}, the new value {tuple(value.shape)}")
    value = value.to(dtype=tensor.dtype)
    if tensor.device.type == "meta" and is_offloaded(module):
        _write_offloaded(root, qualname, _offload_hook(module), name, value)
        return
    with torch.no_grad():
        tensor.data.copy_(value.to(tensor.device))


def state_items(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` over ``model.state_dict()`` in sorted order, offloaded values read one at a time."""
    for name in sorted(model.state_dict(keep_vars=True)):
        yield name, read_tensor(model, name)


# --------------------------------------------------------------------------- one block on a device


@contextlib.contextmanager
def _materialized(module: nn.Module, hook: Any, device: torch.device, private: bool = True) -> Iterator[None]:
    """``module``'s offloaded tensors loaded from the hook's weights map onto ``device`` and dropped back to meta
    after: the calls accelerate's ``align_module_device`` makes, also for a hook inside a SequentialHook.

    ``private``: every tensor that lands on the CPU is copied, so that compressing it in place never writes into
    what the weights map holds. Without the copy, a weight read from a safetensors checkpoint is a view of the
    file's private (copy-on-write) memory map: zeroing half of it turned those pages into anonymous memory that
    lived as long as the mapping, about one block's weights per block (issue 27); an in-RAM weights map would
    have been changed before the write-back, also when the block fails."""
    original = hook.execution_device
    hook.execution_device = device
    try:
        hook.pre_forward(module)
        if private:
            for name in _own_tensor_names(module, hook):
                tensor = _get(module, name)
                if tensor.device.type == "cpu":
                    tensor.data = tensor.data.clone()
        yield
    finally:
        hook.post_forward(module, None)
        hook.execution_device = original


@contextlib.contextmanager
def _hooks_on(modules: list[nn.Module], device: torch.device) -> Iterator[None]:
    """Every align hook of ``modules`` runs on ``device`` and does not (re)load weights meanwhile."""
    saved = []
    for m in modules:
        for hook in align_hooks(m):
            saved.append((hook, hook.execution_device, hook.offload))
            hook.execution_device = device
            hook.offload = False
    try:
        yield
    finally:
        for hook, exec_device, offload in saved:
            hook.execution_device, hook.offload = exec_device, offload


@contextlib.contextmanager
def onloaded(layer: nn.Module, device: torch.device, root: nn.Module | None = None, prefix: str = "",
             write_back: bool = True) -> Iterator[None]:
    """Hold every tensor of ``layer`` on ``device`` as a real tensor; on a clean exit write changed values back.

    ``root``/``prefix``: the model and the layer's qualified name (names of kick's offload files).
    ``write_back=False`` (measuring only) leaves the stored values untouched. On an exception nothing is
    written: offloaded submodules keep their stored (uncompressed) values.
    """
    root = root if root is not None else layer
    modules = list(layer.named_modules())
    offloaded = [(".".join(p for p in (prefix, name) if p), m, _offload_hook(m)) for name, m in modules if is_offloaded(m)]
    offloaded_ids = {id(m) for _, m, _ in offloaded}
    moved: list[tuple[torch.Tensor, torch.device]] = []
    seen: set[int] = set()
    with contextlib.ExitStack() as stack:
        for _, m, hook in offloaded:
            stack.enter_context(_materialized(m, hook, device, private=write_back))
        for _, m in modules:
            if id(m) in offloaded_ids:
                continue
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                if id(t) in seen or t.device.type == "meta" or t.device == device:
                    continue
                seen.add(id(t))
                moved.append((t, t.device))
                t.data = t.data.to(device)
        stack.callback(_move_back, moved)
        stack.enter_context(_hooks_on([m for _, m in modules], device))  # restored first on exit
        yield
        if write_back:
            for qualname, m, hook in offloaded:
                for tensor_name in _own_tensor_names(m, hook):
                    _write_offloaded(root, qualname, hook, tensor_name, _get(m, tensor_name))


def _get(module: nn.Module, dotted: str) -> torch.Tensor:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module  # type: ignore[return-value]


def _move_back(moved: list[tuple[torch.Tensor, torch.device]]) -> None:
    for tensor, original in moved:
        tensor.data = tensor.data.to(original)


def send(value: Any, device: torch.device, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """Tensors inside ``value`` (nested tuples/lists/dicts) on ``device``; a tensor reached twice is moved once,
    so tensors shared between calls (masks, rotary embeddings) stay shared."""
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        if value.device == device:
            return value
        moved = memo.get(id(value))
        if moved is None:
            moved = memo[id(value)] = value.to(device)
        return moved
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(send(v, device, memo) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(send(v, device, memo) for v in value)
    if isinstance(value, dict):
        return type(value)((k, send(v, device, memo)) for k, v in value.items())
    return value


def describe(model: nn.Module) -> dict | None:
    """For the record: how a dispatched model is placed (modules per device, offloaded modules); None if plain."""
    if not is_dispatched(model):
        return None
    device_map = getattr(model, "hf_device_map", None) or {}
    per_device = collections.Counter(str(v) for v in device_map.values())
    return {"device_map": dict(sorted(per_device.items())),
            "offloaded_modules": sum(1 for m in model.modules() if is_offloaded(m))}


def save_pretrained_kwargs(model: nn.Module) -> dict:
    """Extra ``save_pretrained`` arguments for an offloaded model.

    With ``hf_device_map`` (transformers reads offloaded weights back shard by shard): shards no larger than the
    largest placed module, so saving holds one module's weights at a time, not the whole model (transformers'
    default shard, 50 GB, would read every offloaded weight into RAM at once). Hooks without ``hf_device_map``
    (e.g. ``cpu_offload``, weights already in RAM): accelerate's onloaded state dict."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        if not {"cpu", "disk"} & {str(v) for v in device_map.values()} or len(set(map(str, device_map.values()))) < 2:
            return {}
        largest = max(sum(t.numel() * t.element_size() for t in model.get_submodule(name).state_dict().values())
                      for name in device_map)
        return {"max_shard_size": max(largest, 1 << 20)}
    if not any(is_offloaded(m) for m in model.modules()):
        return {}
    from accelerate.utils.modeling import get_state_dict_offloaded_model

    return {"state_dict": get_state_dict_offloaded_model(model)}
