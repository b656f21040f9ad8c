"""Content-addressed cache of compressed weights (shared by pruning and quantization).

One entry = one compression result, stored as::

    <root>/entries/<key>/weights.safetensors   only the compressed nn.Linear weights
                                               (+ "quant_params.<linear>.scales|zeros|g_idx")
    <root>/entries/<key>/entry.json            key parts, report JSON, sha256 of weights.safetensors

``key`` is the sha256 of a canonical JSON of everything that determines the
compressed weights (see :func:`cache_key_parts`): the model identity (content
hash of the weight files, or hub id + commit), method and every parameter
(``config.to_dict()``), the calibration fingerprint (sha256 of the token ids),
the kick algorithm version, torch/transformers versions, dtype and the compute
device type.

Model identity of a local folder / GGUF file is the full sha256 of every
weight file (``*.safetensors``, ``*.bin``, ``*.gguf``, ...) plus ``config.json``.
Size + mtime alone is too weak (a re-exported fine-tune can keep both), file
headers alone too (two fine-tunes of one architecture share them), so the full
hash is computed once and memoised in ``<root>/file_hashes.json`` keyed by
(real path, size, mtime_ns, inode): a later run re-hashes only changed files.

Writes are atomic (a temp folder renamed into place: a half-written entry is
never visible). Reads check the stored sha256: a corrupted entry is reported
with a warning, removed and rebuilt by the caller. An unwritable cache folder
warns and the run continues uncached.

Concurrent writers (``kick sweep --jobs``/Ray, retries, several runs of one
config, also on a shared filesystem): the model classes (``kick_models.lm``)
hold ``<root>/locks/<key>.lock`` (:func:`kick_models.distributed.file_lock`)
around read-or-compress-and-store, so one process compresses and the others
wait, then load its entry.

Location: ``cache_dir`` argument > ``$KICK_CACHE_DIR`` > ``~/.cache/kick``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("lm_eval.kick.cache")  # under "lm_eval" so lm-eval's log handler shows it

#: Bump when the layout of an entry changes (old entries are then simply not found).
CACHE_FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"
ENTRY_FILE = "entry.json"
QUANT_PREFIX = "quant_params."
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5")
_HASH_CHUNK = 1 << 20  # 1 MiB: hashing a large file holds one chunk (issue 27), as fast as 16 MiB


class CacheWarning(UserWarning):
    """The cache could not be used (unwritable, corrupted entry); the run continues."""


def default_cache_dir() -> Path:
    """``$KICK_CACHE_DIR`` or ``~/.cache/kick``."""
    env = os.environ.get("KICK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/kick").expanduser()


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` argument > ``$KICK_CACHE_DIR`` > ``~/.cache/kick``."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


# ----------------------------------------------------------------------------- hashing


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(parts: dict) -> str:
    """sha256 hex of the canonical JSON of ``parts``."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FileHashMemo:
    """sha256 of files, memoised by (real path, size, mtime_ns, inode) in a JSON file."""

    def __init__(self, path: Path | None):
        self.path = path
        self._data: dict[str, dict] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                self._data = json.loads(path.read_text())
            except (OSError, ValueError):
                self._data = {}

    def sha256(self, file: str | os.PathLike) -> str:
        real = os.path.realpath(file)
        st = os.stat(real)
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        hit = self._data.get(real)
        if hit and all(hit.get(k) == v for k, v in stamp.items()):
            return hit["sha256"]
        t0 = time.perf_counter()
        digest = sha256_file(real)
        if st.st_size > 256 * 1024 * 1024:
            logger.info("hashed %s (%.1f GB) in %.1fs", real, st.st_size / 1e9, time.perf_counter() - t0)
        self._data[real] = {**stamp, "sha256": digest}
        self._dirty = True
        return digest

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.path, json.dumps(self._data, indent=1, sort_keys=True))
            self._dirty = False
        except OSError as exc:  # memo is an optimisation only
            logger.debug("could not write %s: %s", self.path, exc)


def _weight_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return sorted(files)


def local_identity(folder: str | os.PathLike, gguf_file: str | None, subfolder: str, memo: FileHashMemo) -> dict:
    """Identity of a model stored on disk: content hashes of its weight files and config."""
    base = Path(folder).expanduser().resolve()
    if subfolder:
        base = base / subfolder
    if gguf_file:
        gguf = Path(gguf_file)
        gguf = gguf if gguf.is_absolute() else base / gguf
        files = [gguf]
    else:
        files = _weight_files(base)
        if (base / "config.json").is_file():
            files.append(base / "config.json")
    if not files:
        raise FileNotFoundError(f"no weight files found in {base}")
    return {
        "kind": "local",
        "path": str(base),
        "files": {p.name: memo.sha256(p) for p in files},
    }


