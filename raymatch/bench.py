"""Benchmarks, printed as tables with the baseline measured in the same process.

Run ``raymatch bench match`` (or ``python -m raymatch.bench match``). Targets are stated in
``docs/benchmarks.md``; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import scipy
import scipy.linalg

from . import __version__
from .match import candidate_order, factor, match_curve, max_match, minimal_match, reference, simple_matches
from .match.synthetic import relu_pair

PAPER_EPS = (0.15, 0.2, 0.25, 0.3, 0.5)


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, int]:
    """Median wall time of ``repeats`` calls (after one untimed warm-up when repeats > 1)."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), repeats


def machine() -> str:
    """The processor and core count this benchmark ran on, for the tables' headers."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, raymatch {__version__}")


def bench_match(n_samples: int, n_neurons: int, small_samples: int, small_neurons: int,
                repeats: int, seed: int = 0) -> list[dict]:
    """Rows 1-6 of the match-core benchmark (see docs/benchmarks.md)."""
    A, B = relu_pair(n_samples, n_neurons, n_neurons, seed=seed)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    joint = np.hstack([A64, B64])
    rows = []

    def row(number, what, seconds, runs, target=""):
        rows.append({"row": number, "what": what, "seconds": seconds, "runs": runs, "target": target})

    seconds, runs = _time(lambda: [reference.max_match(A64, B64, eps) for eps in PAPER_EPS], 1)
    row(1, f"oracle Algorithm 1, ε ∈ {{{', '.join(map(str, PAPER_EPS))}}}", seconds, runs)
    seconds, runs = _time(lambda: scipy.linalg.qr(joint, mode="economic", check_finite=False), repeats)
    row(2, f"float64 thin QR of the joint {n_samples} × {2 * n_neurons} matrix (floor)", seconds, runs)
    seconds, runs = _time(lambda: match_curve(A, B), repeats)
    row(3, "match_curve from arrays (every ε)", seconds, runs, "≤ 1.5 × row 2, ≥ 10× faster than row 1")
    fa, fb = factor(A), factor(B)
    seconds, runs = _time(lambda: match_curve(fa, fb), repeats)
    row(4, "match_curve from two cached factors", seconds, runs, "≤ 0.3 s")
    found = []
    seconds, runs = _time(lambda: found.append(simple_matches(fa, fb, 0.25)), 1)
    m = max_match(fa, fb, 0.25)
    row(5, f"simple_matches at ε = 0.25, all v ({m.size_a}+{m.size_b} neurons, "
           f"{len(found[-1])} distinct)", seconds, runs, "≤ 60 s")

    a_small, b_small = relu_pair(small_samples, small_neurons, small_neurons, seed=seed + 1, dtype=np.float64)
    fa_small, fb_small = factor(a_small), factor(b_small)
    joint_small = np.asfortranarray(np.hstack([a_small, b_small]))
    seconds, runs = _time(lambda: scipy.linalg.qr(joint_small, mode="r", check_finite=False), 3 * repeats)
    row("6", f"float64 QR (R only) of the joint {small_samples} × {2 * small_neurons} matrix (floor for 6b, 6e)",
        seconds, runs)
    # Two ε: the paper's largest grid value (only the planted part matches) and one above the
    # maximal ε of this pair, where the search runs through every neuron of both layers.
    for labels, eps_small in ((("6a", "6b", "6c"), 0.5), (("6d", "6e", "6f"), 0.9)):
        ref_a, ref_b = reference.max_match(a_small, b_small, eps_small)
        neuron = ("a", int(ref_a[0]))
        candidates, _ = candidate_order(ref_a, ref_b, None)
        seconds, runs = _time(partial(reference.minimal_match, a_small, b_small, eps_small, neuron, candidates), 1)
        row(labels[0], f"oracle v-minimal, one v, {small_neurons}+{small_neurons} neurons, {small_samples} "
                       f"samples, ε = {eps_small} ({ref_a.size}+{ref_b.size} in the max match)", seconds, runs)
        seconds, runs = _time(partial(minimal_match, a_small, b_small, eps_small, neuron), 3 * repeats)
        row(labels[1], "raymatch minimal_match, same v, from arrays", seconds, runs,
            f"≥ 100× faster than row {labels[0]}")
        seconds, runs = _time(partial(minimal_match, fa_small, fb_small, eps_small, neuron), 3 * repeats)
        row(labels[2], "raymatch minimal_match, same v, from cached factors", seconds, runs)
    return rows


def _times(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def _verdicts(rows: list[dict]) -> None:
    by = {r["row"]: r["seconds"] for r in rows}
    checks = {
        3: (by[3] <= 1.5 * by[2] and by[1] / by[3] >= 10,
            f"{by[3] / by[2]:.2f} × row 2, {_times(by[1] / by[3])} faster than row 1"),
        4: (by[4] <= 0.3, f"{by[4]:.3f} s"),
        5: (by[5] <= 60, f"{by[5]:.1f} s"),
        "6b": (by["6a"] / by["6b"] >= 100, f"{_times(by['6a'] / by['6b'])} faster than row 6a"),
        "6c": (True, f"{_times(by['6a'] / by['6c'])} faster than row 6a"),
        "6e": (by["6d"] / by["6e"] >= 100, f"{_times(by['6d'] / by['6e'])} faster than row 6d"),
        "6f": (True, f"{_times(by['6d'] / by['6f'])} faster than row 6d"),
    }
    for r in rows:
        if r["row"] in checks:
            ok, detail = checks[r["row"]]
            r["result"] = f"{'met' if ok else 'MISSED'}: {detail}" if r["target"] else detail
        else:
            r["result"] = ""


def print_table(rows: list[dict], out=None) -> None:
    """Print the match benchmark's rows (to ``out``, default stdout)."""
    out = out or sys.stdout
    header = ("row", "what", "median s", "runs", "target", "result")
    lines = [(str(r["row"]), r["what"], f"{r['seconds']:.3f}", str(r["runs"]), r["target"], r["result"])
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for line in lines:
        print(" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)), file=out)


def bench_extract(n_images: int, arch: str, width: float, repeats: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Extraction into a local store against the bare forward pass; Arrow IPC against Parquet reads."""
    import tempfile

    import torch

    from .extract import extract_model, select_layers
    from .models import build_model
    from .probes import ProbeSpec, RowSample
    from .store import ActivationKey, Store, read_activations, write_activations

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    model = build_model(arch, width=width).eval()
    images = torch.randn(n_images, 3, 32, 32)
    layers = select_layers(model, ["relu"])
    batch = 256

    def forward():
        with torch.no_grad():
            for start in range(0, n_images, batch):
                model(images[start : start + batch])

    rows = []
    seconds, runs = _time(forward, repeats)
    rows.append({"what": f"bare forward pass, {arch} ×{width}, {n_images} CIFAR-sized images", "seconds": seconds,
                 "runs": runs, "baseline": seconds})
    # The paper samples 10,000 of the 40,000 rows of its smallest (2×2) conv layers: the same share here.
    sampled = n_images
    policies = ((f"paper protocol: {sampled:,} rows × 4 repeats per conv layer",
                 RowSample(rows=sampled, repeats=4, seed=0)),
                ("all rows (every image × position)", "all"))
    for label, policy in policies:
        spec = ProbeSpec("cifar10", n_examples=n_images, rows=policy)
        with tempfile.TemporaryDirectory() as folder:
            store = Store(folder)
            run = partial(_extract_fresh, extract_model, store, model, images, spec, layers, batch, iter(range(10**6)))
            seconds, runs = _time(run, repeats)
            stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
        rows.append({"what": f"extract + store {len(layers)} ReLU layers, {label}", "seconds": seconds,
                     "runs": runs, "bytes": stored / (runs + (repeats > 1))})  # one run's worth

    # Which encoding reads faster into a contiguous float32 array?
    matrix = np.maximum(np.random.default_rng(seed).standard_normal((10_000, 512)), 0).astype(np.float32)
    formats = []
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        for fmt in ("arrow", "parquet"):
            key = ActivationKey("bench", fmt, "relu", 0)
            write_activations(store, key, matrix, fmt=fmt)
            seconds, runs = _time(lambda key=key: read_activations(store, key), repeats)
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(folder, key.prefix))
                       for f in fs)
            formats.append({"format": fmt, "seconds": seconds, "runs": runs, "bytes": size})
    return rows, formats


def _extract_fresh(extract_model, store, model, images, spec, layers, batch, counter) -> None:
    """One extraction under a new model id, so nothing is skipped between timed runs."""
    extract_model(store, model, f"bench{next(counter)}", images, spec, layers, batch_size=batch)


def print_extract(rows: list[dict], formats: list[dict], n_images: int) -> None:
    """Print the extraction benchmark's table against the bare forward pass, and the format comparison."""
    base = rows[0]["seconds"]
    print(f"{'what':<90} | {'median s':>8} | runs | {'images/s':>8} | {'MiB':>6} | {'MiB/s':>6} | vs bare forward")
    print("-+-".join("-" * w for w in (90, 8, 4, 8, 6, 6, 16)))
    for row in rows:
        ratio = base / row["seconds"]
        verdict = "" if row is rows[0] else (" (target ≥ 80 %: " + ("met)" if ratio >= 0.8 else "MISSED)"))
        mib = row.get("bytes", 0) / 2**20
        rate = f"{mib / row['seconds']:>6.0f}" if mib else f"{'':>6}"
        size = f"{mib:>6.0f}" if mib else f"{'':>6}"
        print(f"{row['what']:<90} | {row['seconds']:>8.3f} | {row['runs']:>4} | {n_images / row['seconds']:>8.0f} | "
              f"{size} | {rate} | {100 * ratio:.0f} %{verdict}")
    print("\nreading a stored 10,000 × 512 ReLU matrix into a contiguous float32 array:")
    print(f"{'format':<8} | {'median s':>8} | runs | {'MiB':>6}")
    for row in formats:
        print(f"{row['format']:<8} | {row['seconds']:>8.4f} | {row['runs']:>4} | {row['bytes'] / 2**20:>6.1f}")


def bench_pipeline(sizes: tuple[int, ...], n_examples: int, repeats: int = 1) -> list[dict]:
    """Whole studies of M small models on a local Ray: factor + match wall time against in-task compute time.

    Each size runs ``repeats`` times from an empty store; the row reports the run with the median overhead.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    rows = []
    for n_models in sizes:
        runs = sorted((_pipeline_run(n_models, n_examples) for _ in range(repeats)), key=overhead)
        rows.append(runs[len(runs) // 2])
    return rows


def _pipeline_run(n_models: int, n_examples: int) -> dict:
    """One study of ``n_models`` freshly initialised small CNNs, from an empty store."""
    import tempfile

    import torch

    from .engine.run import run_study
    from .models import build_model, checkpoint_bytes
    from .store import Store
    from .study import Study

    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        for seed in range(n_models):
            torch.manual_seed(seed)
            model = build_model("small_cnn", in_channels=1, input_size=8, width=1.0)
            store.write_bytes(f"checkpoints/seed{seed}.safetensors", checkpoint_bytes(model))
        study = Study.from_dict({
            "name": f"bench-{n_models}", "store": {"uri": folder},
            "population": {"glob": "checkpoints/*.safetensors"},
            "architecture": {"name": "small_cnn", "in_channels": 1, "input_size": 8, "width": 1.0},
            "probe": {"dataset": "digits", "split": "all", "n_examples": n_examples, "rows": "all"},
            "layers": ["relu"], "eps": [0.15, 0.2, 0.25, 0.3, 0.5],
            "resources": {"gpus_per_actor": 0, "pair_block": 4, "max_in_flight": 4},
        })
        summary = run_study(study, progress=False)
    stages = [summary["stages"][name] for name in ("factor", "match")]  # the pair work after extraction
    return {"models": n_models, "pairs": n_models * (n_models - 1) // 2,
            "tasks": sum(stage["tasks"] for stage in stages), "wall": sum(stage["seconds"] for stage in stages),
            "in_task": sum(stage["in_task_seconds"] for stage in stages),
            "task_seconds": [stage["task_seconds"] for stage in stages],
            "extract": summary["stages"]["extract"]["seconds"]}


def ideal_wall(task_seconds: list[float], workers: int = 2) -> float:
    """A lower bound on any schedule's wall time for these task durations on ``workers`` CPUs.

    The largest of: the total spread evenly, the longest task, and (more tasks than workers) the
    ``workers``-th and ``workers + 1``-th longest together — two of them must share a CPU.
    """
    times = sorted(task_seconds, reverse=True)
    bound = max(sum(times) / workers, times[0] if times else 0.0)
    if len(times) > workers:
        bound = max(bound, times[workers - 1] + times[workers])
    return bound


def overhead(row: dict) -> float:
    """Wall time of the factor and match stages over the ideal schedules of their tasks, minus one."""
    ideal = sum(ideal_wall(stage) for stage in row["task_seconds"] if stage)
    return row["wall"] / ideal - 1 if ideal else float("nan")


def print_pipeline(rows: list[dict]) -> None:
    """Print the pipeline benchmark's table: stage wall times against a 2-CPU schedule bound."""
    print(f"{'models':>6} | {'pairs':>5} | {'tasks':>5} | {'extract s':>9} | {'factor+match s':>14} | "
          f"{'in-task s':>9} | {'overhead':>8} | {'wall s / pair':>13}")
    for row in rows:
        print(f"{row['models']:>6} | {row['pairs']:>5} | {row['tasks']:>5} | {row['extract']:>9.2f} | "
              f"{row['wall']:>14.2f} | {row['in_task']:>9.2f} | {100 * overhead(row):>7.0f} % | "
              f"{row['wall'] / row['pairs']:>13.3f}")


def main(argv: list[str] | None = None) -> int:
    """``raymatch bench {match,extract,pipeline,population}``: run one benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="raymatch bench", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["match", "extract", "pipeline", "population"],
                        help="which benchmark to run")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (a smoke run; the targets refer to the full sizes)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per fast row (median reported)")
    parser.add_argument("--part", choices=["table", "layer"], action="append",
                        help="population: run only this part (default: both)")
    args = parser.parse_args(argv)
    if args.suite == "population":
        from .bench_population import main as population

        print(f"raymatch bench population — {machine()}")
        sizes = {"n_models": 20, "vgg_models": 3, "n_images": 600, "rows": 2000} if args.quick else {}
        return population(parts=tuple(args.part or ("table", "layer")), **sizes)
    if args.suite == "pipeline":
        print(f"raymatch bench pipeline — {machine()}\n")
        repeats = max(1, min(args.repeats, 3))
        print(f"each size: {repeats} run(s) from an empty store, the run with the median overhead shown; overhead ="
              " wall time of the factor + match stages / ideal_wall(their task times on 2 CPUs) − 1\n")
        print_pipeline(bench_pipeline((4, 8) if args.quick else (4, 8, 16), 360 if args.quick else 1797, repeats))
        return 0
    if args.suite == "extract":
        n_images = 256 if args.quick else 2048
        arch, width = ("vgg11_bn", 0.25) if args.quick else ("vgg11_bn", 0.5)
        print(f"raymatch bench extract — {machine()}\n")
        rows, formats = bench_extract(n_images, arch, width, max(1, args.repeats))
        print_extract(rows, formats, n_images)
        return 0
    if args.quick:
        sizes = {"n_samples": 1000, "n_neurons": 64, "small_samples": 400, "small_neurons": 32}
    else:
        sizes = {"n_samples": 10_000, "n_neurons": 512, "small_samples": 2_000, "small_neurons": 128}
    print(f"raymatch bench match — {machine()}")
    print(f"synthetic ReLU pair: {sizes['n_samples']} samples, {sizes['n_neurons']} + {sizes['n_neurons']} "
          f"neurons (raymatch.match.synthetic.relu_pair, seed 0)\n")
    rows = bench_match(repeats=max(1, args.repeats), **sizes)
    _verdicts(rows)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
