"""Deprecated: moved to :mod:`kick_analysis.sweep` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.sweep", "kick_analysis.sweep")
