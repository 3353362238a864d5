"""The standard measures of a match task's pairs: their ``measures`` and ``neurons`` rows, and what is left to do.

A study listing measures beyond ``max_match`` and ``cka`` (``measures: [max_match, cka, cca, svcca, pwcca,
procrustes, neuron_corr]``) gets them in the same pair task as the ε-curves, from the same factors and the cross
products the match forms (:func:`raymatch.match.measure_batch.measure_pairs`): no second read, no second pass over
the samples. :class:`PairMeasurer` collects a task's pairs as the match goes and turns them into rows of the
``measures`` table (one per pair × measure, with what the measures saw) and of ``neurons`` (one per pair, its
per-neuron correlations). A pair that cannot be measured gets failed rows with the error, as its curve does.

A pair whose curve is stored but whose measures are not (a study that adds ``cca`` later) gets a task of its own,
``MatchTask(curve=False)`` (:func:`measure_task`): its factors are read and their cross products formed again, its
curve is not recomputed. :func:`missing_measures` finds those pairs when the match stage plans.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import __version__
from ..match import cross_product
from ..match.factor import permute_rows, row_permutation
from ..store import ActivationKey, Store
from .tasks import MatchTask, load_factors

if TYPE_CHECKING:
    from .context import PlanContext
    from .plan import ModelGroup

__all__ = ["PairMeasurer", "measure_task", "missing_measures"]

#: The identity columns of a ``measures`` row, as the planner reads them.
_MEASURE_IDENTITY = ("population", "layer", "repeat", "model_a", "model_b", "measure", "svcca_keep")
_PAIR_IDENTITY = ("population", "layer", "repeat", "model_a", "model_b")


class PairMeasurer:
    """A task's pairs, collected as its match forms their cross products, and their ``measures``/``neurons`` rows.

    Parameters
    ----------
    task : MatchTask
        Its ``measures`` say what to compute, its identity what every row records.
    """

    def __init__(self, task: MatchTask):
        self.task = task
        self.pairs: dict[tuple[str, str], tuple] = {}  # (a, b) → (fa, fb, cross)
        self.seconds = 0.0

    def add(self, a: str, b: str, fa, fb, cross) -> None:
        """Keep pair ``(a, b)``'s factors (``fb`` as matched: rows permuted for the permuted null) and cross product."""
        self.pairs[a, b] = (fa, fb, cross)

    def rows(self, errors: dict[tuple[str, str], str] | None = None) -> dict[str, list[dict]]:
        """The ``measures`` rows (and ``neurons`` rows, with ``neuron_corr``) of every pair of the task.

        Parameters
        ----------
        errors : dict, optional
            ``(a, b) → error`` of pairs that were not added (their curve failed): their rows are failed ones.
            A pair neither added nor in ``errors`` fails as "not measured".
        """
        from ..match.measure_batch import measure_pairs

        started = time.perf_counter()
        names = [pair for pair in self.task.pairs if pair in self.pairs]
        try:
            measured = dict(zip(names, measure_pairs([self.pairs[pair][:2] for pair in names],
                                                     [self.pairs[pair][2] for pair in names],
                                                     measures=self.task.measures, svcca_keep=self.task.svcca_keep),
                                strict=True))
        except Exception:  # one pair's failure must not fail the others: measure them one by one
            measured = {}
            for pair in names:
                try:
                    measured[pair] = measure_pairs([self.pairs[pair][:2]], [self.pairs[pair][2]],
                                                   measures=self.task.measures, svcca_keep=self.task.svcca_keep)[0]
                except Exception as error:
                    measured[pair] = f"{type(error).__name__}: {error}"
        self.seconds = time.perf_counter() - started
        share = self.seconds / max(len(names), 1)
        out: dict[str, list[dict]] = {"measures": []}
        if "neuron_corr" in self.task.measures:
            out["neurons"] = []
        for pair in self.task.pairs:
            result = measured.get(pair) or (errors or {}).get(pair) or "not measured: the pair's curve failed"
            self._pair_rows(out, pair, result, share)
        return out

    def _pair_rows(self, out: dict[str, list[dict]], pair: tuple[str, str], result, seconds: float) -> None:
        task = self.task
        base = {"study": task.study, "population": task.population, "layer": task.layer, "repeat": task.repeat,
                "model_a": pair[0], "model_b": pair[1], "probe_id": task.probe_id, "config_hash": task.config_hash,
                "code_version": __version__}
        if isinstance(result, str):  # the error that stopped the pair
            failed = {**base, "status": "failed", "error": result}
            out["measures"] += [{**failed, "measure": name, "svcca_keep": self._keep(name)} for name in task.measures]
            if "neurons" in out:
                out["neurons"].append(failed)
            return
        values, counts = result
        out["measures"] += [{**base, **counts, "measure": name, "svcca_keep": self._keep(name),
                             "value": values.values[name], "seconds": seconds, "status": "ok", "error": None}
                            for name in task.measures]
        if "neurons" in out:
            nc = values.neurons
            out["neurons"].append({**base, "n_samples": counts["n_samples"], "n_a": counts["n_a"],
                                   "n_b": counts["n_b"], "correlation_a": nc.best_a, "partner_a": nc.partner_a,
                                   "correlation_b": nc.best_b, "partner_b": nc.partner_b, "status": "ok",
                                   "error": None})

    def _keep(self, name: str) -> float | None:
        return self.task.svcca_keep if name == "svcca" else None

    def result(self, result: dict, errors: dict[tuple[str, str], str] | None = None) -> dict:
        """A match task's ``result`` with these rows added: ``rows`` becomes table → rows.

        ``failed_measures`` counts the failed ``measures`` rows (``failed`` stays the failed curves).

        ``errors`` default to those of the failed ``curves`` rows of ``result['rows']`` (a pair whose curve could
        not be computed, for lack of its factors, cannot be measured either).
        """
        curves = result["rows"] if isinstance(result["rows"], list) else result["rows"].get("curves", [])
        if errors is None:
            errors = {(row["model_a"], row["model_b"]): row["error"] for row in curves if row["status"] != "ok"}
        rows = self.rows(errors)
        failed = sum(row["status"] != "ok" for row in rows["measures"])
        return {**result, "rows": {"curves": curves, **rows} if curves else rows, "failed": result.get("failed", 0),
                "failed_measures": failed, "measure_seconds": self.seconds}


