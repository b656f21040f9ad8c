"""Shim: lm-eval resolves ``!function utils.<name>`` next to the YAML; the code lives in kick_tasks."""

from kick_tasks.triviaqa import closed_prompt, doc_to_target, load, open_prompt, process_results

__all__ = ["closed_prompt", "doc_to_target", "load", "open_prompt", "process_results"]
