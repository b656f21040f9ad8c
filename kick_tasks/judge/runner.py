"""The judge: settings + backend + SQLite cache + a thread pool, with a per-request progress bar."""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Sequence

from .cache import JudgeCache, cache_key
from .protocols import JudgeCall
from .settings import JudgeSettings

log = logging.getLogger(__name__)


class Judge:
    """Sends :class:`JudgeCall` s through the cache to the backend.

    ``stats`` counts backend requests (including retries), cache hits and invalid verdicts.
    """

    def __init__(self, settings: JudgeSettings, backend=None, cache: JudgeCache | None = None):
        from .backends import make_backend

        self.settings = settings
        self.backend = backend if backend is not None else make_backend(settings)
        self.cache = cache if cache is not None else JudgeCache(settings.cache_path())
        self.calls_sent = 0
        self.request_settings: list[dict[str, Any]] = []  # distinct (protocol, max_tokens, temperature) used
        self._lock = threading.Lock()

    def params(self, call: JudgeCall) -> dict[str, Any]:
        """Sampling settings sent with ``call``: the user's (``KICK_JUDGE_*``) over the protocol's defaults."""
        temperature = call.temperature if self.settings.temperature is None else self.settings.temperature
        if self.settings.backend == "hf":
            temperature = 0.0  # the in-process backend decodes greedily
        max_tokens = call.max_tokens if self.settings.max_tokens is None else self.settings.max_tokens
        return {"max_tokens": int(max_tokens), "temperature": float(temperature)}

    def reply(self, call: JudgeCall) -> str | None:
        params = self.params(call)
        used = {"protocol": call.protocol, **params}
        with self._lock:
            if used not in self.request_settings:
                self.request_settings.append(used)
        key = cache_key(self.settings.identity(), call.protocol, call.messages, params)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        text = self.backend.chat(call.messages, **params)
        with self._lock:
            self.calls_sent += 1
        if text is not None:
            self.cache.put(key, self.settings.identity(), call.protocol, text)
        return text

    def replies(self, calls: Sequence[JudgeCall], progress: bool = True, desc: str = "judging") -> list[str | None]:
        """All replies in order; concurrent up to ``settings.concurrency``; tqdm per request."""
        if not calls:
            return []
        from tqdm.auto import tqdm

        results: list[str | None] = [None] * len(calls)
        bar = tqdm(total=len(calls), desc=f"{desc} ({self.settings.name})", unit="req", disable=not progress)
        workers = 1 if self.settings.backend == "hf" else self.settings.concurrency
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(self.reply, call): i for i, call in enumerate(calls)}
                try:
                    for future in as_completed(futures):
                        results[futures[future]] = future.result()
                        bar.update(1)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        finally:
            bar.close()
        return results

    @property
    def stats(self) -> dict[str, int]:
        return {"backend_requests": getattr(self.backend, "requests_made", self.calls_sent),
                "calls_sent": self.calls_sent, "cache_hits": self.cache.hits}


def judge_items(judge: Judge, items: Sequence[dict[str, Any]], protocols: Sequence[Sequence[Any]],
                progress: bool = True, desc: str = "judging",
                replies_out: list[list[str | None]] | None = None) -> list[dict[str, float]]:
    """Judge every item with its protocols; returns per-item metrics incl. ``judge_invalid_rate``.

    ``protocols[i]`` lists the protocols for ``items[i]`` (those that do not apply are skipped).
    All calls of all items go through one pool, so an API endpoint is kept busy. When
    ``replies_out`` is a list, it receives each item's raw judge replies (for audit files).
    """
    plan: list[tuple[int, Any, slice]] = []
    calls: list[JudgeCall] = []
    for index, (item, item_protocols) in enumerate(zip(items, protocols)):
        for protocol in item_protocols:
            if protocol.applies(item):
                new = protocol.calls(item)
                plan.append((index, protocol, slice(len(calls), len(calls) + len(new))))
                calls.extend(new)
    start = time.perf_counter()
    replies = judge.replies(calls, progress=progress, desc=desc)
    log.info("judged %d requests in %.1fs (%s)", len(calls), time.perf_counter() - start, judge.stats)
    metrics: list[dict[str, float]] = [{} for _ in items]
    invalid = [0] * len(items)
    total = [0] * len(items)
    for index, protocol, span in plan:
        scores, bad = protocol.score(items[index], replies[span])
        metrics[index].update(scores)
        invalid[index] += bad
        total[index] += span.stop - span.start
    if replies_out is not None:
        replies_out.extend([] for _ in items)
        for index, _, span in plan:
            replies_out[index].extend(replies[span])
    for index in range(len(items)):
        metrics[index]["judge_invalid_rate"] = invalid[index] / total[index] if total[index] else math.nan
    return metrics
