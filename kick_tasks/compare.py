"""Deprecated: moved to :mod:`kick_analysis.compare` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.compare", "kick_analysis.compare")
