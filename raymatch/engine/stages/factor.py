"""The factor stage: the factors that two or more pair tasks still to do read, computed once, before them.

A factor that only one pair task needs is computed in that task (:func:`~raymatch.store.factors.cached_factor`),
which reads the activations anyway: a separate factor task would read them a second time (on S3, the larger part
of the cost). Which tasks read which factor, every stage after this one declares
(:attr:`Stage.factor_reads <raymatch.engine.stages.Stage.factor_reads>`).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from ..plan import StagePlan
from ..tasks import factor_and_store
from .stage import Stage

if TYPE_CHECKING:
    from ..context import PlanContext

__all__ = ["FACTOR", "count_stored", "plan_factor"]


def plan_factor(context: PlanContext) -> StagePlan:
    """One task per (model, layer, repeat) that two or more pair tasks still to do need and the store lacks.

    A matrix that cannot be factored (its pairs recorded as failed rows) is not asked for again.
    """
    from ...store import ActivationKey
    from ...store.layout import factor_prefix, manifest_key
    from ..tasks import FactorTask

    study = context.study
    center, probe_id = study.center, study.probe_id

    def stored(model: str, layer: str, repeat: int) -> bool:
        return manifest_key(factor_prefix(probe_id, model, layer, repeat, center)) in context.stored_factors

    done = count_stored(context)
    readers: collections.Counter = collections.Counter()  # (layer, repeat, model) → pair tasks that need it
    for reads in context.factor_readers:
        readers.update(reads(context))
    tasks = [FactorTask(ActivationKey(probe_id, model, layer, repeat), center)
             for (layer, repeat, model), count in sorted(readers.items())
             if count > 1 and not stored(model, layer, repeat)]
    return StagePlan(tasks, done)


def count_stored(context: PlanContext) -> int:
    """The study's (model, layer, repeat) matrices whose factor is stored (the permuted null's models once)."""
    from ...store.layout import factor_prefix, manifest_key

    study = context.study
    return sum(manifest_key(factor_prefix(study.probe_id, context.plan.model_ids[key], layer, repeat, study.center))
               in context.stored_factors for group, layer, repeat, _, _ in context.pair_units
               if group.permute_b_seed is None for key in group.checkpoints)


FACTOR = Stage("factor", "models × layers × repeats", plan_factor, factor_and_store, "curves", reads=("extract",),
               recount=count_stored)  # a factor only one pair task reads is computed (and stored) in that task