def tensors_identity(model: torch.nn.Module) -> dict:
    """Identity of an in-memory model: sha256 over every parameter and buffer."""
    from kick_models.compress.placement import state_items

    h = hashlib.sha256()
    for name, t in state_items(model):  # sorted; offloaded (meta) tensors read from their hook's weights map
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"kind": "in-memory", "name_or_path": getattr(model, "name_or_path", ""), "sha256": h.hexdigest()}


def model_identity(
    pretrained: Any,
    *,
    model: torch.nn.Module | None = None,
    revision: str | None = None,
    gguf_file: str | None = None,
    subfolder: str = "",
    commit_hash: str | None = None,
    memo: FileHashMemo | None = None,
) -> dict:
    """What model the compression started from (see module docstring)."""
    memo = memo or FileHashMemo(None)
    if not isinstance(pretrained, (str, os.PathLike)):
        if model is None:
            model = pretrained
        return tensors_identity(model)
    if Path(pretrained).expanduser().exists():
        return local_identity(pretrained, gguf_file, subfolder, memo)
    if commit_hash:
        return {"kind": "hub", "id": str(pretrained), "subfolder": subfolder, "gguf_file": gguf_file, "commit": commit_hash}
    # Hub id without a resolved commit: hash the model itself (exact, costs one pass over the weights).
    if model is not None:
        ident = tensors_identity(model)
        ident["hub_id"] = str(pretrained)
        return ident
    return {"kind": "hub", "id": str(pretrained), "subfolder": subfolder, "gguf_file": gguf_file, "revision": revision}


def cache_key_parts(
    *,
    identity: dict,
    config: dict,
    calibration_fingerprint: str | None,
    dtype: str,
    device_type: str,
    algorithm_version: str,
    extra: dict | None = None,
) -> dict:
    """Everything that determines the compressed weights (the key is the sha256 of this)."""
    import transformers

    return {
        "format": CACHE_FORMAT,
        "model": identity,
        "compression": config,
        "calibration_fingerprint": calibration_fingerprint,
        "dtype": dtype,
        "device_type": device_type,
        "kick_algorithm_version": algorithm_version,
        "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
        "transformers": transformers.__version__.split(".")[0],
        **({"extra": extra} if extra else {}),
    }


# ----------------------------------------------------------------------------- report (de)serialisation


