"""``raymatch bench gpu``: the prepared check of a GPU, in one run of a few minutes, one table at the end.

On a machine with one CUDA GPU and a CUDA build of torch (README, "GPUs"), it:

1. checks that torch sees CUDA (and names the build, the driver's device and its memory);
2. runs the oracle cases of the core on the GPU and compares their maximum matches at ε = 0 and the paper's grid
   with the CPU's (the same batched kernel on the CPU, and the float64 oracle :mod:`raymatch.match.reference`);
3. times the batched kernel at table scale (blocks of 128- and 64-neuron layers) and at paper size (512 + 512
   neurons, 10,000 samples) on the GPU and on the CPU in the same run (:func:`~raymatch.bench.blocks.bench_blocks`);
4. runs a small study with GPU extraction actors and GPU match actors, and the same pairs again on CPUs from the
   same stored activations, and compares the two studies' rows;

and writes one table, to stdout and to ``<out>/bench-gpu.md``. ``--device cpu`` runs every step with the CPU in
the GPU's place (what CI does, so that the script is known to work before a GPU is there): the study then asks
for GPU actors all the same, and where the cluster has no GPU (or torch no CUDA) they fall back to CPUs, as a
study does. The exit status is 0 when every check passed, 1 when one failed, 2 when ``--device cuda`` finds no
CUDA device.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..match import EXACT_TOL, exact_tolerance, factor, match_curves, reference
from ..match.synthetic import relu_pair
from .blocks import bench_blocks, differing_sets
from .timing import PAPER_EPS, machine

__all__ = ["main", "oracle_cases", "small_study"]

#: ε at which sets are compared.
GRID = (0.0, *PAPER_EPS)
#: The whole check should take at most this long on one GPU (issue 23).
BUDGET_SECONDS = 300


def _cases(seed: int = 0) -> dict[str, tuple[list[np.ndarray], float, bool]]:
    """The core's oracle cases: name → (layers, exact tolerance, whether the float64 oracle applies)."""
    rng = np.random.default_rng(seed)
    planted = [relu_pair(600, 24, 24, seed=10 + s, shared_fraction=0.5)[s % 2] for s in range(4)]
    gaussian = [rng.standard_normal((400, width)) for width in (12, 16, 20, 16)]
    dead = [layer.copy() for layer in planted[:3]]
    for i, layer in enumerate(dead):
        layer[:, [i, 5 + i]] = 0.0
    base = np.maximum(rng.standard_normal((500, 20)), 0).astype(np.float64)
    twins = [(base[:, rng.permutation(20)] * (1 + 3e-8 * rng.standard_normal((500, 20)))).astype(np.float32)
             for _ in range(4)]
    few = [rng.standard_normal((30, 40)) for _ in range(3)]  # more neurons than samples: the one-pair kernel
    duplicated = [np.hstack([layer, layer[:, :3]]) for layer in gaussian[:3]]
    return {"planted ReLU groups, 600 × 24": (planted, EXACT_TOL, True),
            "Gaussian, widths 12-20": (gaussian, EXACT_TOL, True),
            "dead neurons": (dead, EXACT_TOL, True),
            "permuted float32 twins (exact at 2^-13)": (twins, exact_tolerance(np.float32), False),
            "fewer samples than neurons": (few, EXACT_TOL, True),
            "duplicated neurons": (duplicated, EXACT_TOL, True)}


def _oracle_differences(layers, pairs_index, curves) -> int:
    """(pair, ε, side) at which a curve's maximum match differs from the float64 oracle's (Algorithm 1)."""
    differing = 0
    for (i, j), curve in zip(pairs_index, curves, strict=True):
        A, B = layers[i].astype(np.float64), layers[j].astype(np.float64)
        for eps in GRID:
            want = reference.max_match(A, B, eps)
            got = curve.at(eps)
            for mine, theirs, critical in ((got.a, want[0], curve.critical_a), (got.b, want[1], curve.critical_b)):
                changed = np.setxor1d(mine, theirs)
                # a neuron whose critical ε is within rounding of ε may fall on either side
                changed = [n for n in changed if abs(critical[n] - max(eps, EXACT_TOL)) > 1e-9]
                differing += bool(changed)
    return differing