def measure_task(store: Store, task: MatchTask) -> dict:
    """The measures of pairs whose curves are stored (``task.curve`` false): factors read, cross products formed.

    The cross products are the match's (:func:`~raymatch.match.cross_products` on ``task.device`` for the batched
    kernel, one pair at a time otherwise or when the block raises).

    Returns
    -------
    dict
        ``rows`` (``measures`` and, with ``neuron_corr``, ``neurons``), ``failed`` (0: no curves),
        ``failed_measures`` (failed ``measures`` rows), ``factor_seconds`` and ``measure_seconds``.
    """
    started = time.perf_counter()
    keys = {model: ActivationKey(task.probe_id, model, task.layer, task.repeat) for model in task.models}
    factors, _, errors = load_factors(store, keys, center=task.center)
    factor_seconds = time.perf_counter() - started
    if task.permute_b_seed is not None:  # once per model b, as the match does
        factors_b = {b: permute_rows(factors[b], row_permutation(factors[b].n_samples, task.permute_b_seed))
                     for _, b in task.pairs if b in factors}
    else:
        factors_b = factors
    measurer, problems, ready = PairMeasurer(task), {}, []
    for a, b in task.pairs:
        if a in errors or b in errors:
            problems[a, b] = errors.get(a) or errors.get(b)
        else:
            ready.append((a, b))
    pairs = [(factors[a], factors_b[b]) for a, b in ready]
    crosses = None
    if task.kernel == "batched" and pairs:  # the match's stacked GEMMs, on the task's device
        from ..match import cross_products

        try:
            crosses = cross_products(pairs, device=task.device)
        except Exception:
            crosses = None
    for index, ((a, b), (fa, fb)) in enumerate(zip(ready, pairs, strict=True)):
        try:
            measurer.add(a, b, fa, fb, crosses[index] if crosses is not None else cross_product(fa, fb))
        except Exception as error:
            problems[a, b] = f"{type(error).__name__}: {error}"
    return {**measurer.result({"rows": []}, problems), "factor_seconds": factor_seconds}


def missing_measures(context: PlanContext, group: ModelGroup, layer: str, repeat: int,
                     pairs: list[tuple[str, str]]) -> dict[tuple[str, ...], list[tuple[str, str]]]:
    """The pairs of one unit whose rows of some of the study's table measures are not stored, by what they lack.

    A measure is stored for a pair when the ``measures`` table holds its row (``svcca`` of the study's current
    ``svcca_keep``), and ``neuron_corr`` also needs the pair's ``neurons`` row. Failed rows count as stored unless
    the plan retries failed pairs.

    Returns
    -------
    dict
        ``(measures lacked, in the study's order) → pairs``.
    """
    study = context.study
    wanted = study.table_measures
    if not wanted or not pairs:
        return {}
    retry = context.retry_failed
    stored = context.stored_rows("measures", _MEASURE_IDENTITY, ok_only=retry)
    neurons = context.stored_rows("neurons", _PAIR_IDENTITY, ok_only=retry) if "neuron_corr" in wanted else set()
    lacking: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for pair in pairs:
        unit = (group.name, layer, repeat, *pair)
        need = tuple(name for name in wanted
                     if (*unit, name, study.svcca_keep if name == "svcca" else None) not in stored
                     or (name == "neuron_corr" and unit not in neurons))
        if need:
            lacking.setdefault(need, []).append(pair)
    return lacking
