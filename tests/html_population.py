"""A synthetic store at the table scale of ``raymatch bench population``: 200 models, every pair, two layers.

The models fall into four planted clusters (seed mod 4): a pair inside a cluster has lower critical ε than a pair
across clusters. Layers ``relu1`` (128 neurons) and ``relu2`` (64), one repeat, one population (``trained``) as the
bench study has. Some critical ε are exactly on the slider's grid (0.25, 0.5) or at 0 (exact matches), and a few
neurons are dead (``inf``), so the ``≤`` of the membership rule and the dead neurons matter.

``python tests/html_population.py DIR`` writes the store under ``DIR/store`` and the report with ``--html`` under
``DIR/report``, and prints the page's size and the report's time.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from raymatch.match import EXACT_TOL
from raymatch.results import append_rows
from raymatch.store import Store

STUDY = "table-scale-200"
LAYERS = {"relu1": 128, "relu2": 64}
N_SAMPLES = 360
CREATED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def cluster(seed):
    return seed % 4


def _critical(rng, n: int, near: bool, size: tuple[int, ...]) -> np.ndarray:
    base = 0.12 if near else 0.3
    values = np.minimum(base + 0.6 * rng.beta(2.0, 4.0, size=(*size, n)), 1.0)
    values[..., : n // 16] = 0.0  # matched exactly
    values[..., n // 16: n // 8] = 0.25  # exactly on the slider's grid
    values[..., n // 8: n // 8 + 2] = 0.5
    values[..., -1] = np.inf  # one dead neuron per side
    return values


def curve_table(n_models: int = 200, seed: int = 0):
    """The ``curves`` rows as an Arrow table of :data:`raymatch.results.CURVES`: every pair of ``n_models`` models
    (ids ``m000`` …), both layers. Built from numpy columns, not row dicts: 39,800 rows of 128–256 values."""
    import pyarrow as pa

    from raymatch.results import CURVES

    rng = np.random.default_rng(seed)
    pairs = np.array(list(itertools.combinations(range(n_models), 2)))
    near = cluster(pairs[:, 0]) == cluster(pairs[:, 1])
    tables = []
    for layer, n in LAYERS.items():
        sides = [np.where(near[:, None], _critical(rng, n, True, (len(pairs),)), _critical(rng, n, False,
                                                                                         (len(pairs),)))
                 for _ in "ab"]
        both = np.concatenate(sides, axis=1)
        count = len(pairs)
        offsets = pa.array(np.arange(count + 1, dtype=np.int32) * n)
        constant = {"study": STUDY, "population": "trained", "layer": layer, "repeat": 0,
                    "probe_id": "probe-digits-all", "config_hash": f"hash-{STUDY}", "code_version": "0.2.0",
                    "n_samples": N_SAMPLES, "n_a": n, "n_b": n, "dead_a": 1, "dead_b": 1, "exact_tol": EXACT_TOL,
                    "chance": float(np.sqrt(1 - n / N_SAMPLES)), "cka": 0.8, "seconds": 0.01, "status": "ok",
                    "error": None, "created_at": CREATED}
        columns = {name: pa.array([value] * count, type=CURVES.field(name).type) for name, value in constant.items()}
        columns |= {"model_a": pa.array([f"m{a:03d}" for a in pairs[:, 0]]),
                    "model_b": pa.array([f"m{b:03d}" for b in pairs[:, 1]]),
                    "critical_a": pa.ListArray.from_arrays(offsets, pa.array(sides[0].ravel())),
                    "critical_b": pa.ListArray.from_arrays(offsets, pa.array(sides[1].ravel())),
                    "max_epsilon": pa.array(np.where(np.isfinite(both), both, -np.inf).max(axis=1))}
        tables.append(pa.Table.from_pydict({field.name: columns[field.name] for field in CURVES}, schema=CURVES))
    return pa.concat_tables(tables)


def build_population_store(root: Path, n_models: int = 200) -> Store:
    """The store: ``curves``, ``models`` (seed, epoch), one ``runs`` row and the study record.

    The first curve goes through :func:`~raymatch.results.append_rows` (which checks it and creates the table);
    the rest is one Delta append of the Arrow table (per-row checks of 39,800 rows take longer than the report).
    """
    from deltalake import write_deltalake

    from raymatch.results import storage_options, table_uri

    store = Store(str(root))
    curves = curve_table(n_models)
    append_rows(store, "curves", curves.slice(0, 1).to_pylist())
    write_deltalake(table_uri(store, "curves"), curves.slice(1), mode="append",
                    storage_options=storage_options(store) or None)
    append_rows(store, "models", [
        {"study": STUDY, "config_hash": f"hash-{STUDY}", "population": "trained", "model_id": f"m{seed:03d}",
         "seed": seed, "checkpoint": f"checkpoints/trained/seed{seed}.safetensors", "architecture": "mlp",
         "test_accuracy": 0.9, "epochs": 3, "selected_epoch": 3, "epoch": 3, "created_at": CREATED}
        for seed in range(n_models)])
    append_rows(store, "runs", [{
        "run_id": "run-1", "study": STUDY, "config_hash": f"hash-{STUDY}", "host": "bench", "code_version": "0.2.0",
        "started_at": CREATED, "ended_at": CREATED + dt.timedelta(seconds=95), "status": "succeeded",
        "computed": curves.num_rows, "skipped": 0, "failed": 0, "stages": "{}", "error": None,
        "updated_at": CREATED + dt.timedelta(seconds=95)}])
    store.write_json(f"studies/{STUDY}.json", {
        "name": STUDY, "config_hash": f"hash-{STUDY}", "code_version": "0.2.0", "layers": list(LAYERS),
        "eps": [0.15, 0.2, 0.25, 0.3, 0.5], "config": {"name": STUDY, "pairs": "all", "layers": ["relu"]}})
    return store


if __name__ == "__main__":
    from raymatch.report import write_report

    folder = Path(sys.argv[1])
    started = time.perf_counter()
    population = build_population_store(folder / "store")
    built = time.perf_counter()
    report = write_report(population, out_dir=folder / "report", html=True)
    done = time.perf_counter()
    print(f"store written in {built - started:.1f} s; report (PNGs + index.html) in {done - built:.1f} s")
    print(f"{report.html.path}: {report.html.size / 1e6:.2f} MB")
