"""Cross-layer matches (``cross_layers``): layer i of model a against layer j of model b, into ``cross_curves``.

Planning: for every group (trained, untrained) the study's pairs of distinct models get every ordered pair of
distinct listed layers (i of a with j of b, and j of a with i of b), and with ``within_model`` each model gets its
pairs of layers i < j against itself. Without pooling, the same-layer pairs (i = j) are the ``curves`` rows
already and are not computed again (the report's heatmap reads its diagonal from ``curves``); with
``pool: mean`` they are computed on the pooled matrices, into ``cross_curves`` (the heatmap's diagonal then).

Two layers are compared over the same rows only (checked when the study is loaded,
:func:`raymatch.study.checks.check_cross_layers`): their stored matrices and repeats as they are, or, with
``pool: mean``, the per-example means of the conv layers (``<layer>+mean``, extracted beside them) and the
per-example layers as they are (one repeat). Task bodies return rows; they never write tables, and import no
torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .. import __version__
from ..store import ActivationKey, Store, layout
from .tasks import CURVE_KEYS, finish_row, load_factors, pair_fields

__all__ = ["CROSS_KEYS", "CrossTask", "cross_task", "layer_pairs", "matrix_layer", "run_cross_task"]

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

    @property
    def task_id(self) -> str:
        """Deterministic id: the same work always has the same id."""
        return layout.task_id(f"{self.layer_a}~{self.layer_b}", self.repeat,
                              [self.config_hash, self.probe_id, self.population, self.pool, self.pairs, self.center,
                               self.cka])


def run_cross_task(store: Store, task: CrossTask) -> list[dict]:
    """One ``cross_curves`` row per pair of ``task``; a pair that cannot be matched is a failed row.

    A failing store (:class:`~raymatch.store.StoreError`) fails the task instead, with no rows.
    """
    keys = {(model, matrix): ActivationKey(task.probe_id, model, matrix, task.repeat)
            for model in dict.fromkeys(model for pair in task.pairs for model in pair)
            for matrix in dict.fromkeys((task.matrix_a, task.matrix_b))}
    factors, tolerances, errors = load_factors(store, keys, center=task.center)

    def measure(a: str, b: str) -> dict:
        problem = errors.get((a, task.matrix_a)) or errors.get((b, task.matrix_b))
        if problem:
            raise RuntimeError(problem)
        exact_tol = max(tolerances[a, task.matrix_a], tolerances[b, task.matrix_b])  # the coarser dtype's
        return pair_fields(factors[a, task.matrix_a], factors[b, task.matrix_b], exact_tol, cka=task.cka)

    rows = []
    for a, b in task.pairs:
        row = dict.fromkeys(CROSS_KEYS)
        row.update({"study": task.study, "population": task.population, "layer_a": task.layer_a,
                    "layer_b": task.layer_b, "pool": task.pool, "repeat": task.repeat, "model_a": a, "model_b": b,
                    "probe_id": task.probe_id, "config_hash": task.config_hash, "code_version": __version__})
        rows.append(finish_row(row, lambda a=a, b=b: measure(a, b), time.perf_counter()))
    return rows


def cross_task(store: Store, task: CrossTask) -> dict:
    """One cross-layer task: its ``cross_curves`` rows (the driver commits them) and failed-row count."""
    rows = run_cross_task(store, task)
    return {"rows": rows, "failed": sum(row["status"] != "ok" for row in rows)}
