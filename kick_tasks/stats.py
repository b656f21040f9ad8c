"""Deprecated: moved to :mod:`kick_analysis.stats` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.stats", "kick_analysis.stats")
