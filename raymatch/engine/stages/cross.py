"""Cross-layer matches (``cross_layers``): layer i of model a against layer j of model b, into ``cross_curves``.

Planning: for every group (trained, untrained) the study's pairs of distinct models get every ordered pair of
distinct listed layers (i of a with j of b, and j of a with i of b), and with ``within_model`` each model gets its
pairs of layers i < j against itself. Without pooling, the same-layer pairs (i = j) are the ``curves`` rows
already and are not computed again (the report's heatmap reads its diagonal from ``curves``); with
``pool: mean`` they are computed on the pooled matrices, into ``cross_curves`` (the heatmap's diagonal then).

Two layers are compared over the same rows only (checked when the study is loaded,
:func:`raymatch.study.checks.check_cross_layers`): their stored matrices and repeats as they are, or, with
``pool: mean``, the per-example means of the conv layers (``<layer>+mean``, extracted beside them) and the
per-example layers as they are (one repeat). Task bodies return rows; they never write tables, and this module
imports no torch (a cold Ray worker imports it for its first cross task).

The trajectory group is not compared across layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ... import __version__
from ...store import ActivationKey, Store, layout
from ..model_rows import record_models
from ..plan import ModelGroup, StagePlan
from ..tasks import CURVE_KEYS, fail_row, load_factors, measure_rows
from .stage import Stage, pairs_in

if TYPE_CHECKING:
    from ...study import Study
    from ..context import PlanContext

__all__ = ["CROSS", "CROSS_KEYS", "CrossTask", "CrossUnit", "cross_factor_reads", "cross_task", "cross_tasks",
           "cross_units", "layer_pairs", "matrix_layer", "plan_cross", "pooled_layers", "run_cross_task",
           "spatial_layers"]

#: The keys of every ``cross_curves`` row, in order.
CROSS_KEYS = tuple(key for name in CURVE_KEYS for key in (("layer_a", "layer_b", "pool") if name == "layer"
                                                          else (name,)))


def matrix_layer(layer: str, spatial: bool, pool: str) -> str:
    """The stored matrix a cross-layer match reads for ``layer``.

    ``<layer>+mean`` for a conv layer under ``pool: mean``, the layer itself otherwise.
    """
    return layout.pooled_layer(layer) if pool == "mean" and spatial else layer


def layer_pairs(layers: list[str], same_model: bool, diagonal: bool = False) -> list[tuple[str, str]]:
    """Ordered pairs of ``layers``.

    Every ``(i, j)``, ``i ≠ j`` (and ``i = j`` with ``diagonal``); for a model against itself ``i < j``.
    """
    if same_model:
        return [(a, b) for i, a in enumerate(layers) for b in layers[i + 1:]]
    return [(a, b) for i, a in enumerate(layers) for j, b in enumerate(layers) if i != j or diagonal]


@dataclass(frozen=True)
class CrossTask:
    """The pairs of one group for one (layer of a, layer of b) and repeat.

    Attributes
    ----------
    study, config_hash, probe_id : str
    population : str
    layer_a, layer_b : str
        The layers compared (module names), as recorded in the rows.
    matrix_a, matrix_b : str
        The stored matrices read (:func:`matrix_layer`).
    pool : {'none', 'mean'}
    repeat : int
    pairs : tuple of (model_a, model_b)
        ``model_a == model_b`` for a model against itself.
    center, cka : bool
    kernel : {'batched', 'one_pair'}
    device : str, optional
        As for :class:`~raymatch.engine.tasks.MatchTask` (not part of the task id).
    """

    study: str
    config_hash: str
    probe_id: str
    population: str
    layer_a: str
    layer_b: str
    matrix_a: str
    matrix_b: str
    pool: str
    repeat: int
    pairs: tuple[tuple[str, str], ...]
    center: bool = False
    cka: bool = True
    kernel: str = "batched"
    device: str | None = None

    @property
    def task_id(self) -> str:
        """Deterministic id: the same work always has the same id."""
        return layout.task_id(f"{self.layer_a}~{self.layer_b}", self.repeat,
                              [self.config_hash, self.probe_id, self.population, self.pool, self.pairs, self.center,
                               self.cka])


def run_cross_task(store: Store, task: CrossTask) -> list[dict]:
    """One ``cross_curves`` row per pair of ``task``, computed as one block; a pair that fails is a failed row.

    A failing store (:class:`~raymatch.store.StoreError`) fails the task instead, with no rows.
    """
    keys = {(model, matrix): ActivationKey(task.probe_id, model, matrix, task.repeat)
            for model in dict.fromkeys(model for pair in task.pairs for model in pair)
            for matrix in dict.fromkeys((task.matrix_a, task.matrix_b))}
    factors, tolerances, errors = load_factors(store, keys, center=task.center)
    rows, measured = [], []
    for a, b in task.pairs:
        row = dict.fromkeys(CROSS_KEYS)
        row.update({"study": task.study, "population": task.population, "layer_a": task.layer_a,
                    "layer_b": task.layer_b, "pool": task.pool, "repeat": task.repeat, "model_a": a, "model_b": b,
                    "probe_id": task.probe_id, "config_hash": task.config_hash, "code_version": __version__})
        rows.append(row)
        side_a, side_b = (a, task.matrix_a), (b, task.matrix_b)
        problem = errors.get(side_a) or errors.get(side_b)
        if problem:
            fail_row(row, RuntimeError(problem))
        else:  # the coarser of the two stored dtypes' tolerances
            measured.append((row, (factors[side_a], factors[side_b]), max(tolerances[side_a], tolerances[side_b])))
    measure_rows([row for row, _, _ in measured], [pair for _, pair, _ in measured], [tol for _, _, tol in measured],
                 cka=task.cka, kernel=task.kernel, device=task.device)
    return rows


def cross_task(store: Store, task: CrossTask) -> dict:
    """One cross-layer task: its ``cross_curves`` rows (the driver commits them) and failed-row count."""
    rows = run_cross_task(store, task)
    return {"rows": rows, "failed": sum(row["status"] != "ok" for row in rows)}


# ------------------------------------------------------------------------------------------------------ planning

#: ``(group, layer_a, layer_b, matrix_a, matrix_b, repeat, pairs)``: one unit of :func:`cross_units`.
CrossUnit = tuple[ModelGroup, str, str, str, str, int, list[tuple[str, str]]]


def spatial_layers(context: PlanContext) -> frozenset[str]:
    """The study's layers with more than one position per example (conv layers), from a ``meta`` forward pass."""
    return context.once("spatial_layers", lambda: _spatial_layers(context.study))


