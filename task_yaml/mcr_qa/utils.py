"""Shim: lm-eval resolves ``!function utils.<name>`` next to the YAML; the code lives in kick_tasks."""

from kick_tasks.mmlu import load

__all__ = ["load"]
