"""Shim: lm-eval resolves ``!function utils.<name>`` next to the YAML; the code lives in kick_tasks."""

from kick_tasks.wikitext_ppl import doc_to_target, doc_to_text, load, process_results

__all__ = ["doc_to_target", "doc_to_text", "load", "process_results"]
