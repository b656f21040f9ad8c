"""Deprecated: moved to :mod:`kick_analysis.demo` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.demo", "kick_analysis.demo")
