"""Uncertainty that respects the design: a bootstrap over *models* for a mean over pairs.

The pairs of a population share models (with ``pairs: all``, M models give M(M−1)/2 pairs, each model in M−1 of
them), so the pairs are not independent draws and an interval from resampling pairs is too narrow. The unit that
was sampled is the model (its seed): :func:`model_bootstrap` resamples models with replacement and recomputes the
mean over the pairs among the models drawn.

Repeated draws of one model: a model drawn ``c`` times counts with weight ``c``, and a pair of two distinct models
drawn ``c_a`` and ``c_b`` times counts ``c_a · c_b`` times, as the pairs of distinct draws would; two draws of the
same model make no pair (a model is not compared with itself). Pairs the study did not compute (``pairs:
reference`` or ``consecutive``) count nowhere. A resample with no computed pair among its models is drawn again
(counted in ``redrawn``).

The spread over conv row-sample repeats is another matter: repeats are averaged per pair first, and the report
shows their spread separately (``repeats.png``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Bootstrap resamples and seed the report uses (recorded beside every interval).
N_BOOT = 2000
SEED = 0
LEVEL = 0.95

#: Columns of :func:`bootstrap_table`.
BOOTSTRAP_COLUMNS = ["study", "population", "layer", "eps", "similarity_mean", "ci_low", "ci_high", "n_models",
                     "n_pairs", "n_boot", "seed", "level"]


@dataclass(frozen=True)
class Interval:
    """A mean over pairs and its bootstrap interval over models.

    Attributes
    ----------
    mean : float
        Mean over the computed pairs (each pair once).
    low, high : float
        Percentile interval of the bootstrap means at :attr:`level` (NaN with fewer than 2 models).
    n_models, n_pairs : int
        Models and computed pairs the mean is over.
    n_boot, seed : int
        Resamples and the seed of ``numpy.random.default_rng`` they were drawn with.
    level : float
        Coverage asked for (0.95).
    redrawn : int
        Resamples drawn again because no computed pair was among their models.
    """

    mean: float
    low: float
    high: float
    n_models: int
    n_pairs: int
    n_boot: int
    seed: int
    level: float
    redrawn: int = 0


def pair_matrix(model_a, model_b, values) -> tuple[list[str], np.ndarray]:
    """The symmetric model × model matrix of pair values (NaN where no pair, and on the diagonal).

    Parameters
    ----------
    model_a, model_b : sequence of str, length n_pairs
        The two models of each pair (each unordered pair at most once).
    values : sequence of float, length n_pairs

    Returns
    -------
    models : list of str
        The models, in order of first appearance.
    matrix : numpy.ndarray, shape (n_models, n_models), float64

    Raises
    ------
    ValueError
        A pair listed twice, a model paired with itself, or lengths that differ.
    """
    model_a, model_b, values = list(model_a), list(model_b), np.asarray(values, dtype=np.float64)
    if not len(model_a) == len(model_b) == values.size:
        raise ValueError("model_a, model_b and values must have the same length")
    models = list(dict.fromkeys([*model_a, *model_b]))
    index = {model: position for position, model in enumerate(models)}
    matrix = np.full((len(models), len(models)), np.nan)
    for a, b, value in zip(model_a, model_b, values, strict=True):
        i, j = index[a], index[b]
        if i == j:
            raise ValueError(f"model {a!r} is paired with itself")
        if not np.isnan(matrix[i, j]):
            raise ValueError(f"the pair ({a!r}, {b!r}) is listed twice")
        matrix[i, j] = matrix[j, i] = value
    return models, matrix


def model_bootstrap(model_a, model_b, values, *, n_boot: int = N_BOOT, seed: int = SEED,
                    level: float = LEVEL) -> Interval:
    """Mean over pairs with a percentile interval from resampling the models (see the module's notes).

    Parameters
    ----------
    model_a, model_b : sequence of str, length n_pairs
        The two models of each pair.
    values : sequence of float, length n_pairs
        One value per pair (e.g. its similarity at one ε, its repeats averaged); NaN values are dropped.
    n_boot : int, default :data:`N_BOOT`
        Resamples.
    seed : int, default :data:`SEED`
    level : float, default :data:`LEVEL`

    Returns
    -------
    Interval
        ``low``/``high`` NaN with fewer than 2 models (or no pair).

    Examples
    --------
    >>> iv = model_bootstrap(["a", "a", "b"], ["b", "c", "c"], [0.5, 0.6, 0.7], n_boot=200, seed=1)
    >>> round(iv.mean, 6), iv.n_models, iv.n_pairs, 0.5 <= iv.low <= iv.mean <= iv.high <= 0.7
    (0.6, 3, 3, True)
    """
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    model_a, model_b = np.asarray(model_a, dtype=object)[keep], np.asarray(model_b, dtype=object)[keep]
    pair_matrix(model_a, model_b, values[keep])  # refuses repeated pairs and self-pairs
    n_pairs = int(keep.sum())
    mean = float(values[keep].mean()) if n_pairs else float("nan")
    n_models = len(set(model_a) | set(model_b))
    if n_models < 2 or n_pairs == 0:
        return Interval(mean, float("nan"), float("nan"), n_models, n_pairs, n_boot, seed, level)
    means, redrawn = _resampled_means(model_a, model_b, values[keep][:, None], n_boot, seed)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means[:, 0], [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high), n_models, n_pairs, n_boot, seed, level, redrawn)


def _resampled_means(model_a, model_b, values: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, int]:
    """Bootstrap means over models of every column of ``values`` (n_pairs × n_columns, no NaN), the same resamples.

    Returns ``(means, redrawn)``: ``means`` of shape (n_boot, n_columns); ``redrawn`` resamples had no pair.
    """
    models = list(dict.fromkeys([*model_a, *model_b]))
    index = {model: position for position, model in enumerate(models)}
    first = np.array([index[model] for model in model_a])
    second = np.array([index[model] for model in model_b])
    rng = np.random.default_rng(seed)
    chunks, found, redrawn = [], 0, 0
    while found < n_boot:
        counts = rng.multinomial(len(models), np.full(len(models), 1.0 / len(models)), size=n_boot - found)
        weights = (counts[:, first] * counts[:, second]).astype(np.float64)  # c_a · c_b per pair and resample
        total = weights.sum(axis=1)
        ok = total > 0
        redrawn += int((~ok).sum())
        chunks.append((weights[ok] @ values) / total[ok, None])
        found += int(ok.sum())
    return np.concatenate(chunks), redrawn


def model_bootstrap_curve(model_a, model_b, values, *, n_boot: int = N_BOOT, seed: int = SEED,
                          level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """:func:`model_bootstrap` of several columns at once (e.g. a band over ε), with the same resamples for all.

    Parameters
    ----------
    model_a, model_b : sequence of str, length n_pairs
    values : array_like, shape (n_pairs, n_columns), no NaN
    n_boot, seed, level
        As in :func:`model_bootstrap`.

    Returns
    -------
    low, high : numpy.ndarray, shape (n_columns,)
        NaN with fewer than 2 models.
    """
    values = np.asarray(values, dtype=np.float64)
    pair_matrix(model_a, model_b, np.zeros(len(values)))
    if values.ndim != 2 or values.shape[0] == 0 or np.isnan(values).any():
        raise ValueError("values must be an (n_pairs, n_columns) array without NaN")
    if len(set(model_a) | set(model_b)) < 2:
        return np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    means, _ = _resampled_means(list(model_a), list(model_b), values, n_boot, seed)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return low, high


def bootstrap_table(matches: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = SEED,
                    level: float = LEVEL) -> pd.DataFrame:
    """Per (study, population, layer, ε): mean similarity over pairs and its bootstrap interval over models.

    Only ``"ok"`` rows count; each pair's repeats are averaged first (their spread is reported separately).

    Parameters
    ----------
    matches : pandas.DataFrame
        Rows of ``matches`` (or ``matches_at(eps)``): ``study``, ``population``, ``layer``, ``eps``, ``model_a``,
        ``model_b``, ``similarity`` (``status`` when present).
    n_boot, seed, level
        As in :func:`model_bootstrap`; the same seed for every group, recorded in each row.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`BOOTSTRAP_COLUMNS`, one row per group, in order of first appearance, ε ascending.
    """
    keys = ["study", "population", "layer", "eps"]
    rows = matches
    if "status" in rows.columns:
        rows = rows.loc[rows["status"] == "ok"]
    if rows.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in BOOTSTRAP_COLUMNS})
    per_pair = rows.groupby([*keys, "model_a", "model_b"], sort=False)["similarity"].mean().reset_index()
    out = []
    for group, pairs in per_pair.groupby(keys, sort=False):
        interval = model_bootstrap(pairs["model_a"], pairs["model_b"], pairs["similarity"], n_boot=n_boot, seed=seed,
                                   level=level)
        out.append([*group, interval.mean, interval.low, interval.high, interval.n_models, interval.n_pairs, n_boot,
                    seed, level])
    table = pd.DataFrame(out, columns=BOOTSTRAP_COLUMNS)
    order = {column: {name: index for index, name in enumerate(dict.fromkeys(table[column]))}
             for column in ("study", "population", "layer")}
    return table.sort_values(keys, key=lambda column: column.map(order[column.name]) if column.name in order
                             else column, kind="stable").reset_index(drop=True)


__all__ = ["BOOTSTRAP_COLUMNS", "LEVEL", "N_BOOT", "SEED", "Interval", "bootstrap_table", "model_bootstrap",
           "model_bootstrap_curve", "pair_matrix"]
