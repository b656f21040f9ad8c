"""kick_tasks: what lm-eval's kick task YAMLs call (data loaders, prompts, metrics) and the LLM judge.

* one module per task family: :mod:`~kick_tasks.freebaseqa`, :mod:`~kick_tasks.mmlu`, :mod:`~kick_tasks.triviaqa`,
  :mod:`~kick_tasks.wikitext_ppl`, :mod:`~kick_tasks.summarization`, :mod:`~kick_tasks.instruction_following`,
  :mod:`~kick_tasks.mt_bench`; shared answer metrics in :mod:`~kick_tasks.metrics`.
* :mod:`kick_tasks.judge` - the LLM-as-judge protocols and the ``kick judge`` command.
* :func:`task_manager` - an lm-eval ``TaskManager`` that sees the kick tasks.

Study tools and the ``kick`` CLI live in :mod:`kick_analysis`, the data resolver in :mod:`kick_models.data`;
their old ``kick_tasks.<module>`` paths re-export them for one release (:mod:`kick_tasks._moved`).
"""

from __future__ import annotations


def task_manager(include_path=None, include_defaults: bool = True, **kwargs):
    """An lm-eval ``TaskManager`` that also sees the kick tasks.

    >>> tm = task_manager(include_defaults=False)   # fast: kick tasks only
    >>> lm_eval.simple_evaluate(model=..., tasks=["kick_factoid_qa"], task_manager=tm)
    """
    from kick_models.autoload import ensure_loaded, with_kick_tasks

    ensure_loaded()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=with_kick_tasks(include_path), include_defaults=include_defaults, **kwargs)