def oracle_cases(device: torch.device) -> list[dict]:
    """Each oracle case's block on ``device`` against the CPU's batched kernel and the float64 oracle."""
    rows = []
    for name, (layers, tol, with_oracle) in _cases().items():
        factors = [factor(layer) for layer in layers]
        index = [(i, j) for i in range(len(factors)) for j in range(i + 1, len(factors))]
        pairs = [(factors[i], factors[j]) for i, j in index]
        on_device = match_curves(pairs, exact_tol=tol, device=device)
        on_cpu = match_curves(pairs, exact_tol=tol)
        moved = max(float(np.abs(g[np.isfinite(c)] - c[np.isfinite(c)]).max(initial=0.0))  # dead: inf in both
                    for d, cpu in zip(on_device, on_cpu, strict=True)
                    for g, c in ((d.critical_a, cpu.critical_a), (d.critical_b, cpu.critical_b)))
        row = {"case": name, "pairs": len(pairs), "max_difference": moved,
               "vs_cpu": len(differing_sets(on_device, on_cpu, GRID)),
               "vs_oracle": _oracle_differences(layers, index, on_device) if with_oracle else None}
        if name.startswith("permuted"):  # twins: every neuron in the exact match
            row["exact_twins"] = all(curve.at(0.0).similarity == 1.0 for curve in on_device)
        row["ok"] = row["vs_cpu"] == 0 and row["vs_oracle"] in (0, None) and row.get("exact_twins", True)
        rows.append(row)
    return rows


def _checkpoints(store, n_models: int) -> None:
    """``n_models`` randomly initialised ``small_cnn`` for the 8×8 digits, under ``checkpoints/``."""
    from ..models import build_model, checkpoint_bytes

    for seed in range(n_models):
        torch.manual_seed(seed)
        model = build_model("small_cnn", in_channels=1, input_size=8)
        store.write_bytes(f"checkpoints/seed{seed}.safetensors", checkpoint_bytes(model))


def _study_config(root: str, name: str, gpus: float, match_gpus: float) -> dict:
    return {"name": name, "store": {"uri": root}, "population": {"glob": "checkpoints/*.safetensors"},
            "architecture": {"name": "small_cnn", "in_channels": 1, "input_size": 8},
            "probe": {"dataset": "digits", "split": "test", "rows": "all"}, "layers": ["relu"], "eps": list(PAPER_EPS),
            "resources": {"gpus_per_actor": gpus, "match_gpus_per_actor": match_gpus, "pair_block": 4}}


def small_study(n_models: int = 6) -> dict:
    """A study on GPU extraction and GPU match actors, then the same pairs on CPUs; where each ran, rows compared."""
    from ..engine.run import run_study
    from ..study import Study
    from .scale import compare_kernels

    with tempfile.TemporaryDirectory() as folder:
        root = str(Path(folder) / "store")
        on_gpu = Study.from_dict(_study_config(root, "gpu-actors", 1, 0.5))
        _checkpoints(on_gpu.store.open(), n_models)
        started = time.perf_counter()
        gpu_summary = run_study(on_gpu, progress=False)
        gpu_seconds = time.perf_counter() - started
        on_cpu = Study.from_dict(_study_config(root, "cpu-workers", 0, 0))
        started = time.perf_counter()
        cpu_summary = run_study(on_cpu, progress=False)  # the activations are stored: its match stage alone
        cpu_seconds = time.perf_counter() - started
        store = on_gpu.store.open()
        compared = compare_kernels(store, store, on_gpu.name, GRID, baseline=on_cpu.name)
    stages = gpu_summary["stages"]
    return {"models": n_models, "pairs": stages["match"]["computed"], "seconds": gpu_seconds,
            "cpu_seconds": cpu_seconds, "extract_devices": stages["extract"].get("devices", {}),
            "match_devices": stages["match"].get("devices", {}),
            "match_stage": stages["match"]["seconds"], "cpu_match_stage": cpu_summary["stages"]["match"]["seconds"],
            "failed": stages["match"]["failed"] + stages["match"].get("failed_rows", 0), **compared}


