"""Shim: lm-eval resolves ``!function utils.<name>`` next to the YAML; the code lives in kick_tasks."""

from kick_tasks.wikitext_ppl import AGGREGATIONS, doc_to_target, doc_to_text, load, process_results

globals().update(AGGREGATIONS)  # agg_kld_mean, agg_same_top, ... (one per divergence metric)

__all__ = ["doc_to_target", "doc_to_text", "load", "process_results", *AGGREGATIONS]
