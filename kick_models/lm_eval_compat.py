"""The lm-eval API differences between 0.4.x and 0.5 that kick's code meets, in one place.

* :func:`make_instance`: a request (``lm_eval.api.instance.Instance``). 0.4 takes ``idx`` and
  ``metadata=(task_name, doc_id, repeats)``; 0.5 requires ``task_name`` and the keyword ``doc_id``.
* :func:`rolling_request` / :func:`rolling_loglikelihood`: a ``loglikelihood_rolling`` request is
  ``(text,)`` in 0.4 and ``(context, text)`` in 0.5 (the context is not scored), and its result is a
  float in 0.4 and a ``(loglikelihood, is_greedy)`` pair in 0.5.

Only public lm-eval names are used (no private attributes, e.g. ``TaskManager.task_index`` became
``_index`` in 0.5 and ``HFLM.gather_object`` is gone: kick uses neither).
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import metadata
from typing import Any


@functools.lru_cache(maxsize=1)
def is_lm_eval_05() -> bool:
    """True on lm-eval 0.5 and later (pre-releases included)."""
    from packaging.version import Version

    return Version(metadata.version("lm-eval")).release[:2] >= (0, 5)


def make_instance(request_type: str, doc: dict[str, Any], arguments: tuple, *, task_name: str | None, doc_id: int,
                  idx: int = 0, repeats: int = 1):
    """An lm-eval request for ``lm.loglikelihood`` / ``lm.generate_until`` / ... on either lm-eval."""
    from lm_eval.api.instance import Instance

    required = {f.name for f in dataclasses.fields(Instance)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if "task_name" in required:  # lm-eval 0.5
        return Instance(request_type=request_type, doc=doc, arguments=arguments, task_name=task_name, doc_id=doc_id,
                        idx=idx, repeats=repeats)
    return Instance(request_type=request_type, doc=doc, arguments=arguments, idx=idx,
                    metadata=(task_name, doc_id, repeats))


def rolling_request(text: str, *, task_name: str | None = None, doc_id: int = 0):
    """A ``loglikelihood_rolling`` request scoring every token of ``text``."""
    arguments = ("", text) if is_lm_eval_05() else (text,)
    return make_instance("loglikelihood_rolling", {}, arguments, task_name=task_name, doc_id=doc_id)


def rolling_loglikelihood(result: Any) -> float:
    """The summed log-likelihood of one ``loglikelihood_rolling`` result (a float, or 0.5's pair)."""
    return float(result[0] if isinstance(result, (tuple, list)) else result)
