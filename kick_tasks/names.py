"""Task and metric names as kick reads them back, whichever lm-eval or kick release wrote the results.

The one mapping every reader of results and samples files goes through (``kick compare``, ``kick report``,
``kick judge``, ``kick mt-bench``, :mod:`kick_analysis.results_io`):

* :data:`RENAMED_METRICS`: metrics kick renamed. ``f1`` of the generated-answer QA tasks is ``token_f1``
  since lm-eval 0.5 registers ``f1`` as a multiple-choice metric and refuses a task that declares it for
  generated text (``ValueError: metric f1 is defined but has output_type '{'multiple_choice'}' ...``).
  Results written by earlier kick releases (``f1,none``) read as ``token_f1``.
* :func:`canonical_task`: lm-eval 0.5 names a group's subtask ``<group>::<task>`` (results keys, ``configs``,
  ``n-samples``, ``group_subtasks``, samples file names); lm-eval 0.4 names it ``<task>``. kick uses ``<task>``.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

#: (task name patterns, old metric name, current metric name)
RENAMED_METRICS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("kick_factoid_qa*", "kick_icr_qa*"), "f1", "token_f1"),
)

QUALIFIER = "::"


def canonical_task(name: str) -> str:
    """``"kick_summarization::kicksum_small"`` (lm-eval 0.5) -> ``"kicksum_small"`` (lm-eval 0.4); others unchanged."""
    return name.rsplit(QUALIFIER, 1)[-1]


def canonical_metric(task: str, metric: str) -> str:
    """The current name of ``metric`` of ``task`` (``f1`` of ``kick_factoid_qa`` -> ``token_f1``)."""
    task = canonical_task(task)
    for patterns, old, new in RENAMED_METRICS:
        if metric == old and any(fnmatchcase(task, p) for p in patterns):
            return new
    return metric


def canonical_metric_key(task: str, key: str) -> str:
    """A results key ``"<metric>[_stderr],<filter>"`` with the metric's current name."""
    if "," not in key:
        return key
    metric, filter_key = key.split(",", 1)
    stderr = metric.endswith("_stderr")
    name = canonical_metric(task, metric[: -len("_stderr")] if stderr else metric)
    return f"{name}{'_stderr' if stderr else ''},{filter_key}"


#: ``samples_<task>_<date id>.jsonl`` as lm-eval's ``--log_samples`` writes it (``<task>`` may carry the qualifier).
SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<stamp>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl$")


def samples_task(file_name: str) -> str | None:
    """The (canonical) task of a samples file name, or None if the name is not lm-eval's."""
    match = SAMPLES_NAME.match(file_name)
    return canonical_task(match.group("task")) if match else None
