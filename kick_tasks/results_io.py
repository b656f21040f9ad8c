"""Deprecated: moved to :mod:`kick_analysis.results_io` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.results_io", "kick_analysis.results_io")
