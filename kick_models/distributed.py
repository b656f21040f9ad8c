"""Compress once when lm-eval runs in several processes (``accelerate launch`` / ``torchrun``).

Every process builds the same model. Coordination uses an exclusive file lock per cache
key (:func:`file_lock` on ``<cache>/locks/<key>.lock``): the first process to hold it
compresses and writes the cache entry, the others block on the lock and then load the
entry. With a torch.distributed process group, rank 0 takes the lock *before* it
broadcasts the key, so rank 0 is always the one that compresses (and the others do not
recompute the key). Without a process group the lock alone serialises the processes (it
also makes two independent runs of the same configuration compress once).

Blocking on a lock has no timeout (a compression can take longer than a collective's
timeout); when rank 0 dies the launcher ends the other ranks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _dist():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return None
    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from the process group, else from the launcher's environment."""
    dist = _dist()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def has_process_group() -> bool:
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (identity without a process group)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock on ``path`` (created if needed); blocks until acquired.

    ``filelock.FileLock`` (a dependency of transformers, datasets and torch): ``fcntl.flock``, which
    the kernel releases when the holder dies (no stale lock) and which Linux maps to POSIX locks on
    NFS, so processes on different nodes of a shared filesystem exclude each other. On a filesystem
    without flock, recent filelock versions fall back to an O_EXCL marker file whose dead owner is
    detected; older ones raise NotImplementedError there and we use :class:`filelock.SoftFileLock`
    (whose marker a killed holder leaves behind: delete ``<key>.lock.soft`` by hand).
    """
    from filelock import FileLock, SoftFileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire()
    except NotImplementedError:  # older filelock on a filesystem without flock
        lock = SoftFileLock(f"{path}.soft")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


class HeldLock:
    """A file lock acquired now and released by :meth:`release` (or at exit of a ``with``)."""

    def __init__(self, path: str | os.PathLike):
        self._cm = file_lock(path)
        self._cm.__enter__()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._cm.__exit__(None, None, None)

    def __enter__(self) -> "HeldLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
