"""Task units and their bodies: factors, blocks of pairs (ε-curve and CKA) and simple-match pairs.

Models are split into blocks of ``block`` models; a task covers the pairs between two blocks
(or within one) and loads each model's factor once, so over a whole study every stored matrix is
read about ⌈M / block⌉ times for M models instead of M − 1 times. A task's pairs are computed together
by the batched kernel (:mod:`.curves`: stacked cross products, peels in lockstep, on the CPU or the task's GPU);
a pair's result is its ε-curve (every neuron's critical ε) and its linear CKA, both from the one cross
product of the two factors' bases. Task bodies return rows; they never write tables (the driver
commits rows in batches).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..match import exact_tolerance
from ..match.factor import permute_rows, row_permutation
from ..store import ActivationKey, Store, StoreError, layout, read_manifest
from ..store.factors import (
    cached_factor,
    factor_from_inputs,
    factor_prefix,
    read_factor_inputs,
    store_factor,
    write_factor,
)
from .curves import block_curves, chance_level, curve_fields, pair_fields
from .pairlist import PairList

__all__ = ["CURVE_KEYS", "PERMUTATION_SEED", "FactorTask", "MatchTask", "SimpleTask", "activation_tolerance",
           "block_tasks", "chance_level", "factor_and_store", "fail_row", "finish_row", "load_factors",
           "match_task", "measure_rows", "pair_fields", "run_curve_task", "run_simple_task", "simple_task"]

#: The keys of every ``curves`` row, in order (failed rows hold None for what was not measured).
CURVE_KEYS = ("study", "population", "layer", "repeat", "model_a", "model_b", "probe_id", "config_hash",
              "code_version", "n_samples", "n_a", "n_b", "dead_a", "dead_b", "critical_a", "critical_b",
              "exact_tol", "max_epsilon", "chance", "cka", "seconds", "status", "error")

#: Seed of the row permutation of the permuted-row null (``null_baseline: [permuted]``): fixed, so that its rows
#: are reproducible and need no place in the config hash.
PERMUTATION_SEED = 0


@dataclass(frozen=True)
class MatchTask:
    """The pairs between two blocks of models for one layer and sampling repeat.

    Attributes
    ----------
    study, config_hash : str
        Provenance recorded in every row.
    probe_id, layer : str
    repeat : int
    pairs : sequence of (model_a, model_b)
        A tuple of pairs, or (as :func:`block_tasks` makes them) a :class:`~raymatch.engine.pairlist.PairList`.
    center : bool
    population : str
        ``"trained"``, or ``"untrained"`` for the null baseline's pairs.
    cka : bool
        Compute each pair's linear CKA too (from the same cross product as its ε-curve).
    permute_b_seed : int, optional
        The permuted-row null (population ``"permuted"``): model b's rows are permuted by
        :func:`~raymatch.match.factor.row_permutation` of this seed before matching (its stored factor's basis rows
        permuted: the same spectra, no sample correspondence with model a).
    kernel : {'batched', 'one_pair'}
        How the curves are computed (``resources.match_kernel``; the same curves either way).
    device : str, optional
        Where the batched kernel computes: ``'cuda'`` once a GPU actor has taken the task, else the CPU.

    measures : tuple of str
        Standard measures of the ``measures`` table to compute too, from the same factors and cross products
        (:mod:`raymatch.engine.measuring`); none by default.
    svcca_keep : float
        SVCCA's share of variance.
    curve : bool
        Compute each pair's ε-curve (``curves`` row). False for pairs whose curves are stored and whose measures
        are not: only ``measures`` are computed.

    ``kernel`` and ``device`` change no result, so they are not part of the task id.
    """

    study: str
    config_hash: str
    probe_id: str
    layer: str
    repeat: int
    pairs: Sequence[tuple[str, str]]
    center: bool = False
    population: str = "trained"
    cka: bool = True
    permute_b_seed: int | None = None
    kernel: str = "batched"
    device: str | None = None
    measures: tuple[str, ...] = ()
    svcca_keep: float = 0.99
    curve: bool = True

    @property
    def task_id(self) -> str:
        """Deterministic id: the same work always has the same id."""
        parts = [self.config_hash, self.probe_id, [list(pair) for pair in self.pairs], self.center, self.population,
                 self.cka]
        if self.permute_b_seed is not None:  # only then: every other task keeps its id
            parts.append(self.permute_b_seed)
        if self.measures or not self.curve:  # likewise
            parts.append(["measures", list(self.measures), self.svcca_keep, self.curve])
        return layout.task_id(self.layer, self.repeat, parts)

    @property
    def models(self) -> list[str]:
        """The models of the pairs, in order of first appearance."""
        if isinstance(self.pairs, PairList):
            return self.pairs.used_models()
        seen: dict[str, None] = {}
        for a, b in self.pairs:
            seen.setdefault(a)
            seen.setdefault(b)
        return list(seen)


def block_tasks(study: str, config_hash: str, probe_id: str, layer: str, repeat: int,
                pairs: Sequence[tuple[str, str]], *, block: int, center: bool = False, population: str = "trained",
                positions: dict[str, int] | None = None, cka: bool = True, permute_b_seed: int | None = None,
                kernel: str = "batched", measures: Sequence[str] = (), svcca_keep: float = 0.99,
                curve: bool = True) -> list[MatchTask]:
    """Group ``pairs`` into tasks by the blocks of their models.

    A model's block is its position (``positions``; default: order of first appearance in ``pairs``) divided
    by ``block``. Passing the positions of the whole population keeps a block's task the same whichever of its
    pairs are still to do, so runs that plan from the same stored state plan the same tasks. Within a task the
    pairs keep their order in ``pairs``; tasks come in order of their blocks. Each task holds its pairs as a
    :class:`~raymatch.engine.pairlist.PairList` of its own models (8 bytes a pair). ``measures``, ``svcca_keep`` and
    ``curve`` are those of every task (:class:`MatchTask`).
    """
    if block < 1:
        raise ValueError(f"block must be a positive integer; got {block}")
    pairs = PairList.of(pairs)
    if not len(pairs):
        return []
    order: dict[str, int] = dict(positions or {})
    for model in pairs.used_models():
        order.setdefault(model, len(order))
    block_of = np.array([order.get(model, -1) for model in pairs.models], dtype=np.int64) // block
    first, second = block_of[pairs.a], block_of[pairs.b]
    keys = np.minimum(first, second) * (int(block_of.max()) + 1) + np.maximum(first, second)
    del first, second
    ranked = np.argsort(keys, kind="stable")  # by block pair; the given order within each
    bounds = np.flatnonzero(np.diff(keys[ranked])) + 1
    del keys
    return [MatchTask(study, config_hash, probe_id, layer, repeat, pairs[chosen].compact(), center, population, cka,
                      permute_b_seed, kernel, measures=tuple(measures), svcca_keep=svcca_keep, curve=curve)
            for chosen in np.split(ranked, bounds)]


def activation_tolerance(store: Store, key: ActivationKey) -> float:
    """The exact tolerance of a stored activation matrix: :func:`~raymatch.match.exact_tolerance` of its dtype.

    The dtype is the one its manifest records (float32 for everything the extractor stores: 1.22e-4).
    """
    return exact_tolerance(read_manifest(store, key).get("dtype", "float32"))


#: Bytes of activations a pair task reads ahead of the matrix it is factoring, in at most
#: :data:`READ_AHEAD_MATRICES` matrices: the reads (S3 GETs, decoding) overlap the factoring, and the memory they
#: hold beside the float64 bases stays bounded. Large matrices are read one ahead, small ones (whose reads are
#: mostly waiting for the store) several ahead; measured in docs/benchmarks.md.
READ_AHEAD_BYTES = 32 * 2**20
READ_AHEAD_MATRICES = 4


def load_factors(store: Store, keys: dict, *, center: bool,
                 read_ahead_bytes: int = READ_AHEAD_BYTES) -> tuple[dict, dict, dict]:
    """The factor and exact tolerance of each stored matrix, or the error that stopped it (shared by pair tasks).

    Each matrix is read once (activations, manifest, stored compact factor) by a pool of threads that stays ahead
    of the factoring: one matrix ahead, or as many as ``read_ahead_bytes`` of matrices the size of the first hold
    (at most :data:`READ_AHEAD_MATRICES`). A compact factor computed here is stored by the pool too, and the task
    waits for those writes before it returns.

    Parameters
    ----------
    store : Store
    keys : dict
        Any name → :class:`~raymatch.store.ActivationKey`.
    center : bool
    read_ahead_bytes : int

    Returns
    -------
    factors, tolerances, errors : dict
        By name: the :class:`~raymatch.match.Factor`, the exact tolerance of the stored dtype
        (:func:`~raymatch.match.exact_tolerance`), or the error message of an application error (recorded in
        the pairs' rows, not retried).

    Raises
    ------
    StoreError
        The store failed, not the matrix: the task fails with no rows, so a rerun computes its pairs.
    """
    factors, tolerances, errors = {}, {}, {}
    names = list(keys)
    pool = ThreadPoolExecutor(max_workers=READ_AHEAD_MATRICES, thread_name_prefix="raymatch-read")
    reads, writes, ahead = {}, [], 1

    def read_ahead(current: int) -> None:  # reads in flight up to `ahead` matrices past the current one
        for index in range(len(reads) + current, min(len(names), current + 1 + ahead)):
            reads[names[index]] = pool.submit(read_factor_inputs, store, keys[names[index]], center=center)

    try:
        for index, name in enumerate(names):
            read_ahead(index)
            key, future = keys[name], reads.pop(name)
            try:
                activations, dtype, compact = future.result()
                if activations.nbytes and not factors and not errors:  # the first matrix sets the distance
                    ahead = max(1, min(READ_AHEAD_MATRICES, read_ahead_bytes // activations.nbytes))
                factors[name], new = factor_from_inputs(key, activations, compact, center=center)
                tolerances[name] = exact_tolerance(dtype)
            except StoreError:
                raise
            except Exception as error:
                errors[name] = f"{type(error).__name__}: {error}"
                continue
            if new is not None:
                writes.append(pool.submit(write_factor, store, factor_prefix(key, center), new))
        for future in writes:
            future.result()  # a factor that could not be stored is a store failure: the task fails
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return factors, tolerances, errors


def finish_row(row: dict, measure, started: float) -> dict:
    """``row`` with ``measure()``'s fields and status ``ok``, or status ``failed`` and the error it raised."""
    try:
        fields = measure()
    except Exception as error:
        return fail_row(row, error, time.perf_counter() - started)
    row.update(fields, seconds=time.perf_counter() - started, status="ok", error=None)
    return row


def fail_row(row: dict, error: BaseException, seconds: float = 0.0) -> dict:
    """``row`` marked ``failed`` with ``error``'s message (a RuntimeError's message alone: a recorded cause)."""
    message = str(error) if isinstance(error, RuntimeError) else f"{type(error).__name__}: {error}"
    row.update({"status": "failed", "error": message, "seconds": seconds})
    return row


def measure_rows(rows: list[dict], pairs: list, tolerances: list[float], *, cka: bool, kernel: str = "batched",
                 device: str | None = None, clock: dict | None = None, measurer=None) -> None:
    """Fill each row of ``rows`` with its pair's ε-curve, counts and CKA, computed as one block; or mark it failed.

    ``pairs`` are the rows' factor pairs and ``tolerances`` their exact tolerances, in the order of ``rows``. Each
    row's ``seconds`` is its share of the block's time. ``clock`` (optional) accumulates ``match_seconds`` and
    ``cka_seconds``. ``measurer`` (optional, a :class:`~raymatch.engine.measuring.PairMeasurer`) receives each
    measured pair's factors and cross product, for the study's standard measures.
    """
    clock = clock if clock is not None else {"match_seconds": 0.0, "cka_seconds": 0.0}
    started = time.perf_counter()
    computed = block_curves(pairs, tolerances, kernel=kernel, device=device, clock=clock)  # (cross, curve) or error
    crosses = [None if isinstance(result, Exception) else result[0] for result in computed]  # aligned with pairs
    cka_started = time.perf_counter()
    ckas = [_cka(fa, fb, cross) if cka and cross is not None else None
            for (fa, fb), cross in zip(pairs, crosses, strict=True)]
    clock["cka_seconds"] += time.perf_counter() - cka_started
    if measurer is not None:  # the standard measures, from the same factors and cross products (computed later)
        for row, (fa, fb), cross in zip(rows, pairs, crosses, strict=True):
            if cross is not None:
                measurer.add(row["model_a"], row["model_b"], fa, fb, cross)
    share = (time.perf_counter() - started) / max(1, len(pairs))
    for row, result, tol, value in zip(rows, computed, tolerances, ckas, strict=True):
        if isinstance(result, Exception):
            fail_row(row, result, share)
        elif isinstance(value, Exception):
            fail_row(row, value, share)
        else:
            row.update(curve_fields(result[1], tol), cka=value, seconds=share, status="ok", error=None)


def _cka(fa, fb, cross):
    """Linear CKA of a pair from its cross product, or the exception it raised (the pair's failed row)."""
    from ..match import linear_cka_factors

    try:
        return linear_cka_factors(fa, fb, cross)
    except Exception as error:
        return error


def run_curve_task(store: Store, task: MatchTask, timings: dict | None = None, measurer=None) -> list[dict]:
    """One ``curves`` row per pair of ``task``: the pair's ε-curve, counts and CKA; a failing pair is a failed row.

    The task's pairs are computed together (``task.kernel``, on ``task.device``; :func:`measure_rows`). Each curve
    is computed, and its row's ``exact_tol`` recorded, with the exact tolerance of the stored activations' dtype
    (:func:`activation_tolerance`; the coarser of the pair's two); failed rows have none.

    A store that fails (:class:`~raymatch.store.StoreError`: unreachable, full) fails the task instead: no rows, so
    that a rerun computes its pairs rather than keeping a transient failure as their result.

    Parameters
    ----------
    store : Store
    task : MatchTask
    timings : dict, optional
        Receives ``factor_seconds`` (reading and rebuilding the factors), ``match_seconds`` (cross products and
        ε-curves) and ``cka_seconds`` (CKA from the shared cross products), summed over the task.
    measurer : raymatch.engine.measuring.PairMeasurer, optional
        Receives each pair's factors and cross product, for the standard measures of ``task.measures``.
    """
    clock = {"factor_seconds": 0.0, "match_seconds": 0.0, "cka_seconds": 0.0}
    started = time.perf_counter()
    keys = {model: ActivationKey(task.probe_id, model, task.layer, task.repeat) for model in task.models}
    factors, tolerances, errors = load_factors(store, keys, center=task.center)
    if task.permute_b_seed is not None:  # once per model b: the block's GEMMs see one object per model
        factors_b = {b: permute_rows(factors[b], row_permutation(factors[b].n_samples, task.permute_b_seed))
                     for _, b in task.pairs if b in factors}
    else:
        factors_b = factors
    clock["factor_seconds"] = time.perf_counter() - started
    rows, measured = [], []
    for a, b in task.pairs:
        row = dict.fromkeys(CURVE_KEYS)
        row.update({"study": task.study, "population": task.population, "layer": task.layer,
                    "repeat": task.repeat, "model_a": a, "model_b": b, "probe_id": task.probe_id,
                    "config_hash": task.config_hash, "code_version": __version__})
        rows.append(row)
        problem = errors.get(a) or errors.get(b)
        if problem:
            fail_row(row, RuntimeError(problem))
        else:
            measured.append((row, (factors[a], factors_b[b]), max(tolerances[a], tolerances[b])))  # coarser dtype
    measure_rows([row for row, _, _ in measured], [pair for _, pair, _ in measured], [tol for _, _, tol in measured],
                 cka=task.cka, kernel=task.kernel, device=task.device, clock=clock, measurer=measurer)
    if timings is not None:
        timings.update(clock)
    return rows


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
        """Deterministic id: the same work always has the same id."""
        return layout.task_id(self.layer, self.repeat, [self.config_hash, self.probe_id, self.pair, self.eps,
                                                        self.center, self.max_neurons, self.population])


def run_simple_task(store: Store, task: SimpleTask) -> list[dict]:
    """``simple_matches`` rows of one pair; none when the maximum match exceeds ``max_neurons`` neurons."""
    from ..match import max_match, simple_matches

    a, b = task.pair
    keys = [ActivationKey(task.probe_id, model, task.layer, task.repeat) for model in task.pair]
    fa, fb = (cached_factor(store, key, center=task.center) for key in keys)
    exact_tol = max(activation_tolerance(store, key) for key in keys)
    largest = max_match(fa, fb, task.eps, exact_tol=exact_tol)
    if largest.size_a + largest.size_b > task.max_neurons:
        return []
    return [{"study": task.study, "population": task.population, "layer": task.layer, "model_a": a, "model_b": b,
             "eps": float(task.eps), "repeat": task.repeat, "probe_id": task.probe_id, "match_id": i,
             "neurons_a": m.a.astype(np.int32).tolist(), "neurons_b": m.b.astype(np.int32).tolist(),
             "size_a": m.size_a, "size_b": m.size_b, "neuron": f"{m.neuron[0]}:{m.neuron[1]}",
             "search_order": str(m.order), "code_version": __version__, "config_hash": task.config_hash}
            for i, m in enumerate(simple_matches(fa, fb, task.eps, exact_tol=exact_tol))]


@dataclass(frozen=True)
class FactorTask:
    """The factor of one stored activation matrix (model, layer, repeat), computed once for every pair."""

    key: ActivationKey
    center: bool = False


def factor_and_store(store: Store, task: FactorTask) -> dict:
    """One factor task: factor the stored matrix and store its compact factor (a no-op if it is already stored)."""
    return {"rank": store_factor(store, task.key, center=task.center)["rank"]}


# The task bodies live here, not beside the planner, so that a fresh Ray worker imports no torch:
# its first task starts ~0.3 s after the worker does instead of ~1.2 s.


def match_task(store: Store, task: MatchTask) -> dict:
    """One pair task: its ``curves`` rows (the driver commits them), failed-row count and in-task times.

    Returns
    -------
    dict
        ``rows`` (see :func:`run_curve_task`), ``failed`` (rows with status ``failed``), and ``factor_seconds``,
        ``match_seconds``, ``cka_seconds``. With ``task.measures``, ``rows`` maps ``curves``, ``measures`` and
        ``neurons`` to their rows, and ``measure_seconds`` is added (:meth:`~.measuring.PairMeasurer.result`).
    """
    from .measuring import PairMeasurer, measure_task

    if not task.curve:  # curves stored: only the measures the store lacks
        return measure_task(store, task)
    timings: dict = {}
    measurer = PairMeasurer(task) if task.measures else None
    rows = run_curve_task(store, task, timings, measurer)
    result = {"rows": rows, "failed": sum(row["status"] != "ok" for row in rows), **timings}
    return result if measurer is None else measurer.result(result)


def simple_task(store: Store, task: SimpleTask) -> dict:
    """One simple-match task: its ``simple_matches`` rows (the driver commits them)."""
    return {"rows": run_simple_task(store, task)}
