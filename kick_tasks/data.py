"""Deprecated: moved to :mod:`kick_models.data` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.data", "kick_models.data")