def report_to_json(report: Any) -> dict:
    """CompressionReport -> JSON-safe dict (per-layer stats without their tensors)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(report):
        value = getattr(report, f.name)
        if f.name == "layers":
            value = [
                {lf.name: getattr(layer, lf.name) for lf in dataclasses.fields(layer) if lf.name != "quant_params"}
                for layer in value
            ]
        out[f.name] = value
    return json.loads(json.dumps(out, default=str))


def report_from_json(data: dict, quant_params: dict[str, torch.Tensor] | None = None) -> Any:
    """Inverse of :func:`report_to_json` (quant params re-attached to their layers)."""
    from kick_models.compress.base import LayerStats
    from kick_models.compress.report import CompressionReport

    quant_params = quant_params or {}
    layer_fields = {f.name for f in dataclasses.fields(LayerStats)}
    layers = []
    for item in data.get("layers", []):
        layer = LayerStats(**{k: v for k, v in item.items() if k in layer_fields and k != "quant_params"})
        prefix = layer.name + "."
        qp = {k[len(prefix):]: v for k, v in quant_params.items() if k.startswith(prefix)}
        if qp:
            layer.quant_params = qp
        layers.append(layer)
    report_fields = {f.name for f in dataclasses.fields(CompressionReport)}
    kwargs = {k: v for k, v in data.items() if k in report_fields and k != "layers"}
    return CompressionReport(layers=layers, **kwargs)


# ----------------------------------------------------------------------------- file helpers


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verify_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """The weights ``model`` will use (offloaded ones read back from where they live) equal the cached ones."""
    wrong = [key for key, value in tensors.items() if not key.startswith(QUANT_PREFIX) and not _took(model, key, value)]
    if wrong:
        raise RuntimeError(f"kick cache: restoring compressed weights did not take for {len(wrong)} tensor(s) "
                           f"(first: {wrong[0]}); the model would run with weights other than the cached ones.")


def _took(model: torch.nn.Module, key: str, value: torch.Tensor) -> bool:
    from kick_models.compress.placement import read_tensor

    used = read_tensor(model, key)
    return torch.equal(used.to("cpu"), value.to(dtype=used.dtype))


def compressed_parameter_names(report: Any) -> list[str]:
    """Every parameter holding a compressed matrix of ``report`` (a Linear's ``.weight``, a Conv1D weight, a fused
    MoE experts tensor: once for all its expert slices), then the norms a block transform (AWQ, SmoothQuant) scaled,
    in first-seen order."""
    names = [getattr(layer, "param", None) or f"{layer.name}.weight" for layer in report.layers]
    names += getattr(report, "transformed_params", lambda: [])()
    return list(dict.fromkeys(names))


def compressed_weights(model: torch.nn.Module, report: Any) -> dict[str, torch.Tensor]:
    """``"<parameter>" -> tensor`` (CPU, contiguous) for every parameter of :func:`compressed_parameter_names`.
    Holds them all at once: the cache itself streams them (:func:`write_safetensors_streaming`)."""
    from kick_models.compress.placement import read_tensor

    return {name: read_tensor(model, name).to("cpu").contiguous() for name in compressed_parameter_names(report)}


def apply_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """Copy cached tensors into ``model`` (in place, or where offloaded weights live); returns how many."""
    n = 0
    for key, value in tensors.items():
        if not key.startswith(QUANT_PREFIX):
            _apply_one(model, key, value)
            n += 1
    return n


def _apply_one(model: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    from kick_models.compress.placement import write_tensor

    param = model.get_parameter(key)
    if tuple(param.shape) != tuple(value.shape):
        raise ValueError(f"cached weight {key} has shape {tuple(value.shape)}, model has {tuple(param.shape)}")
    with torch.no_grad():
        write_tensor(model, key, value)  # in place, or where an offloaded weight lives


#: safetensors dtype names (https://github.com/huggingface/safetensors, format.md).
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}
# FP8 scales / zero points of the compressed-tensors schemes (kick-quant), unsigned packs; where this torch has them.
_SAFETENSORS_DTYPES.update({getattr(torch, name): code for name, code in (
    ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"))
    if hasattr(torch, name)})


def write_safetensors_streaming(path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                                produce: Any, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file holding ONE tensor in memory at a time (``safetensors.torch.save_file`` needs them
    all): the header is laid out from ``specs`` (name -> dtype, shape), then ``produce(name)`` is called for each
    name in order and its bytes appended. ``safetensors.safe_open`` / ``load_file`` read the result."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in specs.items():
        if dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: dtype {dtype} cannot be stored in the kick cache")
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name, (dtype, shape) in specs.items():
            value = produce(name).detach().to("cpu")
            if value.dtype != dtype or tuple(value.shape) != tuple(shape):
                raise ValueError(f"{name}: got {value.dtype} {tuple(value.shape)}, expected {dtype} {tuple(shape)}")
            f.write(value.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del value


def _entry_tensors(model: torch.nn.Module, report: Any) -> tuple[dict, Any]:
    """(specs, produce) of an entry for :func:`write_safetensors_streaming`: the compressed parameters (read one
    at a time, offloaded ones from their hook's map) and the report's quantization parameters."""
    from kick_models.compress.placement import read_tensor

    quant = report.quant_params()  # read one at a time (spilled ones from their file)
    specs = {name: (model.get_parameter(name).dtype, tuple(model.get_parameter(name).shape))
             for name in compressed_parameter_names(report)}
    specs.update(quant.specs(QUANT_PREFIX))
    return specs, lambda name: quant[name[len(QUANT_PREFIX):]] if name.startswith(QUANT_PREFIX) else read_tensor(model, name)


# ----------------------------------------------------------------------------- the cache


class CompressionCache:
    """Entries under ``root/entries/<key>/``; see the module docstring."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.entries = self.root / "entries"

    # -- construction ---------------------------------------------------------
    @classmethod
    def open(cls, cache_dir: str | os.PathLike | None = None) -> "CompressionCache | None":
        """The cache at the resolved location, or None (with a warning) when it cannot be written."""
        root = resolve_cache_dir(cache_dir)
        problem = writable_problem(root)
        if problem:
            warnings.warn(f"kick cache disabled: {problem}; compressing without a cache", CacheWarning, stacklevel=2)
            return None
        return cls(root)

    def file_hash_memo(self) -> FileHashMemo:
        return FileHashMemo(self.root / "file_hashes.json")

    def entry_dir(self, key: str) -> Path:
        return self.entries / key

    # -- read -----------------------------------------------------------------
    def check(self, key: str) -> dict | None:
        """The entry JSON of a valid entry (metadata matches, weights' sha256 as recorded, a readable safetensors
        file), or None (missing; corrupted -> warned about and removed)."""
        from safetensors import safe_open

        folder = self.entry_dir(key)
        meta_path, weights_path = folder / ENTRY_FILE, folder / WEIGHTS_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
                raise ValueError("entry metadata does not match its key")
            digest = sha256_file(weights_path)
            if digest != meta.get("weights_sha256"):
                raise ValueError(f"sha256 of {WEIGHTS_FILE} is {digest[:12]}..., entry says {str(meta.get('weights_sha256'))[:12]}...")
            with safe_open(str(weights_path), framework="pt") as f:
                f.keys()
        except Exception as exc:  # noqa: BLE001 - any damage means: rebuild
            msg = f"kick cache entry {folder} is corrupted ({exc}); removing it and recompressing"
            warnings.warn(msg, CacheWarning, stacklevel=3)
            self.remove(key)
            return None
        return meta

    def read(self, key: str) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """``(entry json, tensors)`` of a valid entry, all tensors in memory, or None (see :meth:`check`)."""
        from safetensors.torch import load_file

        meta = self.check(key)
        if meta is None:
            return None
        return meta, load_file(str(self.entry_dir(key) / WEIGHTS_FILE))

    def load_into(self, key: str, model: torch.nn.Module) -> Any | None:
        """Apply a cached entry to ``model``; returns the CompressionReport or None on a miss.

        One tensor at a time (read, written where the model keeps it -- in place or through an offloaded module's
        write-back path -- and read back to verify it took), so a restore onto an offloaded model needs one
        weight's worth of memory, not the entry's."""
        from safetensors import safe_open

        meta = self.check(key)
        if meta is None:
            return None
        quant: dict[str, torch.Tensor] = {}
        wrong: list[str] = []
        with safe_open(str(self.entry_dir(key) / WEIGHTS_FILE), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                value = f.get_tensor(name)
                if name.startswith(QUANT_PREFIX):  # memory-mapped from the entry: file pages, not anonymous memory
                    quant[name[len(QUANT_PREFIX):]] = value
                    continue
                _apply_one(model, name, value)
                if not _took(model, name, value):  # offloaded models: the restore went through the write-back path
                    wrong.append(name)
                del value
        if wrong:
            raise RuntimeError(f"kick cache: restoring compressed weights did not take for {len(wrong)} tensor(s) "
                               f"(first: {wrong[0]}); the model would run with weights other than the cached ones.")
        return report_from_json(meta["report"], quant)

    # -- write ----------------------------------------------------------------
    def store(self, key: str, model: torch.nn.Module, report: Any, key_parts: dict) -> Path | None:
        """Write the entry atomically (compressed weights streamed one at a time from wherever the model keeps them);
        on any OS error warn and return None (never raises OSError)."""
        final = self.entry_dir(key)
        tmp: Path | None = None
        try:
            self.entries.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.entries, prefix=f".tmp-{key[:12]}-"))
            write_safetensors_streaming(tmp / WEIGHTS_FILE, *_entry_tensors(model, report),
                                        metadata={"kick_cache_key": key})
            meta = {
                "format": CACHE_FORMAT,
                "key": key,
                "key_parts": key_parts,
                "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "report": report_to_json(report),
            }
            (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1))
            try:
                os.replace(tmp, final)
                tmp = None
            except OSError:
                if not (final / ENTRY_FILE).is_file():
                    raise
                # another process renamed a complete entry into place first: keep theirs
            return final
        except OSError as exc:
            msg = f"kick cache: could not write entry to {final} ({exc}); continuing without caching"
            warnings.warn(msg, CacheWarning, stacklevel=2)
            return None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, key: str) -> None:
        folder = self.entry_dir(key)
        if not folder.exists():
            return
        # rename first so that a half-deleted entry is never read
        trash = folder.with_name(f".trash-{key[:12]}-{os.getpid()}-{time.time_ns()}")
        try:
            os.replace(folder, trash)
        except OSError:
            trash = folder
        shutil.rmtree(trash, ignore_errors=True)


def writable_problem(root: Path) -> str | None:
    """None when ``root`` can be created and written, else a short description of why not."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
        return None
    except OSError as exc:
        return f"cache folder {root} is not writable ({exc.strerror or exc})"
