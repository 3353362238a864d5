"""Task units and their bodies: factors, blocks of pairs (match, CKA) and simple-match pairs.

Models are split into blocks of ``block`` models; a task covers the pairs between two blocks
(or within one) and loads each model's factor once, so over a whole study every stored matrix is
read about ⌈M / block⌉ times for M models instead of M − 1 times. The whole ε grid of a pair comes
from one ``match_curve`` (every critical ε in one peel).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from .. import __version__
from ..match import match_curve
from ..results import write_rows
from ..store import ActivationKey, Store, StoreError, cached_factor, layout


@dataclass(frozen=True)
class MatchTask:
    """The pairs between two blocks of models for one layer and sampling repeat.

    Attributes
    ----------
    study, config_hash : str
        Provenance recorded in every row.
    probe_id, layer : str
    repeat : int
    pairs : tuple of (model_a, model_b)
    eps : tuple of float
    center : bool
    population : str
        ``"trained"``, or ``"untrained"`` for the null baseline's pairs.
    """

    study: str
    config_hash: str
    probe_id: str
    layer: str
    repeat: int
    pairs: tuple[tuple[str, str], ...]
    eps: tuple[float, ...]
    center: bool = False
    population: str = "trained"

    @property
    def task_id(self) -> str:
        """Deterministic id: the same work always has the same id (and the same result file)."""
        return layout.task_id(self.layer, self.repeat, [self.config_hash, self.probe_id, self.pairs, self.eps,
                                                        self.center, self.population])

    @property
    def models(self) -> list[str]:
        """The models of the pairs, in order of first appearance."""
        seen: dict[str, None] = {}
        for a, b in self.pairs:
            seen.setdefault(a)
            seen.setdefault(b)
        return list(seen)


def block_tasks(study: str, config_hash: str, probe_id: str, layer: str, repeat: int,
                pairs: list[tuple[str, str]], eps: tuple[float, ...], *, block: int,
                center: bool = False, population: str = "trained",
                positions: dict[str, int] | None = None) -> list[MatchTask]:
    """Group ``pairs`` into tasks by the blocks of their models.

    A model's block is its position (``positions``; default: order of first appearance in ``pairs``) divided
    by ``block``. Passing the positions of the whole population keeps a block's task the same whichever of its
    pairs are still to do, so runs that plan from the same stored state plan the same tasks.
    """
    if block < 1:
        raise ValueError(f"block must be a positive integer; got {block}")
    order: dict[str, int] = dict(positions or {})
    for a, b in pairs:
        order.setdefault(a, len(order))
        order.setdefault(b, len(order))
    grouped: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for a, b in pairs:
        i, j = sorted((order[a] // block, order[b] // block))
        grouped.setdefault((i, j), []).append((a, b))
    return [MatchTask(study, config_hash, probe_id, layer, repeat, tuple(group), tuple(eps), center, population)
            for _, group in sorted(grouped.items())]


def chance_level(n_neurons: int, n_samples: int) -> float:
    """√(1 − k/d): the ratio of a random vector against a random k-dimensional subspace of R^d."""
    return math.sqrt(1.0 - n_neurons / n_samples) if n_neurons < n_samples else 0.0


def run_match_task(store: Store, task: MatchTask) -> list[dict]:
    """Every pair × ε of ``task`` as ``matches`` rows; a failing pair becomes a failed row with its error.

    A store that fails (:class:`~raymatch.store.StoreError`: unreachable, full) fails the task instead: no rows, so
    that a rerun computes its pairs rather than keeping a transient failure as their result.
    """
    factors, errors = {}, {}
    for model in task.models:
        try:
            factors[model] = cached_factor(store, ActivationKey(task.probe_id, model, task.layer, task.repeat),
                                           center=task.center)
        except StoreError:  # the store failed, not the pair: no row (a rerun computes the pair), the task fails
            raise
        except Exception as error:  # an application error: recorded in the rows, not retried
            errors[model] = f"{type(error).__name__}: {error}"
    rows = []
    for a, b in task.pairs:
        started = time.perf_counter()
        base = {"study": task.study, "population": task.population, "layer": task.layer, "model_a": a,
                "model_b": b, "repeat": task.repeat, "code_version": __version__, "config_hash": task.config_hash}
        try:
            if a in errors or b in errors:
                raise RuntimeError(errors.get(a) or errors.get(b))
            curve = match_curve(factors[a], factors[b])
        except Exception as error:
            message = str(error) if isinstance(error, RuntimeError) else f"{type(error).__name__}: {error}"
            rows += [{**base, "eps": float(eps), "status": "failed", "error": message,
                      "seconds": time.perf_counter() - started} for eps in task.eps]
            continue
        seconds = (time.perf_counter() - started) / len(task.eps)
        chance = chance_level(max(curve.n_a, curve.n_b), curve.n_samples)
        for eps in task.eps:
            match = curve.at(eps)
            rows.append({
                **base, "eps": float(eps), "n_samples": curve.n_samples, "n_a": curve.n_a, "n_b": curve.n_b,
                "dead_a": int(curve.dead_a.size), "dead_b": int(curve.dead_b.size),
                "size_a": match.size_a, "size_b": match.size_b, "similarity": match.similarity,
                "max_epsilon": curve.max_epsilon, "chance": chance,
                "neurons_a": match.a.astype(np.int32).tolist(), "neurons_b": match.b.astype(np.int32).tolist(),
                "seconds": seconds, "status": "ok", "error": None,
            })
    return rows


def run_cka_task(store: Store, task: MatchTask) -> list[dict]:
    """Linear CKA of every pair of ``task`` (``cka`` rows); each activation matrix is read once."""
    from ..match import linear_cka
    from ..store import read_activations

    matrices = {model: read_activations(store, ActivationKey(task.probe_id, model, task.layer, task.repeat))
                for model in task.models}
    return [{"study": task.study, "population": task.population, "layer": task.layer, "model_a": a, "model_b": b,
             "repeat": task.repeat, "cka": linear_cka(matrices[a], matrices[b]), "code_version": __version__,
             "config_hash": task.config_hash} for a, b in task.pairs]


@dataclass(frozen=True)
class SimpleTask:
    """The simple matches of one pair, layer, repeat and ε (a v-minimal search for every v)."""

    study: str
    config_hash: str
    probe_id: str
    layer: str
    repeat: int
    pair: tuple[str, str]
    eps: float
    center: bool = False
    max_neurons: int = 256
    population: str = "trained"

    @property
    def task_id(self) -> str:
        """Deterministic id: the same work always has the same id (and the same result file)."""
        return layout.task_id(self.layer, self.repeat, [self.config_hash, self.probe_id, self.pair, self.eps,
                                                        self.center, self.max_neurons, self.population])


def run_simple_task(store: Store, task: SimpleTask) -> list[dict]:
    """``simple_matches`` rows of one pair; none when the maximum match exceeds ``max_neurons`` neurons."""
    from ..match import max_match, simple_matches

    a, b = task.pair
    fa, fb = (cached_factor(store, ActivationKey(task.probe_id, model, task.layer, task.repeat), center=task.center)
              for model in task.pair)
    largest = max_match(fa, fb, task.eps)
    if largest.size_a + largest.size_b > task.max_neurons:
        return []
    return [{"study": task.study, "population": task.population, "layer": task.layer, "model_a": a, "model_b": b,
             "eps": float(task.eps),
             "repeat": task.repeat, "match_id": i, "neurons_a": m.a.astype(np.int32).tolist(),
             "neurons_b": m.b.astype(np.int32).tolist(), "size_a": m.size_a, "size_b": m.size_b,
             "neuron": f"{m.neuron[0]}:{m.neuron[1]}", "search_order": str(m.order),
             "code_version": __version__, "config_hash": task.config_hash}
            for i, m in enumerate(simple_matches(fa, fb, task.eps))]


@dataclass(frozen=True)
class FactorTask:
    """The factor of one stored activation matrix (model, layer, repeat), computed once for every pair."""

    key: ActivationKey
    center: bool = False


def factor_and_store(store: Store, task: FactorTask) -> dict:
    """One factor task: factor the stored matrix and store the factor (a no-op if it is already stored)."""
    value = cached_factor(store, task.key, center=task.center)
    return {"rank": value.rank}


# The task bodies live here, not beside the planner, so that a fresh Ray worker imports no torch:
# its first task starts ~0.3 s after the worker does instead of ~1.2 s.


def match_and_write(store: Store, task: MatchTask) -> dict:
    """One pair task: compute its rows and write them to the task's own result file."""
    return _write(store, "matches", task.task_id, run_match_task(store, task))


def cka_and_write(store: Store, task: MatchTask) -> dict:
    """One CKA task: compute its rows and write them to the task's own result file."""
    return _write(store, "cka", task.task_id, run_cka_task(store, task))


def simple_and_write(store: Store, task: SimpleTask) -> dict:
    """One simple-match task: compute its rows and write them to the task's own result file."""
    return _write(store, "simple_matches", task.task_id, run_simple_task(store, task))


def _write(store: Store, table: str, task_id: str, rows: list[dict]) -> dict:
    created_at = datetime.now(timezone.utc)
    write_rows(store, table, task_id, [{**row, "created_at": created_at} for row in rows])
    return {"rows": len(rows), "failed": sum(row.get("status", "ok") != "ok" for row in rows)}
