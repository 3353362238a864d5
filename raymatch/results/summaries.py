"""Summaries of ``matches`` rows for figures and reports, and rendering of query results.

These work on DataFrames (from :func:`raymatch.results.load` or :func:`raymatch.results.query`), never on the
store.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs the matches columns {', '.join(map(repr, missing))}")


def _ok_rows(matches: pd.DataFrame, columns: list[str], what: str) -> pd.DataFrame:
    if "population" in columns and "population" not in matches.columns:  # rows of a single, trained population
        matches = matches.assign(population="trained")
    _require_columns(matches, [*columns, "status"], what)
    return matches.loc[matches["status"] == "ok", columns]


def _in_order_of_appearance(values: pd.Series) -> pd.Categorical:
    return pd.Categorical(values, categories=pd.unique(values), ordered=True)


FIGURE_COLUMNS = ["study", "population", "layer", "eps", "similarity_mean", "similarity_std", "similarity_min",
                  "similarity_max", "chance", "n_pairs"]


def figure_data(matches: pd.DataFrame) -> pd.DataFrame:
    """The paper's figure data: similarity against ε, per layer, over the pairs of a study.

    Only ``"ok"`` rows count. Each pair's repeats are first averaged (one value per pair), then summarised
    over the pairs.

    Parameters
    ----------
    matches : pandas.DataFrame
        Rows of the ``matches`` table (as from :func:`raymatch.results.load` or :func:`raymatch.results.query`).

    Returns
    -------
    pandas.DataFrame
        One row per (study, population, layer, eps) with columns ``study``, ``population`` (``"trained"`` where
        ``matches`` has no such column), ``layer``, ``eps``, ``similarity_mean``,
        ``similarity_std`` (sample standard deviation over pairs; NaN for a single pair), ``similarity_min``,
        ``similarity_max``, ``chance`` (mean chance level) and ``n_pairs``. Studies and layers appear in the
        order they first appear in ``matches``, ε ascending.
    """
    keys = ["study", "population", "layer", "eps"]
    pair = ["model_a", "model_b"]
    rows = _ok_rows(matches, [*keys, *pair, "similarity", "chance"], "figure_data")
    if rows.empty:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in zip(
            FIGURE_COLUMNS, [str, str, str, "float64", *["float64"] * 5, "int64"], strict=True)})
    rows = rows.assign(study=_in_order_of_appearance(rows["study"]), layer=_in_order_of_appearance(rows["layer"]),
                       population=_in_order_of_appearance(rows["population"]))
    per_pair = rows.groupby([*keys, *pair], observed=True, sort=False)[["similarity", "chance"]].mean()
    summary = per_pair.groupby(level=keys, observed=True, sort=True).agg(
        similarity_mean=("similarity", "mean"),
        similarity_std=("similarity", "std"),
        similarity_min=("similarity", "min"),
        similarity_max=("similarity", "max"),
        chance=("chance", "mean"),
        n_pairs=("similarity", "size"),
    ).reset_index()
    for column in ("study", "population", "layer"):
        summary[column] = summary[column].astype(str)
    summary["n_pairs"] = summary["n_pairs"].astype("int64")
    return summary[FIGURE_COLUMNS]


def similarity_column(eps: float) -> str:
    """Name of the ``pair_summary`` column holding the similarity at ``eps``: ``similarity@<eps>``."""
    return f"similarity@{float(eps)!r}"


def pair_summary(matches: pd.DataFrame) -> pd.DataFrame:
    """One row per (study, pair, layer): its maximal ε and its similarity at each ε.

    Only ``"ok"`` rows count; repeats are averaged.

    Parameters
    ----------
    matches : pandas.DataFrame
        Rows of the ``matches`` table.

    Returns
    -------
    pandas.DataFrame
        Columns ``study``, ``population``, ``model_a``, ``model_b``, ``layer``, ``max_epsilon``, then one column
        ``similarity@<eps>`` per ε, ascending (see :func:`similarity_column`). Studies and layers in the order
        they first appear in ``matches``, pairs sorted by name.
    """
    keys = ["study", "population", "model_a", "model_b", "layer"]
    rows = _ok_rows(matches, [*keys, "eps", "max_epsilon", "similarity"], "pair_summary")
    if rows.empty:
        return pd.DataFrame({name: pd.Series(dtype=str) for name in keys} | {
            "max_epsilon": pd.Series(dtype="float64")})
    rows = rows.assign(study=_in_order_of_appearance(rows["study"]), layer=_in_order_of_appearance(rows["layer"]))
    max_epsilon = rows.groupby(keys, observed=True)["max_epsilon"].mean()
    similarity = rows.pivot_table(index=keys, columns="eps", values="similarity", aggfunc="mean", observed=True)
    similarity = similarity.reindex(columns=sorted(similarity.columns))
    similarity.columns = [similarity_column(eps) for eps in similarity.columns]
    summary = pd.concat([max_epsilon, similarity], axis=1).sort_index().reset_index()
    for column in ("study", "population", "layer"):
        summary[column] = summary[column].astype(str)
    summary.columns.name = None
    return summary


def _cell_text(value):
    if isinstance(value, (np.ndarray, list, tuple)):
        return json.dumps(np.asarray(value).tolist())
    return value


FORMATS = ("table", "csv", "json", "parquet")


def format_frame(frame: pd.DataFrame, fmt: str) -> str | bytes:
    """Render a DataFrame for output.

    Parameters
    ----------
    frame : pandas.DataFrame
        The data (the index is dropped).
    fmt : str
        ``"table"`` (aligned text), ``"csv"`` (list cells as JSON arrays), ``"json"`` (one JSON array of
        records; times in ISO 8601, missing values null) or ``"parquet"``.

    Returns
    -------
    str or bytes
        Text, or bytes for ``"parquet"``.
    """
    if fmt == "table":
        if frame.empty:
            return "\n".join(filter(None, ["  ".join(map(str, frame.columns)), "(0 rows)"]))
        return frame.to_string(index=False)
    if fmt == "csv":
        text_frame = frame.copy()
        for name, dtype in text_frame.dtypes.items():
            if pd.api.types.is_object_dtype(dtype):
                text_frame[name] = text_frame[name].map(_cell_text)
        return text_frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", date_format="iso", date_unit="us")
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink, compression="zstd")
        return sink.getvalue()
    raise ValueError(f"unknown output format {fmt!r} (known: {', '.join(FORMATS)})")


__all__ = ["FIGURE_COLUMNS", "FORMATS", "figure_data", "format_frame", "pair_summary", "similarity_column"]
