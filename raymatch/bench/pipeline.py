"""``raymatch bench pipeline``: whole studies of M small models, stage wall time against a 2-CPU schedule bound."""

from __future__ import annotations

import os

__all__ = ["bench_pipeline", "ideal_wall", "overhead", "print_pipeline"]


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

    from ..engine.run import run_study
    from ..models import build_model, checkpoint_bytes
    from ..store import Store
    from ..study import Study

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