def _device_line(device: torch.device) -> str:
    cuda = torch.version.cuda or "no CUDA"
    if device.type != "cuda":
        return f"torch {torch.__version__} ({cuda}); CPU in the GPU's place (--device cpu)"
    props = torch.cuda.get_device_properties(device)
    return (f"torch {torch.__version__} (CUDA {cuda}); {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"{torch.cuda.device_count()} device(s)")


def _table(cuda_line: str, cases: list[dict], blocks: dict, study: dict, device: torch.device,
           seconds: float) -> list[tuple[str, str, str]]:
    """The rows of the one table: (check, measured, result)."""
    expected = "cuda" if device.type == "cuda" else "cpu"
    lines = [("torch sees the device", cuda_line, "ok")]
    for row in cases:
        oracle = "—" if row["vs_oracle"] is None else str(row["vs_oracle"])
        twins = f", exact twins: {row['exact_twins']}" if "exact_twins" in row else ""
        lines.append((f"oracle case: {row['case']} ({row['pairs']} pairs)",
                      f"sets ≠ CPU: {row['vs_cpu']}, ≠ oracle: {oracle}, |Δ critical ε| ≤ {row['max_difference']:.1e}"
                      f"{twins}", "ok" if row["ok"] else "FAILED"))
    cpu, dev = blocks["cpu"], blocks[expected]
    for mine, base in zip(dev, cpu, strict=True):
        per = {name: 1e3 * value / mine["curves"] for name, value in
               (("gpu", mine["batched"]), ("floor", mine["floor"]))}
        cpu_ms = 1e3 * base["batched"] / base["curves"]
        today = 1e3 * base["today"] / base["curves"]
        lines.append((f"row {mine['row']}: {mine['shape']}",
                      f"ms per curve: today's (CPU) {today:.3f}, batched CPU {cpu_ms:.3f}, batched {expected} "
                      f"{per['gpu']:.3f} (GEMM floor {per['floor']:.3f}): {cpu_ms / per['gpu']:.1f}× the CPU",
                      "timed"))
    def where(devices: dict) -> str:
        return ", ".join(f"{name} × {count} tasks" for name, count in devices.items()) or "CPU workers"

    placement = (f"extract on {where(study['extract_devices'])}, match on {where(study['match_devices'])}; "
                 f"{study['pairs']} curves, match stage {study['match_stage']:.1f} s (CPU workers: "
                 f"{study['cpu_match_stage']:.1f} s)")
    if device.type == "cuda":
        placed = set(study["match_devices"]) == {"cuda"} and set(study["extract_devices"]) == {"cuda"}
    else:  # GPU actors computing on their CPUs, or CPU workers where the cluster has no GPU
        placed = set(study["match_devices"]) <= {"cpu"} and set(study["extract_devices"]) <= {"cpu"}
    lines.append((f"study on GPU extraction and match actors ({study['models']} small_cnn, digits)", placement,
                  "ok" if placed and not study["failed"] else "FAILED"))
    same = study["same_pairs"] and study["differing_sets"] == 0
    lines.append(("… its rows against the same pairs on CPU workers",
                  f"same pairs: {study['same_pairs']}, sets ≠: {study['differing_sets']}, |Δ critical ε| ≤ "
                  f"{study['max_difference']:.1e}", "ok" if same else "FAILED"))
    lines.append(("whole check", f"{seconds:.0f} s", "ok" if seconds <= BUDGET_SECONDS or device.type != "cuda"
                  else f"over {BUDGET_SECONDS} s"))
    return lines


def _render(lines: list[tuple[str, str, str]]) -> str:
    header = ("check", "measured", "result")
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(3)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |" for line in lines]
    return "\n".join(out)


def main(device: str = "cuda", out: str = "bench-gpu", quick: bool = False) -> int:
    """Run the check on ``device`` and write its table; the exit status says whether every check passed."""
    import ray

    started = time.perf_counter()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"raymatch bench gpu: torch {torch.__version__} ({build}) sees no CUDA device; install a CUDA build of "
              "torch (README, \"GPUs\") or run with --device cpu", file=sys.stderr)
        return 2
    print(f"raymatch bench gpu — {machine()}\n{_device_line(device)}", flush=True)
    torch.set_num_threads(1)  # one thread per task, as a Ray worker runs; the GEMMs of the GPU do not care
    cases = oracle_cases(device)
    print(f"oracle cases: {sum(row['ok'] for row in cases)} of {len(cases)} agree", flush=True)
    blocks = {"cpu": bench_blocks(quick=quick, repeats=2 if quick else 3, device=torch.device("cpu"))}
    if device.type == "cuda":
        blocks["cuda"] = bench_blocks(quick=quick, repeats=3, device=device)
    print("blocks timed", flush=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    study = small_study(4 if quick else 6)
    lines = _table(_device_line(device), cases, blocks, study, device, time.perf_counter() - started)
    table = _render(lines)
    print("\n" + table)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench-gpu.md").write_text(f"raymatch bench gpu — {machine()}\n\n{table}\n", encoding="utf-8")
    print(f"\nwritten: {folder / 'bench-gpu.md'}")
    return 0 if all(line[2] in ("ok", "timed") for line in lines) else 1
