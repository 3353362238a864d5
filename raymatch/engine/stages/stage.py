"""What a stage declares: how it plans, what it reads and writes, what one task runs and where tasks run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...store import Store
    from ...study import Study
    from ..context import FactorReader, PlanContext, PooledReader
    from ..plan import Plan, StagePlan

__all__ = ["EXECUTORS", "Stage", "one", "pairs_in"]

#: Where a stage's tasks run (:func:`raymatch.engine.executors.choose_executors` picks one executor for each, once
#: per run): Ray tasks that train (one GPU each where asked), extraction (GPU actors where the cluster has GPUs,
#: this process for imported activations), the pair work (warm CPU actors on one CPU node, Ray tasks otherwise),
#: or the curves — the pair work of the batched kernel and the factors it reads (GPU actors where
#: ``resources.match_gpus_per_actor`` asks for them and the cluster has GPUs, else as the pair work).
EXECUTORS = ("training", "extraction", "pairs", "curves")


def one(_task: Any) -> int:
    """One unit of work per task."""
    return 1


def pairs_in(task: Any) -> int:
    """The pairs of a task (a block of pairs)."""
    return len(task.pairs)


@dataclass(frozen=True)
class Stage:
    """One stage of a study, declared once in its own module of :mod:`raymatch.engine.stages`.

    Attributes
    ----------
    name : str
        The stage's name in plans, summaries, the ``runs`` table and ``raymatch status``.
    unit : str
        What its counts count.
    plan : callable
        ``plan(context) -> StagePlan``: what is stored and what is left, from the store (see
        :class:`~raymatch.engine.context.PlanContext`). Called only once the stages it ``reads`` have no work left.
    task : callable or None
        The task body ``task(store, item) -> dict`` (None for training, whose executor runs its own tasks).
        Tasks never write results tables: a stage with a ``table`` returns its rows (``result['rows']``: a list of
        the ``table``'s rows, or a mapping of table name to rows for a stage that also writes ``tables``) and
        the driver commits them in batches. Its module imports no torch: a cold Ray worker imports it.
    executor : str
        One of :data:`EXECUTORS`.
    size : callable
        Units of work in one task (pairs for the blocks of match and cross, 1 otherwise).
    reads : tuple of str
        The stages whose stored output this one reads: while any of them has work left (or is not known yet),
        this stage is planned as :data:`~raymatch.engine.plan.NOT_KNOWN_YET`, and planned again after them.
    enabled : callable, optional
        ``enabled(study) -> bool``: whether the study asks for this stage at all (default: always). A stage not
        asked for is planned as nothing to do, nothing stored.
    stop_on_failure : bool
        A failed task stops the run after the stage (the stages after it would lack their inputs); otherwise
        failures are recorded (failed rows) and the run goes on.
    failure : str, optional
        With ``stop_on_failure``: the run stops with ``RuntimeError(f"{failure}: {error}")`` (default: the failed
        task's own error, raised again).
    table : str, optional
        The results table the rows of its tasks go to.
    tables : tuple of str
        Further tables its tasks may write: their ``result['rows']`` is then a mapping of table name (``table`` or
        one of these) to rows (the match stage: ``curves``, and ``measures`` and ``neurons`` for a study that lists
        the standard measures).
    marks_done : bool
        Record each finished task in the ``tasks`` table (a task may find no rows, and must not run again).
    prepare : callable, optional
        ``prepare(study, store, plan)``, run by the driver before the stage's tasks (the ``models`` rows that the
        rows of its table refer to).
    factor_reads : callable, optional
        ``factor_reads(context)``: one ``(matrix layer, repeat, model id)`` per task still to do and stored matrix
        whose factor it reads. The factor stage computes a factor ahead of them when two or more tasks read it.
    pooled_layers : callable, optional
        ``pooled_layers(context)``: conv layers whose per-example means (``<layer>+mean``) this stage reads;
        extraction stores them beside the layers.
    claim : callable, optional
        ``claim(study, plan, task) -> tuple of str``: the key parts of the lease (:mod:`raymatch.engine.leases`) a
        driver takes on a task before running it, so that another driver of the same study on the same store waits
        for it instead of doing it again (extraction: the probe and the model).
    recount : callable, optional
        ``recount(context)``: the units of this stage stored now. Called once every stage has run: what the tasks
        of later stages stored for this one (a factor that only one pair task reads, computed in that task) counts
        as computed in the run's summary.
    """

    name: str
    unit: str
    plan: Callable[[PlanContext], StagePlan]
    task: Callable[..., dict] | None
    executor: str
    size: Callable[[Any], int] = one
    reads: tuple[str, ...] = ()
    enabled: Callable[[Study], bool] | None = None
    stop_on_failure: bool = False
    failure: str | None = None
    table: str | None = None
    tables: tuple[str, ...] = ()
    marks_done: bool = False
    prepare: Callable[[Study, Store, Plan], None] | None = None
    factor_reads: FactorReader | None = None
    pooled_layers: PooledReader | None = None
    claim: Callable[[Study, Plan, Any], tuple[str, ...]] | None = None
    recount: Callable[[PlanContext], int] | None = None

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"stage {self.name!r}: executor {self.executor!r} is not one of {EXECUTORS}")

    def rows_by_table(self, rows: Any) -> dict[str, list]:
        """A task's ``result['rows']`` as table name → rows: a list is the rows of :attr:`table`.

        Raises
        ------
        ValueError
            A table the stage does not declare (neither :attr:`table` nor one of :attr:`tables`).
        """
        by_table = dict(rows) if isinstance(rows, Mapping) else {self.table: rows}
        unknown = [name for name in by_table if name != self.table and name not in self.tables]
        if unknown:
            raise ValueError(f"stage {self.name!r} returned rows of table {unknown[0]!r}, which it does not declare "
                             f"(table {self.table!r}, tables {list(self.tables)})")
        return by_table

    def wanted(self, study: Study) -> bool:
        """Whether ``study`` asks for this stage (see :attr:`enabled`)."""
        return self.enabled is None or self.enabled(study)
