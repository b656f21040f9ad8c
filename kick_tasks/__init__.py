"""kick_tasks: the LLM-KICK task code (loaders, metrics, judge, CLI) for lm-eval."""

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
