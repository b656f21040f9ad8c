"""Persistent judge cache (SQLite): an interrupted run resumes and no call is paid twice.

Key = sha256 of (judge identity, protocol version, generation settings, the exact messages).
The identity is backend + base URL + model (see :meth:`JudgeSettings.identity`); API keys are
never part of a key or a row. Each answer is committed in its own transaction, so a run killed
at any point keeps every answer received before it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    key TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    protocol TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(identity: str, protocol: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    payload = json.dumps({"identity": identity, "protocol": protocol, "messages": messages, "params": params},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Thread-safe SQLite key -> judge response text store with hit/miss counters."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(_SCHEMA)
        self._conn.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT response FROM judgements WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
            return row[0]

    def put(self, key: str, identity: str, protocol: str, response: str) -> None:
        with self._lock:
            with self._conn:  # one transaction per answer: atomic and durable
                self._conn.execute(
                    "INSERT OR REPLACE INTO judgements (key, identity, protocol, response, created) VALUES (?,?,?,?,?)",
                    (key, identity, protocol, response, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
