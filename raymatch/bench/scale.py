"""What ``raymatch bench population`` measures beside times: driver memory, table objects, two kernels' rows.

- :class:`DriverMemory` samples this process's resident memory while a run goes on (its peak, and what it held
  before), so that a table of 1,000 models shows whether the driver's memory grows with the pairs.
- :func:`table_objects` counts the data files of a results table: those of its current version (what a query
  reads) and every Parquet object under its folder (the files that compaction replaced stay until vacuum).
- :func:`compare_kernels` reads the ``curves`` rows of two runs of the same pairs and says how far their
  critical ε are apart and at how many (pair, ε of the grid, side) their maximum matches differ.
"""

from __future__ import annotations

import resource
import sys
import threading

import numpy as np

__all__ = ["DriverMemory", "compare_kernels", "copy_tables", "table_objects"]

#: A critical ε this close to a grid ε may fall on either side of it in either kernel (float64 rounding of two
#: computations of the same number): such a neuron is not counted as a difference (as in :mod:`.blocks`).
ROUNDING = 1e-9


def _rss_bytes() -> int | None:
    """Resident memory of this process now (Linux ``/proc/self/statm``), or None where there is no such file."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


class DriverMemory:
    """Resident memory of this process while a block runs: before it, and the peak sampled every ``every`` s.

    Used as a context manager; :attr:`before`, :attr:`peak` (bytes) and :attr:`max_rss` (the process's peak so far,
    from ``getrusage``, which also catches what happens between two samples) are set when the block ends.
    """

    def __init__(self, every: float = 0.2):
        self.every = every
        self.before = self.peak = 0
        self.max_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="raymatch-bench-memory", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def __enter__(self) -> DriverMemory:
        self.before = self.peak = _rss_bytes() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes() or 0)
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        self.max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def as_row(self) -> dict:
        """``{"before": MB, "peak": MB, "max_rss": MB}``."""
        return {"before": self.before / 1e6, "peak": self.peak / 1e6, "max_rss": self.max_rss / 1e6}


def table_objects(store, table: str) -> tuple[int, int]:
    """``(files of the current version, Parquet objects under the table's folder)`` of a results table."""
    from ..results import data_files
    from ..store.layout import table_prefix

    stored = sum(1 for key in store.list(table_prefix(table)) if key.endswith(".parquet") and "_delta_log" not in key)
    return len(data_files(store, table)), stored


def copy_tables(source, target, prefixes: tuple[str, ...] = ("results", "studies")) -> int:
    """Copy the results tables and study records of one store to another, object by object; returns the bytes.

    A Delta table's log names its files relative to the table's folder, so the copy is the same table there.
    """
    copied = 0
    for prefix in prefixes:
        for key in source.list(prefix):
            data = source.read_bytes(key)
            target.write_bytes(key, data)
            copied += len(data)
    return copied


def _curves(store, study: str):
    """The ``curves`` rows of ``study`` (identity, tolerance and critical ε), sorted by pair."""
    import pyarrow.compute as pc

    from ..results import read_columns

    columns = ["population", "layer", "repeat", "model_a", "model_b", "exact_tol", "critical_a", "critical_b"]
    rows = read_columns(store, "curves", columns, filters={"study": study, "status": "ok"})
    order = pc.sort_indices(rows, sort_keys=[(name, "ascending") for name in columns[:5]])
    return rows.take(order)


def compare_kernels(store, baseline_store, study: str, grid: tuple[float, ...], baseline: str | None = None) -> dict:
    """How the ``curves`` rows of ``study`` differ from those of ``baseline`` (default: the same study) of a store.

    The same pairs, computed by another kernel or elsewhere (``baseline_store`` may be ``store``).

    Returns
    -------
    dict
        ``rows`` (of each), ``same_pairs`` (bool), ``max_difference`` (largest |Δ critical ε| over finite values;
        dead neurons must be ``inf`` in both) and ``differing_sets`` (pair × ε of ``grid`` × side where the maximum
        matches differ, neurons within :data:`ROUNDING` of ε aside).
    """
    mine, theirs = _curves(store, study), _curves(baseline_store, baseline or study)
    keys = ["population", "layer", "repeat", "model_a", "model_b"]
    same = mine.num_rows == theirs.num_rows and all(mine.column(k).equals(theirs.column(k)) for k in keys)
    result = {"rows": (mine.num_rows, theirs.num_rows), "same_pairs": same, "max_difference": float("nan"),
              "differing_sets": None}
    if not same:
        return result
    worst, differing = 0.0, 0
    tol = mine.column("exact_tol").to_numpy(zero_copy_only=False)
    for side in ("critical_a", "critical_b"):
        a, b = mine.column(side).combine_chunks(), theirs.column(side).combine_chunks()
        if not a.offsets.equals(b.offsets):
            return {**result, "same_pairs": False}
        x, y = a.flatten().to_numpy(), b.flatten().to_numpy()
        row_of = np.repeat(np.arange(len(a)), np.diff(a.offsets.to_numpy()))
        finite = np.isfinite(y)
        if not np.array_equal(finite, np.isfinite(x)):
            return {**result, "max_difference": float("inf")}
        worst = max(worst, float(np.abs(x[finite] - y[finite]).max(initial=0.0)))
        for eps in grid:
            kept = np.maximum(eps, tol[row_of])
            close = (np.abs(x - eps) <= ROUNDING) | (np.abs(y - eps) <= ROUNDING)
            differ = ((x <= kept) != (y <= kept)) & ~close
            differing += int(np.unique(row_of[differ]).size)
    return {**result, "max_difference": worst, "differing_sets": differing}

