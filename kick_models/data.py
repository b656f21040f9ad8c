"""ONE data resolver for every part of kick (tasks, calibration, judge).

Order of resolution for a data set:

1. a local data directory: ``metadata["data_dir"]`` (task metadata / ``--metadata``)
   or the environment variable ``KICK_DATA_DIR``; laid out like the project's
   ``shared/data`` folder (``freebaseqa/``, ``mmlu/``, ``c4/``, ``wikitext2/`` ...);
2. the canonical online source (the caller passes a loader for it);
3. otherwise :class:`DataNotFoundError`, listing every place that was tried.

Provenance: every resolution yields a record (:func:`provenance`) of where the data came from
(``location`` local / online / embedded demo excerpt, ``source`` = path or online id), whether it
is a stand-in for the paper's source (``stand_in``: why, or None), the number of records and a
content hash (sha256 of the loaded records, the same for identical content from any source).
A stand-in is also logged as a warning when it is used. When the task metadata carries a
``kick_data`` dict (the kick task YAMLs declare one), the record is stored in it under the data
set's name, which lands in lm-eval's results JSON as ``configs.<task>.metadata.kick_data``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

DATA_DIR_ENV = "KICK_DATA_DIR"
#: The excerpt ``kick demo`` ships (installed with the package); used only when kick demo points at it.
DEMO_DATA_DIR = Path(__file__).resolve().parents[1] / "kick_analysis" / "demo_data"
DEMO_MANIFEST = "MANIFEST.json"
#: Task metadata key holding the per-data-set provenance records (see the module docstring).
PROVENANCE_KEY = "kick_data"

T = TypeVar("T")
logger = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- provenance


def content_sha256(value: Any) -> str:
    """sha256 of loaded data: the UTF-8 text, or the canonical JSON of the records."""
    if isinstance(value, str):
        payload = value.encode("utf-8")
    elif hasattr(value, "_fingerprint") and not isinstance(value, (list, dict, tuple)):  # datasets.Dataset
        payload = str(value._fingerprint).encode()
    else:
        payload = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(payload).hexdigest()


def count_records(value: Any) -> int | None:
    """Records in loaded data: list items, summed over a dict of lists (splits), or lines of a text."""
    if isinstance(value, str):
        return value.count("\n") + (0 if value.endswith("\n") or not value else 1)
    if isinstance(value, dict):
        counts = [count_records(v) for v in value.values()]
        return sum(c for c in counts if c is not None) if counts and all(isinstance(v, (list, tuple)) for v in value.values()) else len(value)
    try:
        return len(value)
    except TypeError:
        return None


def demo_excerpt_note(path: Path) -> str | None:
    """What an entry of the embedded demo data is an excerpt of (from its MANIFEST.json), else None."""
    try:
        relative = Path(path).resolve().relative_to(DEMO_DATA_DIR)
    except ValueError:
        return None
    try:
        manifest = json.loads((DEMO_DATA_DIR / DEMO_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        manifest = {}
    entry = manifest.get("files", {}).get(relative.as_posix(), {})
    return entry.get("excerpt") or f"kick demo's embedded excerpt {relative.as_posix()}"


def provenance(name: str, location: str, source: str, value: Any, stand_in: str | None = None,
               excerpt: str | None = None) -> dict[str, Any]:
    """The provenance record of one loaded data set (JSON-safe)."""
    return {
        "name": name,
        "location": location,
        "source": source,
        "stand_in": stand_in,
        "excerpt": excerpt,
        "records": count_records(value),
        "sha256": content_sha256(value),
    }


def warn_stand_in(record: dict[str, Any]) -> None:
    if record.get("stand_in"):
        logger.warning("%s: using a stand-in for the paper's source: %s (%s)", record["name"], record["stand_in"],
                       record["source"])


def _record(metadata: dict[str, Any] | None, record: dict[str, Any]) -> None:
    sink = metadata.get(PROVENANCE_KEY) if isinstance(metadata, dict) else None
    if isinstance(sink, dict):
        sink[record["name"]] = record


# --------------------------------------------------------------------------- resolving

StandIn = str | Callable[[Path], "str | None"] | None


def resolve_with_provenance(
    name: str,
    relative: str,
    load_local: Callable[[Path], T],
    load_online: Callable[[], T] | None = None,
    online_description: str = "",
    metadata: dict[str, Any] | None = None,
    local_stand_in: StandIn = None,
) -> tuple[T, dict[str, Any]]:
    """Like :func:`resolve`, also returning the provenance record (see :func:`provenance`).

    ``local_stand_in``: why a local copy is a stand-in for the paper's source (text, or a function of
    the local path returning the text or None); a local stand-in is logged as a warning.
    """
    tried: list[str] = []
    root = configured_data_dir(metadata)
    if root is not None:
        candidate = root / relative
        if candidate.exists():
            value = load_local(candidate)
            stand_in = local_stand_in(candidate) if callable(local_stand_in) else local_stand_in
            excerpt = demo_excerpt_note(candidate)
            record = provenance(name, "embedded demo data" if excerpt else "local", str(candidate), value,
                                stand_in, excerpt)
            warn_stand_in(record)
            _record(metadata, record)
            return value, record
        tried.append(f"local: {candidate} (missing)")
    else:
        tried.append(f"local: no data directory configured (${DATA_DIR_ENV} unset)")
    if load_online is not None:
        try:
            value = load_online()
        except Exception as exc:  # network errors, offline mode, missing dataset ...
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            tried.append(f"online: {online_description or 'canonical source'} failed ({type(exc).__name__}: {first_line[:300]})")
        else:
            record = provenance(name, "online", online_description or "canonical source", value)
            _record(metadata, record)
            return value, record
    raise DataNotFoundError(
        f"Could not load {name}. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nFix: set {DATA_DIR_ENV}=/path/to/data with {relative!r} inside it "
        f"(the layout of the project's shared/data folder), or make the online source reachable."
    )


def resolve(*args: Any, **kwargs: Any) -> Any:
    """Load a data set from the local data dir, else online, else fail clearly (arguments: those of
    :func:`resolve_with_provenance`: ``name``, ``relative`` = the entry inside the data dir, file or
    folder; ``load_local(path)`` reads it; ``load_online()`` fetches the canonical copy ...).
    The provenance record goes into ``metadata["kick_data"]`` when that is a dict."""
    return resolve_with_provenance(*args, **kwargs)[0]
