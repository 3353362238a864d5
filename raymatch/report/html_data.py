"""The numbers of the interactive report (``index.html``), aggregated to what the page shows.

Everything here is exact on the slider's ε grid ``k / SLIDER_STEPS`` (k = 0 … SLIDER_STEPS): a neuron is matched
at ε iff its stored critical ε is at most ``max(ε, exact_tol)`` (``inf``: dead, never), and a pair's similarity at ε
is its matched neurons over ``n_a + n_b`` (its repeats summed, i.e. averaged). The page embeds, per (population,
layer), each pair's matched-neuron counts at every slider ε (small integers, delta-coded and deflated, see
:func:`encode_counts`), never the per-neuron rows (unless asked for: :func:`encode_neurons`).
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The slider's ε are ``k / SLIDER_STEPS`` for k = 0 … SLIDER_STEPS (the paper's grid values lie on it).
SLIDER_STEPS = 200


def slider_grid(steps: int = SLIDER_STEPS) -> np.ndarray:
    """The slider's ε: ``k / steps`` for k = 0 … steps, shape ``(steps + 1,)``, float64 (0.25 is exactly 0.25)."""
    return np.arange(steps + 1, dtype=np.float64) / steps


@dataclass
class PairCounts:
    """One (population, layer): each pair's matched-neuron count at every slider ε.

    Attributes
    ----------
    population, layer : str
    models : list of str
        The models of the pairs, in order of first appearance.
    first, second : numpy.ndarray, shape (n_pairs,), int64
        Index in :attr:`models` of each pair's model a and model b.
    counts : numpy.ndarray, shape (n_pairs, n_steps), int64
        Matched neurons of both sides at each slider ε, summed over the pair's repeats (non-decreasing in ε).
    totals : numpy.ndarray, shape (n_pairs,), int64
        ``n_a + n_b`` summed over the pair's repeats: ``counts / totals`` is the similarity, repeats averaged.
    chance : float
        Mean chance ratio √(1 − k/d) of the rows.
    """

    population: str
    layer: str
    models: list[str]
    first: np.ndarray
    second: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    chance: float

    def similarity(self) -> np.ndarray:
        """Each pair's similarity at each slider ε, shape ``(n_pairs, n_steps)``, float64."""
        return self.counts / self.totals[:, None]

    def pair_names(self) -> tuple[list[str], list[str]]:
        """Model a and model b of each pair, by name."""
        return [self.models[i] for i in self.first], [self.models[i] for i in self.second]


