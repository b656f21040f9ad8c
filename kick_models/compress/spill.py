"""Quantization parameters of disk-offloaded blocks wait on disk, not in RAM, until something reads them (issue 27).

GPTQ, RTN and the compressed-tensors schemes return per compressed matrix its ``quant_params`` (scales, zeros,
``g_idx`` ...; about 3 MiB per block of a 1.1 B LLaMA at 4 bit / group 128). A run that offloads its blocks to
disk must not keep them in RAM for every block until the end: as each block is written back to kick's offload
store, :class:`QuantParamSpill` writes the parameters of its matrices that now live on disk to one safetensors
file per block and replaces each ``LayerStats.quant_params`` dict by a :class:`SpilledTensors` mapping reading a
tensor from that file when it is accessed (cache store, export, the report). The values read back are the bytes
written: nothing changes but where they wait.

The files live in a folder of their own next to kick's offload store (``$KICK_OFFLOAD_DIR`` or the offload
folder's parent), removed when the last mapping referring to it is garbage collected, or at exit: a report may
outlive its model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from kick_models.compress import placement

Spec = tuple[torch.dtype, tuple[int, ...]]


class SpillFolder:
    """A temporary folder of kick's holding spilled tensors; removed when no mapping refers to it, or at exit."""

    def __init__(self, near: str | os.PathLike | None):
        self.folder = tempfile.mkdtemp(prefix="kick-quant-params-", dir=near)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def write(self, name: str, tensors: Mapping[str, torch.Tensor]) -> str:
        """``tensors`` as the safetensors file ``<folder>/<name>.safetensors`` (written atomically); its path."""
        from safetensors.torch import save_file

        path = os.path.join(self.folder, f"{name}.safetensors")
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, path + ".tmp")
        os.replace(path + ".tmp", path)
        return path


class SpilledTensors(Mapping):
    """Read-only ``{key: tensor}`` whose tensors are ``<prefix><key>`` of one safetensors file, each read from the
    file when accessed (a fresh CPU tensor per access); :meth:`spec` gives a tensor's dtype and shape unread."""

    def __init__(self, path: str, specs: dict[str, Spec], prefix: str = "", owner: SpillFolder | None = None):
        self.path, self.prefix, self._specs = path, prefix, dict(specs)
        self._owner = owner  # keeps the folder (and so the file) alive as long as this mapping

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._specs:
            raise KeyError(key)
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(self.prefix + key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def spec(self, key: str) -> Spec:
        return self._specs[key]

    def __repr__(self) -> str:
        return f"SpilledTensors({self.path!r}, {len(self)} tensors)"


def tensor_spec(tensors: Mapping[str, torch.Tensor], key: str) -> Spec:
    """``(dtype, shape)`` of ``tensors[key]``, without reading a spilled tensor from its file."""
    if isinstance(tensors, SpilledTensors):
        return tensors.spec(key)
    value = tensors[key]
    return value.dtype, tuple(value.shape)


class QuantParamSpill:
    """Moves the quantization parameters of matrices whose weights kick wrote to its disk offload store into one
    file per block (see the module docstring); matrices kept in RAM keep theirs in RAM."""

    def __init__(self, model: nn.Module):
        self._model = model
        self._folder: SpillFolder | None = None

    def block_done(self, block: str, layers: list[Any]) -> None:
        """Call once block ``block`` (its qualified name) is written back; ``layers``: its LayerStats."""
        model = self._model
        on_disk = [layer for layer in layers if layer.quant_params and not isinstance(layer.quant_params, SpilledTensors)
                   and placement.disk_store_folder(model, _param(layer)) is not None]
        if not on_disk:
            return
        if self._folder is None:  # next to kick's offload store: on the disk the user chose for offloaded weights
            self._folder = SpillFolder(os.path.dirname(placement.disk_store_folder(model, _param(on_disk[0]))))
        tensors = {f"{layer.name}.{k}": v for layer in on_disk for k, v in layer.quant_params.items()}
        path = self._folder.write(block, tensors)
        for layer in on_disk:
            specs = {k: (v.dtype, tuple(v.shape)) for k, v in layer.quant_params.items()}
            layer.quant_params = SpilledTensors(path, specs, f"{layer.name}.", self._folder)


def _param(layer: Any) -> str:
    return layer.param or f"{layer.name}.weight"