def _spatial_layers(study: Study) -> frozenset[str]:
    import math

    from ...extract.shapes import output_shapes
    from ...probes import probe_size

    # the image shape of a built-in dataset, or read from the user's files (a built-in table has no entry for those)
    shapes = output_shapes(study.architecture, tuple(probe_size(study.probe)[1]))
    return frozenset(name for name, shape in shapes.items() if len(shape) > 1 and math.prod(shape[1:]) > 1)


def pooled_layers(context: PlanContext) -> tuple[str, ...]:
    """The conv layers whose per-example means extraction stores too (``cross_layers.pool: mean``)."""
    cross = context.study.cross_layers
    if cross is None or cross.pool != "mean":
        return ()
    spatial = spatial_layers(context)
    return tuple(name for name in context.study.cross_layer_names if name in spatial)


def cross_units(context: PlanContext) -> list[CrossUnit]:
    """Every unit of ``cross_layers``: pairs of models first, then (``within_model``) each model against itself.

    None without ``cross_layers``; same-layer units only with ``pool: mean``; no trajectory group.
    """
    return context.once("cross_units", lambda: _cross_units(context))


def _cross_units(context: PlanContext) -> list[CrossUnit]:
    cross = context.study.cross_layers
    if cross is None:
        return []
    layers = list(context.study.cross_layer_names)
    spatial = spatial_layers(context)
    units = []
    for group, layer, repeat, pairs, _ in context.pair_units:
        if group.name == "trajectory" or layer != layers[0]:
            continue  # one pass per (group, repeat) of the first cross layer: its repeats are every layer's
        if cross.pool == "mean" and repeat > 0:
            continue  # per-example matrices: one repeat
        ids = list(dict.fromkeys(context.plan.model_ids[key] for key in group.checkpoints))
        for same_model, chosen in ((False, pairs), (True, [(m, m) for m in ids] if cross.within_model else [])):
            for layer_a, layer_b in layer_pairs(layers, same_model, cross.pool == "mean") if chosen else []:
                matrix_a = matrix_layer(layer_a, layer_a in spatial, cross.pool)
                matrix_b = matrix_layer(layer_b, layer_b in spatial, cross.pool)
                units.append((group, layer_a, layer_b, matrix_a, matrix_b, repeat, list(chosen)))
    return units


def missing_cross(context: PlanContext, group: ModelGroup, layer_a: str, layer_b: str, repeat: int,
                  pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs of one cross unit that ``cross_curves`` holds no rows of (for the study's current configuration)."""
    pool = context.study.cross_layers.pool
    stored = context.stored_rows("cross_curves", ("population", "layer_a", "layer_b", "pool", "repeat", "model_a",
                                                  "model_b"))
    return [pair for pair in pairs if (group.name, layer_a, layer_b, pool, repeat, *pair) not in stored]


def cross_tasks(context: PlanContext) -> tuple[list[CrossTask], int]:
    """The cross-layer tasks still to do and the pairs stored (worked out once per planning pass)."""
    return context.once("cross_tasks", lambda: _cross_tasks(context))


def _cross_tasks(context: PlanContext) -> tuple[list[CrossTask], int]:
    study = context.study
    tasks, done = [], 0
    for group, layer_a, layer_b, matrix_a, matrix_b, repeat, pairs in cross_units(context):
        missing = missing_cross(context, group, layer_a, layer_b, repeat, pairs)
        done += len(pairs) - len(missing)
        block = study.resources.pair_block ** 2  # as many pairs as a block of match tasks
        tasks += [CrossTask(study.name, study.config_hash, study.probe_id, group.name, layer_a, layer_b, matrix_a,
                            matrix_b, study.cross_layers.pool, repeat, tuple(missing[start:start + block]),
                            study.center, "cka" in study.measure_names, study.resources.match_kernel)
                  for start in range(0, len(missing), block)]
    return tasks, done


def plan_cross(context: PlanContext) -> StagePlan:
    """One task per (group, layer of a, layer of b, repeat) of ``cross_layers`` with pairs ``cross_curves`` lacks."""
    return StagePlan(*cross_tasks(context))


def cross_factor_reads(context: PlanContext) -> Iterator[tuple[str, int, str]]:
    """Each cross task still to do reads the factors of its pairs' matrices (each once)."""
    for task in cross_tasks(context)[0]:
        yield from ({(task.matrix_a, task.repeat, a) for a, _ in task.pairs}
                    | {(task.matrix_b, task.repeat, b) for _, b in task.pairs})


def _asks_for_cross(study: Study) -> bool:
    return study.cross_layers is not None


CROSS = Stage("cross", "pairs × layer pairs × repeats", plan_cross, cross_task, "curves", pairs_in,
              reads=("extract",), enabled=_asks_for_cross, table="cross_curves", prepare=record_models,
              factor_reads=cross_factor_reads, pooled_layers=pooled_layers)
