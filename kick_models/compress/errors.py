"""The error every bad compression argument raises (re-exported by :mod:`kick_models.compress.config`)."""

from __future__ import annotations


class CompressionConfigError(ValueError):
    """A compression argument is invalid (message names argument, value and allowed values)."""
