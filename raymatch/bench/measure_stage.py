"""``raymatch bench match --part measures``, row 9: the match stage's task with every standard measure on.

Issue 24's target: with ``measures: [max_match, cka, cca, svcca, pwcca, procrustes, neuron_corr]`` a match task
costs at most 15 % more than with ``[max_match, cka]``. What is timed is the task body itself
(:func:`raymatch.engine.tasks.match_task`) on a block of models whose activations are in a local store: reading
them and the stored compact factors, the ε-curves and CKA (whichever match kernel the task uses), and, in the
measured run, the measures and their ``measures``/``neurons`` rows. The two run in turns (medians of ``repeats``
rounds after a warm-up that stores the factors), at the table sizes: ReLU-like layers of 128 and 64 neurons, 1,797
samples, each model its own seed (:func:`raymatch.match.synthetic.relu_pair`). The parts each task reports
(``factor_seconds``, ``match_seconds``, ``cka_seconds``, ``measure_seconds``) say where the time goes, and
:func:`raymatch.bench.measures.measure_costs` what each measure costs alone.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from ..engine.tasks import MatchTask, match_task
from ..match.synthetic import relu_pair
from ..store import ActivationKey, Store
from ..store.activations import write_activations
from .measures import TARGET, measure_costs
from .timing import text_table

__all__ = ["STAGE_MEASURES", "bench_measure_stage", "print_measure_stage"]

#: The measures the measured run adds (the ``measures`` table's; ``cka`` is the baseline's, in ``curves``).
STAGE_MEASURES = ("cca", "svcca", "pwcca", "procrustes", "neuron_corr")
FULL = {"samples": 1797, "layers": ((128, 8), (64, 8))}
QUICK = {"samples": 400, "layers": ((32, 4),)}
_PARTS = ("factor_seconds", "match_seconds", "cka_seconds", "measure_seconds")


def _store_block(store: Store, layer: str, n_models: int, n_samples: int, n_neurons: int) -> list[str]:
    models = [f"m{seed}" for seed in range(n_models)]
    for seed, model in enumerate(models):
        A = relu_pair(n_samples, n_neurons, n_neurons, seed=seed)[0]
        write_activations(store, ActivationKey("bench", model, layer), A)
    return models


def bench_measure_stage(*, quick: bool = False, repeats: int = 3) -> list[dict]:
    """Row 9 per layer size: seconds per pair of the baseline task and of the task with every measure.

    Returns
    -------
    list of dict
        ``row``, ``shape``, ``pairs``, ``baseline`` and ``measures`` (median seconds of a whole task), ``ratio``,
        ``met`` (ratio ≤ :data:`~raymatch.bench.measures.TARGET`) and ``parts`` (median seconds of each part of the
        measured task).
    """
    sizes = QUICK if quick else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="raymatch-bench-measures-") as folder:
        store = Store(folder)
        for index, (n_neurons, n_models) in enumerate(sizes["layers"]):
            layer = f"relu{n_neurons}"
            models = _store_block(store, layer, n_models, sizes["samples"], n_neurons)
            pairs = tuple((a, b) for i, a in enumerate(models) for b in models[i + 1:])
            tasks = {"baseline": MatchTask("bench", "h", "bench", layer, 0, pairs),
                     "measures": MatchTask("bench", "h", "bench", layer, 0, pairs, measures=STAGE_MEASURES)}
            for task in tasks.values():
                match_task(store, task)  # warm-up: stores the compact factors, as a study's factor stage does
            times: dict[str, list[float]] = {name: [] for name in tasks}
            parts: dict[str, list[float]] = {name: [] for name in _PARTS}
            for _ in range(repeats):
                for name, task in tasks.items():
                    started = time.perf_counter()
                    result = match_task(store, task)
                    times[name].append(time.perf_counter() - started)
                    if name == "measures":
                        for part in _PARTS:
                            parts[part].append(result.get(part, 0.0))
            baseline, measured = (statistics.median(times[name]) for name in ("baseline", "measures"))
            rows.append({"row": f"9{'abc'[index]}", "pairs": len(pairs), "baseline": baseline, "measures": measured,
                         "shape": f"{n_neurons} + {n_neurons} neurons, {sizes['samples']} samples, block of "
                                  f"{n_models}", "ratio": measured / baseline, "met": measured / baseline <= TARGET,
                         "parts": {part: statistics.median(values) for part, values in parts.items()},
                         "n_neurons": n_neurons, "n_samples": sizes["samples"]})
    return rows


def print_measure_stage(rows: list[dict], out=None, *, repeats: int = 3) -> None:
    """Print row 9 (milliseconds per pair), where the measured task's time goes, and each measure's cost."""
    out = out or sys.stdout
    header = ("row", "shape", "pairs", "match + CKA ms", "+ every measure ms", "ratio", f"target ≤ {TARGET:.2f}")
    lines = [(r["row"], r["shape"], str(r["pairs"]), f"{1e3 * r['baseline'] / r['pairs']:.3f}",
              f"{1e3 * r['measures'] / r['pairs']:.3f}", f"{r['ratio']:.3f}", "met" if r["met"] else "MISSED")
             for r in rows]
    text_table(header, lines, out)
    print("\nwhere the measured task's time goes (ms per pair; the task's own clocks):", file=out)
    header = ("row", "factors (read, rebuild)", "cross products + ε-curves", "CKA", "measures + rows", "other")
    lines = []
    for r in rows:
        values = [r["parts"][part] for part in _PARTS]
        lines.append((r["row"], *(f"{1e3 * v / r['pairs']:.3f}" for v in values),
                      f"{1e3 * max(0.0, r['measures'] - sum(values)) / r['pairs']:.3f}"))
    text_table(header, lines, out)
    first = rows[0]
    costs = measure_costs(first["n_samples"], (first["n_neurons"], first["n_neurons"]), repeats)
    print(f"\neach alone, {first['n_neurons']} + {first['n_neurons']} neurons, warm factors, cross product given "
          "(median ms): " + ", ".join(f"{name} {seconds * 1e3:.2f}" for name, seconds in costs.items()), file=out)

