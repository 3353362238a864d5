"""What the stage planners share in one planning pass: the study, its store, the plan so far, reads made once.

A :class:`PlanContext` is made by :func:`~raymatch.engine.planning.make_plan` and handed to every stage's planner
in run order. Reads of the store that several planners need (stored repeats, the pairs a table holds, the factors
stored) are made once and remembered; a stage keeps what only it and the stages after it need with
:meth:`PlanContext.once`. What the stages declare that other planners need (which factors their tasks read, which
pooled layers) comes in as the stages' hooks: the context imports no stage.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .pairlist import PairList, StoredPairs, policy_positions
from .plan import ModelGroup, Plan

if TYPE_CHECKING:
    from ..store import Store
    from ..study import Study

__all__ = ["FactorReader", "PairUnit", "PlanContext", "PooledReader", "population_policy"]

#: ``(group, layer, repeat, pairs, positions)``: the pairs of one group for one layer and stored repeat, and the
#: position of each of the group's models (see :attr:`PlanContext.pair_units`).
PairUnit = tuple[ModelGroup, str, int, PairList, dict[str, int]]
#: ``reader(context)``: one ``(matrix layer, repeat, model id)`` per task still to do and factor it reads.
FactorReader = Callable[["PlanContext"], Iterable[tuple[str, int, str]]]
#: ``reader(context)``: the conv layers whose per-example means a stage reads.
PooledReader = Callable[["PlanContext"], Iterable[str]]


def population_policy(pairs: Any) -> str:
    """The pair policy across a population's models: ``pairs`` itself, or ``'all'`` for ``{reference: final}``."""
    return pairs if isinstance(pairs, str) else "all"


