"""Deprecated: moved to :mod:`kick_analysis.sweep_executors` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.sweep_executors", "kick_analysis.sweep_executors")