def joining_steps(critical: np.ndarray, exact_tol: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The first slider step at which each neuron is matched: ``len(grid)`` for never (dead, or above the grid).

    A neuron with critical ε ``c`` is matched at ``grid[k]`` iff ``c <= max(grid[k], exact_tol)``: at every step
    when ``c <= exact_tol``, else from the first ``k`` with ``grid[k] >= c`` (exact comparisons, no rounding).

    Parameters
    ----------
    critical : numpy.ndarray, shape (n,)
    exact_tol : numpy.ndarray, shape (n,)
        Each neuron's row's tolerance.
    grid : numpy.ndarray, shape (n_steps,), ascending

    Returns
    -------
    numpy.ndarray, shape (n,), int64
    """
    steps = np.searchsorted(grid, critical, side="left")
    return np.where(critical <= exact_tol, 0, steps).astype(np.int64)


def _flat(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column of arrays as one float64 array and each cell's length."""
    cells = [np.asarray(cell, dtype=np.float64) for cell in column]
    lengths = np.array([cell.size for cell in cells], dtype=np.int64)
    return (np.concatenate(cells) if cells else np.zeros(0)), lengths


def pair_counts(curves: pd.DataFrame, grid: np.ndarray) -> list[PairCounts]:
    """Every (population, layer) of ``curves`` as :class:`PairCounts` on ``grid`` (trajectory rows left out).

    Each neuron's first matched step (:func:`joining_steps`) is counted into its pair's row, and the cumulative
    sum over steps gives the counts: exact, and one vectorised pass over all the neurons of a layer.

    Parameters
    ----------
    curves : pandas.DataFrame
        ``"ok"`` ``curves`` rows: ``population``, ``layer``, ``model_a``, ``model_b``, ``critical_a``, ``critical_b``,
        ``exact_tol``, ``n_a``, ``n_b``, ``chance``.
    grid : numpy.ndarray, shape (n_steps,)

    Returns
    -------
    list of PairCounts
        In order of first appearance of (population, layer).
    """
    if "status" in curves.columns:
        curves = curves.loc[curves["status"] == "ok"]
    curves = curves.loc[curves["population"] != "trajectory"]
    out = []
    for (population, layer), rows in curves.groupby(["population", "layer"], sort=False):
        keys = pd.MultiIndex.from_arrays([rows["model_a"], rows["model_b"]])
        pair_of_row, pairs = pd.factorize(keys)
        n_pairs, n_steps = len(pairs), grid.size
        joined = np.zeros(n_pairs * (n_steps + 1), dtype=np.int64)
        for side in ("critical_a", "critical_b"):
            values, lengths = _flat(rows[side])
            owner = np.repeat(pair_of_row, lengths)
            tolerance = np.repeat(rows["exact_tol"].to_numpy(dtype=np.float64), lengths)
            joined += np.bincount(owner * (n_steps + 1) + joining_steps(values, tolerance, grid),
                                  minlength=joined.size)
        counts = np.cumsum(joined.reshape(n_pairs, n_steps + 1)[:, :n_steps], axis=1)
        totals = np.bincount(pair_of_row, weights=(rows["n_a"] + rows["n_b"]).to_numpy(), minlength=n_pairs)
        model_a, model_b = pairs.get_level_values(0), pairs.get_level_values(1)
        models = list(dict.fromkeys(name for pair in zip(model_a, model_b, strict=True) for name in pair))
        position = {name: i for i, name in enumerate(models)}
        out.append(PairCounts(population, layer, models,
                              np.array([position[a] for a in model_a], dtype=np.int64),
                              np.array([position[b] for b in model_b], dtype=np.int64),
                              counts, totals.astype(np.int64), float(rows["chance"].mean())))
    return out


def similarity_matrix(counts: PairCounts, step: int) -> np.ndarray:
    """The symmetric model × model similarity at slider step ``step``: NaN on the diagonal and where no pair."""
    n = len(counts.models)
    matrix = np.full((n, n), np.nan)
    values = counts.counts[:, step] / counts.totals
    matrix[counts.first, counts.second] = values
    matrix[counts.second, counts.first] = values
    return matrix


def cluster_orders(counts: PairCounts) -> np.ndarray:
    """At each slider ε, the models in the leaf order of an average-linkage clustering of ``1 − similarity``.

    A pair the study did not compute counts as distance 1 (unlike); the diagonal is 0.

    Returns
    -------
    numpy.ndarray, shape (n_steps, n_models), int64
        Row k: indices into :attr:`PairCounts.models`.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    n, n_steps = len(counts.models), counts.counts.shape[1]
    orders = np.tile(np.arange(n, dtype=np.int64), (n_steps, 1))
    if n < 3:
        return orders
    previous = None
    for step in range(n_steps):
        column = counts.counts[:, step]
        if previous is not None and np.array_equal(column, counts.counts[:, previous]):
            orders[step] = orders[previous]  # the same matrix: the same order
            continue
        distance = 1.0 - np.nan_to_num(similarity_matrix(counts, step), nan=0.0)
        np.fill_diagonal(distance, 0.0)
        orders[step] = leaves_list(linkage(squareform(distance, checks=False), method="average"))
        previous = step
    return orders


def pack_integers(values: np.ndarray) -> dict:
    """Non-negative integers as the smallest unsigned little-endian type, deflated (zlib, level 6) and base64'd."""
    values = np.asarray(values)
    dtype = "uint8" if values.size == 0 or values.max() <= 0xFF else "uint16" if values.max() <= 0xFFFF else "uint32"
    raw = values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    return {"dtype": dtype, "shape": list(values.shape), "data": base64.b64encode(zlib.compress(raw, 6)).decode()}


def encode_counts(counts: PairCounts) -> dict:
    """The page's form of :attr:`PairCounts.counts`: every pair's count at ε = 0, then their increases at each step.

    Monotone counts delta-code to mostly zeros, which deflate to about a byte per pair and step (step-major
    deflates ~12 % smaller than pair-major); the page sums them back (exact integers). Returns
    ``{"dtype", "shape": [n_steps, n_pairs], "data"}`` (row-major, base64 of zlib).
    """
    return pack_integers(np.ascontiguousarray(np.diff(counts.counts, axis=1, prepend=0).T))


def encode_orders(orders: np.ndarray) -> dict:
    """:func:`cluster_orders` for the page (same packing as :func:`encode_counts`, not delta-coded)."""
    return pack_integers(orders)


def encode_neurons(curves: pd.DataFrame, counts: PairCounts) -> dict:
    """Per-neuron critical ε of each pair of ``counts`` (repeat 0), float32 deflated: only with ``--html-neurons``.

    Returns ``{"n_a", "n_b", "data"}``: ``data`` is base64 of zlib of ``(n_pairs, n_a + n_b)`` float32 (``inf``
    for dead neurons; the pairs in :attr:`PairCounts.first` order).
    """
    rows = curves.loc[(curves["population"] == counts.population) & (curves["layer"] == counts.layer)]
    if "status" in rows.columns:
        rows = rows.loc[rows["status"] == "ok"]
    rows = rows.sort_values("repeat", kind="stable").drop_duplicates(["model_a", "model_b"])
    by_pair = {(row.model_a, row.model_b): row for row in rows.itertuples(index=False)}
    first = by_pair[(counts.models[counts.first[0]], counts.models[counts.second[0]])]
    n_a, n_b = len(first.critical_a), len(first.critical_b)
    values = np.full((len(counts.first), n_a + n_b), np.inf, dtype=np.float32)
    for position, (a, b) in enumerate(zip(*counts.pair_names(), strict=True)):
        row = by_pair[(a, b)]
        critical = np.concatenate([np.asarray(row.critical_a, float), np.asarray(row.critical_b, float)])
        critical = np.where(critical <= row.exact_tol, 0.0, critical)
        values[position, : critical.size] = critical[: n_a + n_b]
    raw = values.astype("<f4").tobytes()
    return {"n_a": n_a, "n_b": n_b, "data": base64.b64encode(zlib.compress(raw, 6)).decode()}


def model_labels(models: pd.DataFrame, names: list[str]) -> dict[str, dict]:
    """A short label and a hover description of each model in ``names``, from ``models`` rows.

    The label is the model's name (``models.name``: ``seed3``, a checkpoint's relative path, an imported model's
    name); in rows without one, the seed (else the checkpoint's file name, else the id). The revision or epoch is
    added where the table has one and the name does not say it; labels are unique (an id prefix is added to
    repeated ones).

    Returns
    -------
    dict of str to dict
        ``{model_id: {"label": str, "text": str}}``.
    """
    known = {} if models is None or models.empty else {
        row["model_id"]: row for row in models.drop_duplicates("model_id", keep="last").to_dict("records")}
    out = {}
    for name in names:
        row = known.get(name, {})
        seed, epoch, revision = row.get("seed"), row.get("epoch"), row.get("revision")
        checkpoint = row.get("checkpoint")
        if _given(row.get("name")):
            label = str(row["name"])
        elif _given(seed):
            label = f"seed{int(seed)}"
        elif _given(checkpoint):
            label = str(checkpoint).rstrip("/").rsplit("/", 1)[-1]
        else:
            label = name[:12]
        if _given(revision) and str(revision) not in label:
            label += f" @{revision}"
        elif not _given(revision) and _given(epoch) and f"epoch{int(epoch)}" not in label:
            label += f" · epoch {int(epoch)}"
        parts = [label, f"population {row['population']}" if _given(row.get("population")) else None,
                 f"test acc {row['test_accuracy']:.3f}" if _given(row.get("test_accuracy")) else None,
                 f"id {name[:12]}"]
        out[name] = {"label": label, "text": ", ".join(part for part in parts if part)}
    seen: dict[str, int] = {}
    for entry in out.values():
        seen[entry["label"]] = seen.get(entry["label"], 0) + 1
    for name, entry in out.items():
        if seen[entry["label"]] > 1:
            entry["label"] += f" ({name[:8]})"
    return out


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


__all__ = ["SLIDER_STEPS", "PairCounts", "cluster_orders", "encode_counts", "encode_neurons", "encode_orders",
           "joining_steps", "model_labels", "pack_integers", "pair_counts", "similarity_matrix", "slider_grid"]