class PlanContext:
    """What the stage planners share: the study, its store, the plan so far, and store reads made once.

    Parameters
    ----------
    study : Study
    store : Store
    plan : Plan
        The plan being made: its groups, and the stages planned so far.
    factor_readers : tuple of callable
        The :attr:`~raymatch.engine.stages.Stage.factor_reads` of the stages the study asks for, in run order: which
        stored factors their tasks still to do read (the factor stage plans from them).
    pooled_readers : tuple of callable
        The :attr:`~raymatch.engine.stages.Stage.pooled_layers` of the stages the study asks for: the conv layers
        whose per-example means they read (extraction stores them too).
    retry_failed : bool, default False
        A pair whose only rows are failed ones counts as missing (``raymatch run --retry-failed``).
    known_ids : dict, optional
        Checkpoint key → model id, from an earlier plan of this run.
    """

    def __init__(self, study: Study, store: Store, plan: Plan, *, factor_readers: tuple[FactorReader, ...] = (),
                 pooled_readers: tuple[PooledReader, ...] = (), retry_failed: bool = False,
                 known_ids: dict[str, str] | None = None):
        self.study, self.store, self.plan = study, store, plan
        self.factor_readers, self.pooled_readers = factor_readers, pooled_readers
        self.retry_failed = retry_failed
        self.known_ids = dict(known_ids or {})  # checkpoint key → model id, from an earlier plan of this run
        self._repeats: dict[tuple[str, str], int | None] = {}
        self._once: dict[str, Any] = {}

    def once(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``name`` is asked for in this planning pass, remembered after that.

        For what a stage derives and another planner needs too (the factor stage counts the readers of every
        factor from the pair stages' tasks): each is worked out once per pass.
        """
        if name not in self._once:
            self._once[name] = compute()
        return self._once[name]

    def stored_repeats(self, matrices: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int | None]:
        """:func:`~raymatch.store.activations.stored_repeats` of ``(model id, layer)`` pairs, read in one batch.

        Remembered for the planning pass: each matrix's manifests are read once, whichever planner asks.
        """
        from ..store.activations import stored_repeats_of

        matrices = list(dict.fromkeys(matrices))
        missing = [matrix for matrix in matrices if matrix not in self._repeats]
        if missing:
            self._repeats.update(stored_repeats_of(self.store, self.study.probe_id, missing))
        return {matrix: self._repeats[matrix] for matrix in matrices}

    @functools.cached_property
    def pair_units(self) -> list[PairUnit]:
        """``(group, layer, repeat, pairs, positions)`` for every group × layer × stored repeat.

        A group's ``pairs`` are one :class:`~raymatch.engine.pairlist.PairList` (two arrays of positions, shared by
        its layers and repeats): 1,000 models' 499,500 pairs take 4 MB, not a tuple each.
        """
        repeats = self.stored_repeats((self.plan.model_ids[group.checkpoints[0]], layer)
                                      for group in self.plan.groups if group.checkpoints for layer in self.plan.layers)
        units = []
        for group in self.plan.groups:
            ids = [self.plan.model_ids[key] for key in group.checkpoints]
            positions = {model: index for index, model in enumerate(ids)}
            pairs = self._group_pairs(group, ids)
            for layer in self.plan.layers:
                for repeat in range(repeats[ids[0], layer]):
                    units.append((group, layer, repeat, pairs, positions))
        return units

    def _group_pairs(self, group: ModelGroup, ids: list[str]) -> PairList:
        """The pairs of a group's models by its pair policy, each once, in order; none of a model with itself.

        (A saved epoch that is the selected one is the final model itself: the same id twice in ``ids``.)
        """
        if group.position_pairs is not None:
            chosen = np.array(group.position_pairs, dtype=np.int64).reshape(-1, 2).T
        else:
            chosen = policy_positions(population_policy(self.study.pairs), len(ids), group.reference)
        models = tuple(dict.fromkeys(ids))
        if len(models) == len(ids) and group.position_pairs is None:  # a policy's pairs of distinct models
            return PairList(models, chosen[0], chosen[1])
        number = {model: index for index, model in enumerate(models)}
        of_position = np.array([number[model] for model in ids], dtype=np.int64)
        a, b = of_position[chosen[0]], of_position[chosen[1]]
        keep = a != b
        a, b = a[keep], b[keep]
        _, first = np.unique(a * len(models) + b, return_index=True)  # each pair once, at its first place
        first.sort()
        return PairList(models, a[first], b[first])

    @functools.cache  # noqa: B019 - one context per planning pass
    def stored_rows(self, table: str, columns: tuple[str, ...], *, ok_only: bool = False) -> frozenset[tuple]:
        """The ``columns`` of every row ``table`` holds for this study's current configuration, as tuples.

        One scan of the table's log and the columns asked for. With ``ok_only`` (a table with a ``status``
        column), only its ``"ok"`` rows.
        """
        from ..results import read_columns

        filters = {"study": self.study.name, "config_hash": self.study.config_hash}
        if ok_only:
            filters["status"] = "ok"
        rows = read_columns(self.store, table, list(columns), filters=filters)
        return frozenset(zip(*(rows.column(name).to_pylist() for name in columns), strict=True))

    @functools.cache  # noqa: B019 - one context per planning pass
    def stored_pairs(self, table: str) -> StoredPairs:
        """(population, layer, repeat, model_a, model_b) of every pair ``table`` holds rows of for this study.

        One scan of the table's log and identity columns, filtered to the study's current configuration, read a
        batch at a time into :class:`~raymatch.engine.pairlist.StoredPairs` (8 bytes a stored pair). Work is planned
        per pair, not per task: when the population grows, only the new pairs are computed, whichever blocks they
        fall in. A pair with a row is done (failed rows included: ``raymatch status`` lists them), unless the
        context retries failed pairs: then only a pair with an ``"ok"`` row is done.
        """
        from ..results import scan_columns
        from ..results.schema import table_schema

        filters = {"study": self.study.name, "config_hash": self.study.config_hash}
        if self.retry_failed and "status" in table_schema(table).names:
            filters["status"] = "ok"
        return StoredPairs(scan_columns(self.store, table, ["population", "layer", "repeat", "model_a", "model_b"],
                                        filters=filters))

    @functools.cached_property
    def finished_tasks(self) -> frozenset[str]:
        """Ids of the tasks recorded as done in the ``tasks`` table for this study (simple matches)."""
        return frozenset(task_id for (task_id,) in self.stored_rows("tasks", ("task_id",)))

    def missing_pairs(self, table: str, group: ModelGroup, layer: str, repeat: int,
                      pairs: Sequence[tuple[str, str]]) -> PairList:
        """The pairs of one unit that ``table`` holds no rows of, in order."""
        pairs = PairList.of(pairs)
        stored = self.stored_pairs(table).contains(group.name, layer, repeat, pairs)
        return pairs[~stored] if stored.any() else pairs

    @functools.cached_property
    def stored_factors(self) -> frozenset[str]:
        """Every key under the probe's factor root (one listing)."""
        from ..store.layout import factor_root

        return frozenset(self.store.list(factor_root(self.study.probe_id)))
