"""The judge used INSIDE an lm-eval run (from a task's ``process_results``).

Task loaders call :func:`configure` with the task metadata (``--metadata``) when lm-eval loads the
data, so a bad judge configuration fails before generation starts; ``process_results`` then calls
:func:`judge_doc`. With no judge configured, judge metrics are left out and a one-line hint is logged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

from .errors import JudgeAuthError, JudgeEndpointError
from .runner import Judge, judge_items
from .settings import HINT, JudgeSettings, settings_from

log = logging.getLogger("kick.judge")

_lock = threading.Lock()
_settings: JudgeSettings | None = None
_judge: Judge | None = None
_hinted = False
_bar = None


def configure(metadata: dict[str, Any] | None = None, preflight: bool = True) -> JudgeSettings:
    """Read judge settings from env + metadata; check an HTTP endpoint answers (401/unreachable fail here)."""
    global _settings, _judge, _hinted
    settings = settings_from(metadata)
    with _lock:
        if settings != _settings:
            _settings, _judge = settings, None
    if not settings.enabled:
        if not _hinted:
            log.warning(HINT)
            _hinted = True
    elif preflight and settings.backend == "openai":
        check_endpoint(settings)
    return settings


def check_endpoint(settings: JudgeSettings) -> None:
    """``GET {base_url}/models``: raises on 401/403 or an unreachable endpoint; other answers pass."""
    import os

    import requests

    headers = {}
    key = os.environ.get(settings.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = settings.base_url.rstrip("/") + "/models"
    try:
        response = requests.get(url, headers=headers, timeout=min(30.0, settings.timeout))
    except requests.RequestException as exc:
        raise JudgeEndpointError(
            f"The judge endpoint {settings.base_url} is unreachable ({type(exc).__name__}). Start the server or fix "
            "KICK_JUDGE_BASE_URL, or unset it to skip judge metrics.") from None
    if response.status_code in (401, 403):
        raise JudgeAuthError(
            f"The judge endpoint {settings.base_url} rejected the API key from ${settings.api_key_env} "
            f"(HTTP {response.status_code}). Set the right key in that variable (or name another one with "
            "KICK_JUDGE_API_KEY_ENV).")


def current_settings() -> JudgeSettings:
    """The settings of this run (from the last :func:`configure`, else the environment)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = settings_from(None)
        return _settings


def active_judge() -> Judge | None:
    global _judge, _settings
    with _lock:
        if _settings is None:
            _settings = settings_from(None)
        if not _settings.enabled:
            return None
        if _judge is None:
            _judge = Judge(_settings)
        return _judge


def judge_doc(item: dict[str, Any], protocols: Sequence[Any]) -> dict[str, float]:
    """Judge metrics for one doc ({} with no judge configured)."""
    global _bar
    judge = active_judge()
    if judge is None:
        return {}
    replies: list = []
    metrics = judge_items(judge, [item], [protocols], progress=False, replies_out=replies)[0]
    if _bar is None:  # lm-eval does not tell process_results how many docs remain: a running count
        from tqdm.auto import tqdm

        _bar = tqdm(desc=f"judge requests ({judge.settings.name})", unit="req")
    _bar.update(len(replies[0]))
    _bar.set_postfix(invalid=f"{metrics['judge_invalid_rate']:.2f}", cache_hits=judge.cache.hits, refresh=False)
    return metrics
