"""Judge settings: read from environment variables and/or lm-eval ``--metadata``.

Environment (every key also accepted lower-case with a ``judge_`` prefix in ``--metadata``,
e.g. ``--metadata '{"judge_base_url": "http://127.0.0.1:8000/v1", "judge_model": "gpt-4o"}'``):

=============================  ==============================================================
``KICK_JUDGE_BACKEND``         ``openai`` (any OpenAI-compatible chat-completions endpoint),
                               ``hf`` (a local Hugging Face model run in-process) or ``none``.
                               Default: ``openai`` when a base URL is set, ``hf`` when only
                               ``KICK_JUDGE_MODEL`` names an existing folder, else ``none``.
``KICK_JUDGE_BASE_URL``        e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``
``KICK_JUDGE_MODEL``           model name sent to the endpoint, or the local model folder (hf)
``KICK_JUDGE_API_KEY_ENV``     NAME of the environment variable holding the key
                               (default ``OPENAI_API_KEY``; the key itself is never a setting)
``KICK_JUDGE_CACHE``           SQLite cache file (default ``~/.cache/kick/judge.sqlite``)
``KICK_JUDGE_CONCURRENCY``     parallel requests (default 4)
``KICK_JUDGE_MAX_TOKENS``      judge completion length (default: the protocol's own, e.g. 1024 for
                               the paper's pairwise prompts, 2048 for FastChat's grading)
``KICK_JUDGE_TEMPERATURE``     judge sampling temperature (default: the protocol's own: 0.2 for
                               instruction following and 0.1 for summarization as the paper's code
                               sent them, 0 for FastChat grading); the in-process backend is greedy
``KICK_JUDGE_ORDERS``          ``one`` (default: the paper's single order, comparator = Assistant 1)
                               or ``both`` (also asks the swapped order and adds ``*_debiased`` metrics)
``KICK_JUDGE_EXTRAS``          comma list of kick's opt-in extras, each with its own metric names:
                               ``robust`` (tolerant verdict parsing: ``*_robust``), ``four_criteria``
                               (kick's four-criteria pairwise prompt: ``judge4c_*``), ``rating``
                               (FastChat single-answer grading: ``judge_rating``)
``KICK_JUDGE_TIMEOUT``         seconds per HTTP request (default 120)
``KICK_JUDGE_RETRIES``         retries on 429/5xx/timeouts (default 5)
=============================  ==============================================================

API keys are read from the environment at request time only; they never enter these
settings, results, samples, caches or logs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import JudgeConfigError

BACKENDS = ("openai", "hf", "none")
_FIELDS = ("backend", "base_url", "model", "api_key_env", "cache", "concurrency", "max_tokens", "timeout", "retries",
           "temperature", "orders", "extras")
ORDERS = ("one", "both")
EXTRAS = ("robust", "four_criteria", "rating")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0")
HINT = (
    "No LLM judge configured: judge metrics are skipped (judge-free metrics only). "
    "Configure one with KICK_JUDGE_BASE_URL + KICK_JUDGE_MODEL (+ the key in $OPENAI_API_KEY or the variable "
    "named by KICK_JUDGE_API_KEY_ENV), or KICK_JUDGE_BACKEND=hf KICK_JUDGE_MODEL=/path/to/model, "
    "or judge the samples later with `kick judge`."
)


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kick" / "judge.sqlite"


@dataclass(frozen=True)
class JudgeSettings:
    """Everything that identifies and drives a judge (never the API key)."""

    backend: str = "none"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    cache: str | None = None
    concurrency: int = 4
    max_tokens: int | None = None
    timeout: float = 120.0
    retries: int = 5
    temperature: float | None = None
    orders: str = "one"
    extras: str = ""

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    @property
    def name(self) -> str:
        """Short file-name-safe judge name, e.g. ``gpt-4o`` or ``SmolLM2-135M``."""
        raw = (self.model or self.backend).rstrip("/").split("/")[-1]
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw) or self.backend

    def identity(self) -> str:
        """What makes two judges the same for the cache: backend + endpoint + model (no key).

        A server on this machine (127.0.0.1, localhost, ::1) is identified by the model alone, so the
        same judge served again on another port still hits the cache."""
        if self.backend == "openai":
            from urllib.parse import urlsplit

            url = urlsplit((self.base_url or "").rstrip("/"))
            if (url.hostname or "") in LOOPBACK_HOSTS or f"[{url.hostname}]" in LOOPBACK_HOSTS:
                return f"openai|local|{self.model}"
            return f"openai|{url.scheme}://{url.netloc}{url.path}|{self.model}"
        return f"{self.backend}|{self.model}"

    @property
    def extra_set(self) -> frozenset[str]:
        return frozenset(e for e in self.extras.split(",") if e)

    def public_dict(self) -> dict[str, Any]:
        """Safe to write into results (no secrets exist in this object by construction)."""
        return asdict(self)

    def cache_path(self) -> Path:
        return Path(self.cache) if self.cache else default_cache_path()

    def validate(self) -> "JudgeSettings":
        if self.backend not in BACKENDS:
            raise JudgeConfigError(f"judge backend {self.backend!r} is unknown; use one of {', '.join(BACKENDS)}.")
        if self.backend == "openai":
            if not self.base_url:
                raise JudgeConfigError("the openai judge backend needs a base URL: set KICK_JUDGE_BASE_URL "
                                       "(e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1).")
            if not str(self.base_url).startswith(("http://", "https://")):
                raise JudgeConfigError(f"KICK_JUDGE_BASE_URL={self.base_url!r} is not an http(s) URL.")
            if not self.model:
                raise JudgeConfigError("the openai judge backend needs a model name: set KICK_JUDGE_MODEL.")
        if self.backend == "hf" and not self.model:
            raise JudgeConfigError("the hf judge backend needs KICK_JUDGE_MODEL=<local model folder or Hub id>.")
        if self.concurrency < 1 or (self.max_tokens is not None and self.max_tokens < 1) or self.timeout <= 0 \
                or self.retries < 0:
            raise JudgeConfigError("judge concurrency, max_tokens and timeout must be positive, retries >= 0.")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise JudgeConfigError(f"judge temperature {self.temperature} is outside 0..2.")
        if self.orders not in ORDERS:
            raise JudgeConfigError(f"judge orders {self.orders!r} is unknown; use 'one' (the paper's) or 'both'.")
        unknown = sorted(self.extra_set - set(EXTRAS))
        if unknown:
            raise JudgeConfigError(f"unknown judge extras {unknown}; choose from {', '.join(EXTRAS)} (comma-separated).")
        if not self.api_key_env.replace("_", "").isalnum():
            raise JudgeConfigError(f"KICK_JUDGE_API_KEY_ENV must NAME an environment variable, got {self.api_key_env!r}.")
        return self


_CASTS = {"concurrency": int, "max_tokens": int, "timeout": float, "retries": int, "temperature": float}
_FORBIDDEN = ("judge_api_key", "api_key", "judge_key", "openai_api_key")


def settings_from(metadata: dict[str, Any] | None = None, environ: dict[str, str] | None = None,
                  **overrides: Any) -> JudgeSettings:
    """Build validated settings: CLI overrides > ``--metadata`` ``judge_*`` keys > ``KICK_JUDGE_*`` env."""
    env = os.environ if environ is None else environ
    metadata = metadata or {}
    for bad in _FORBIDDEN:
        if bad in metadata:
            raise JudgeConfigError(
                f"--metadata contains {bad!r}: API keys must never go through --metadata/--model_args (lm-eval writes "
                "them into the results). Put the key in an environment variable and name it with KICK_JUDGE_API_KEY_ENV.")
    values: dict[str, Any] = {}
    for field in _FIELDS:
        value = overrides.get(field)
        if value is None:
            value = metadata.get(f"judge_{field}")
        if value is None:
            value = env.get(f"KICK_JUDGE_{field.upper()}") or None
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if value is not None:
            values[field] = _CASTS[field](value) if field in _CASTS else str(value)
    if "backend" not in values:
        if values.get("base_url"):
            values["backend"] = "openai"
        elif values.get("model") and Path(os.path.expanduser(values["model"])).is_dir():
            values["backend"] = "hf"
        else:
            values["backend"] = "none"
    values["backend"] = values["backend"].lower()
    if "orders" in values:
        values["orders"] = values["orders"].strip().lower()
    if "extras" in values:
        values["extras"] = ",".join(sorted({e.strip().lower() for e in values["extras"].split(",") if e.strip()}))
    return JudgeSettings(**values).validate()


def with_overrides(settings: JudgeSettings, **changes: Any) -> JudgeSettings:
    return replace(settings, **{k: v for k, v in changes.items() if v is not None}).validate()
