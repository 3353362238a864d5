"""The simple stage: the simple matches of each pair, layer, repeat and ε of ``simple_matches``.

Only the trained population's pairs, in the layers ``simple_matches`` lists; a task whose maximum match is larger
than ``max_neurons`` finds no rows, and is recorded as done in the ``tasks`` table all the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..model_rows import record_models
from ..plan import StagePlan
from ..tasks import SimpleTask, simple_task
from .stage import Stage

if TYPE_CHECKING:
    from ..context import PlanContext

__all__ = ["SIMPLE", "plan_simple", "simple_factor_reads", "simple_tasks"]


def simple_tasks(context: PlanContext) -> tuple[list[SimpleTask], int]:
    """The simple-match tasks still to do, and how many are stored (worked out once per planning pass)."""
    return context.once("simple_tasks", lambda: _simple_tasks(context))


def _simple_tasks(context: PlanContext) -> tuple[list[SimpleTask], int]:
    study, simple = context.study, context.study.simple_matches
    if not simple.enabled:
        return [], 0
    layers = set(study.simple_layer_names)
    todo, done = [], 0
    for group, layer, repeat, pairs, _ in context.pair_units:
        if layer not in layers or group.name != "trained":
            continue
        for pair in pairs:
            for eps in simple.eps:
                task = SimpleTask(study.name, study.config_hash, study.probe_id, layer, repeat, pair, eps,
                                  study.center, simple.max_neurons)
                if task.task_id in context.finished_tasks:
                    done += 1
                else:
                    todo.append(task)
    return todo, done


def plan_simple(context: PlanContext) -> StagePlan:
    """One task per (pair, layer, repeat, ε) of the simple-match layers without a stored result."""
    return StagePlan(*simple_tasks(context))


def simple_factor_reads(context: PlanContext) -> Iterator[tuple[str, int, str]]:
    """Each simple-match task still to do reads the factors of its two models."""
    for task in simple_tasks(context)[0]:
        for model in set(task.pair):
            yield task.layer, task.repeat, model


SIMPLE = Stage("simple", "pairs × layers × repeats × ε", plan_simple, simple_task, "pairs", reads=("extract",),
               table="simple_matches", marks_done=True, prepare=record_models, factor_reads=simple_factor_reads)
