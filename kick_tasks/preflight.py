"""Deprecated: moved to :mod:`kick_analysis.preflight` (this re-export goes in the next release)."""

from kick_tasks._moved import moved

moved("kick_tasks.preflight", "kick_analysis.preflight")
