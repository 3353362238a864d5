"""``raymatch bench extract``: extraction into a store against the bare forward pass; Arrow IPC against Parquet."""

from __future__ import annotations

import os
from functools import partial

import numpy as np

from .timing import median_time

__all__ = ["bench_extract", "print_extract"]


def bench_extract(n_images: int, arch: str, width: float, repeats: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Extraction into a local store against the bare forward pass; Arrow IPC against Parquet reads."""
    import tempfile

    import torch

    from ..extract import extract_model, select_layers
    from ..models import build_model
    from ..probes import ProbeSpec, RowSample
    from ..store import ActivationKey, Store, read_activations, write_activations

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
    seconds, runs = median_time(forward, repeats)
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
            seconds, runs = median_time(run, repeats)
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
            seconds, runs = median_time(lambda key=key: read_activations(store, key), repeats)
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
