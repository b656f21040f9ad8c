"""ONE data resolver for every part of kick (tasks, calibration, judge).

Order of resolution for a data set:

1. a local data directory: ``metadata["data_dir"]`` (task metadata / ``--metadata``)
   or the environment variable ``KICK_DATA_DIR``; laid out like the project's
   ``shared/data`` folder (``freebaseqa/``, ``mmlu/``, ``c4/``, ``wikitext2/`` ...);
2. the canonical online source (the caller passes a loader for it);
3. otherwise :class:`DataNotFoundError`, listing every place that was tried.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

DATA_DIR_ENV = "KICK_DATA_DIR"

T = TypeVar("T")


class DataNotFoundError(FileNotFoundError):
    """No local copy and no reachable online source for a data set."""


class DataSchemaError(ValueError):
    """A data file exists but does not have the expected schema."""


def configured_data_dir(metadata: dict[str, Any] | None = None) -> Path | None:
    """The local data directory the user configured, or None.

    Raises :class:`DataNotFoundError` if one is configured but does not exist
    (a typo must not silently fall through to a download).
    """
    raw = None
    source = None
    if metadata and metadata.get("data_dir"):
        raw, source = metadata["data_dir"], "metadata data_dir"
    elif os.environ.get(DATA_DIR_ENV):
        raw, source = os.environ[DATA_DIR_ENV], f"${DATA_DIR_ENV}"
    if raw is None:
        return None
    path = Path(os.path.expanduser(str(raw)))
    if not path.is_dir():
        raise DataNotFoundError(
            f"The data directory {str(path)!r} (from {source}) does not exist. "
            f"Point {DATA_DIR_ENV} at a folder laid out like shared/data "
            f"(freebaseqa/, mmlu/, c4/, wikitext2/, ...) or unset it to use the online sources."
        )
    return path


def local_path(relative: str, metadata: dict[str, Any] | None = None) -> Path | None:
    """``<data dir>/<relative>`` if a data dir is configured and the entry exists."""
    root = configured_data_dir(metadata)
    if root is None:
        return None
    candidate = root / relative
    return candidate if candidate.exists() else None


def resolve(
    name: str,
    relative: str,
    load_local: Callable[[Path], T],
    load_online: Callable[[], T] | None = None,
    online_description: str = "",
    metadata: dict[str, Any] | None = None,
) -> T:
    """Load data set ``name`` from the local data dir, else online, else fail clearly.

    ``relative`` is the entry inside the data dir (file or folder);
    ``load_local(path)`` reads it; ``load_online()`` fetches the canonical copy.
    """
    tried: list[str] = []
    root = configured_data_dir(metadata)
    if root is not None:
        candidate = root / relative
        if candidate.exists():
            return load_local(candidate)
        tried.append(f"local: {candidate} (missing)")
    else:
        tried.append(f"local: no data directory configured (${DATA_DIR_ENV} unset)")
    if load_online is not None:
        try:
            return load_online()
        except Exception as exc:  # network errors, offline mode, missing dataset ...
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            tried.append(f"online: {online_description or 'canonical source'} failed ({type(exc).__name__}: {first_line[:300]})")
    raise DataNotFoundError(
        f"Could not load {name}. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix: set {DATA_DIR_ENV}=/path/to/data with {relative!r} inside it "
        f"(the layout of the project's shared/data folder), or make the online source reachable."
    )
