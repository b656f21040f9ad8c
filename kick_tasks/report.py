"""Deprecated: moved to :mod:`kick_analysis.report` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.report", "kick_analysis.report")
