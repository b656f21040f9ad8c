"""Errors raised by the judge package (each message says what to fix)."""

from __future__ import annotations


class JudgeError(RuntimeError):
    """Base class of every judge failure that should stop a run."""


class JudgeConfigError(JudgeError, ValueError):
    """The judge settings (environment / --metadata / CLI flags) are invalid."""


class JudgeAuthError(JudgeError):
    """The endpoint rejected the API key (HTTP 401/403)."""


class JudgeEndpointError(JudgeError):
    """The endpoint is unreachable, the model is unknown (404), or retries ran out."""
