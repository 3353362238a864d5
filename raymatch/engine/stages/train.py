"""The train stage: one task per (group, seed) whose checkpoint record is not stored.

Only a ``population.training`` study trains, and the null baseline's untrained models are initialised here; the
tasks run as Ray tasks (:class:`~raymatch.engine.executors.Training`, one GPU each where asked) through
:func:`raymatch.engine.training.train_population`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..plan import StagePlan
from .stage import Stage

if TYPE_CHECKING:
    from ..context import PlanContext

__all__ = ["TRAIN", "TrainTask", "plan_train"]


@dataclass(frozen=True)
class TrainTask:
    """One seed of a model group to train (or, ``untrained``, to initialise) under the group's ``prefix``."""

    population: str
    prefix: str
    seed: int
    untrained: bool = False


def plan_train(context: PlanContext) -> StagePlan:
    """One task per (group, seed) whose checkpoint record is not stored; the models the study trains, counted.

    Only groups the study trains or initialises itself count (a ``prefix``): checkpoints given by the user are no
    training skipped.
    """
    groups = context.plan.groups
    tasks = [TrainTask(group.name, group.prefix, seed, untrained=group.name == "untrained")
             for group in groups for seed in group.train_todo]
    # each checkpoint once (the permuted null reuses the trained ones); a trajectory's epochs are no models here
    models = {key for group in groups if group.prefix is not None and group.origins is None
              for key in group.checkpoints}
    return StagePlan(tasks, len(models) - len(tasks))


TRAIN = Stage("train", "models", plan_train, None, "training", stop_on_failure=True, failure="training failed")
