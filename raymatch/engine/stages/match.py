"""The match stage: every pair's whole ε-curve and CKA, into ``curves``, by blocks of models; and its measures.

The pairs ``curves`` lacks are grouped into tasks by the blocks of their models (:func:`~raymatch.engine.tasks
.block_tasks`); each task (:func:`~raymatch.engine.tasks.match_task`) reads each model's factor once. A study
listing the standard measures (``measures``) gets them in the same tasks, into ``measures`` and ``neurons``
(:mod:`raymatch.engine.measuring`); pairs whose curves are stored and some of whose measures are not get tasks
that compute only those measures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..measuring import missing_measures
from ..model_rows import record_models
from ..pairlist import PairList
from ..plan import StagePlan
from ..tasks import block_tasks, match_task
from .stage import Stage, pairs_in

if TYPE_CHECKING:
    from ..context import PlanContext

__all__ = ["MATCH", "match_factor_reads", "match_tasks", "plan_match"]


def match_tasks(context: PlanContext) -> tuple[list, int]:
    """The match tasks still to do and the pairs stored (worked out once per planning pass)."""
    return context.once("match_tasks", lambda: _match_tasks(context))


def _match_tasks(context: PlanContext) -> tuple[list, int]:
    study = context.study
    tasks, done = [], 0
    for group, layer, repeat, pairs, positions in context.pair_units:
        missing = context.missing_pairs("curves", group, layer, repeat, pairs)
        if study.table_measures:  # pairs whose curves are stored but not every measure: tasks of their own
            listed = PairList.of(pairs)
            stored = listed[context.stored_pairs("curves").contains(group.name, layer, repeat, listed)]
            lacking = missing_measures(context, group, layer, repeat, list(stored))
        else:
            lacking = {}
        done += len(pairs) - len(missing) - sum(map(len, lacking.values()))
        common = {"block": study.resources.pair_block, "center": study.center, "population": group.name,
                  "positions": positions, "cka": "cka" in study.measure_names,
                  "permute_b_seed": group.permute_b_seed, "kernel": study.resources.match_kernel,
                  "svcca_keep": study.svcca_keep}
        tasks += block_tasks(study.name, study.config_hash, study.probe_id, layer, repeat, missing,
                             measures=study.table_measures, **common)
        for measures, more in lacking.items():
            tasks += block_tasks(study.name, study.config_hash, study.probe_id, layer, repeat, more,
                                 measures=measures, curve=False, **common)
    return tasks, done


def plan_match(context: PlanContext) -> StagePlan:
    """The pairs ``curves`` lacks, grouped into tasks by blocks of models (each pair's whole ε-curve and CKA)."""
    return StagePlan(*match_tasks(context))


def match_factor_reads(context: PlanContext) -> Iterator[tuple[str, int, str]]:
    """Each match task still to do reads the factor of each of its models."""
    for task in match_tasks(context)[0]:
        for model in task.models:
            yield task.layer, task.repeat, model


MATCH = Stage("match", "pairs × layers × repeats", plan_match, match_task, "curves", pairs_in, reads=("extract",),
              table="curves", tables=("measures", "neurons"), prepare=record_models, factor_reads=match_factor_reads)
