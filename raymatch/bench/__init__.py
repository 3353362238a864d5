"""Benchmarks, printed as tables with the baseline measured in the same process.

Run ``raymatch bench match`` (or ``python -m raymatch.bench match``); one module per benchmark:
:mod:`.match`, :mod:`.extract`, :mod:`.pipeline`, :mod:`.population`, :mod:`.lm`, :mod:`.gpu`. Targets are stated in
``docs/benchmarks.md``; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import sys

from .blocks import bench_blocks, print_blocks
from .extract import bench_extract, print_extract
from .match import bench_match, judge, print_table
from .pipeline import bench_pipeline, ideal_wall, print_pipeline
from .timing import machine

__all__ = ["bench_blocks", "bench_extract", "bench_match", "bench_pipeline", "ideal_wall", "machine", "main"]


def main(argv: list[str] | None = None) -> int:
    """``raymatch bench {match,extract,pipeline,population,lm,gpu}``: run one benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="raymatch bench", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["match", "extract", "pipeline", "population", "lm", "gpu"],
                        help="which benchmark to run")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (a smoke run; the targets refer to the full sizes)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per fast row (median reported)")
    parser.add_argument("--part", choices=["table", "layer", "core", "blocks", "measures"], action="append",
                        help="run only this part: population: table, layer; match: core (rows 1–6), blocks (rows 7–8 "
                             "of the batched kernel), measures (row 9: the match task with every standard measure); "
                             "default: all of the suite's")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="match: where the batched kernel and its floor run (default: cpu); gpu: the device "
                             "checked against the CPU (default: cuda; cpu tests the script itself)")
    parser.add_argument("--models", type=int, default=None,
                        help="population: models of the table scale (default 200; 20 with --quick)")
    parser.add_argument("--kernel", choices=["old", "batched", "both"], default="both",
                        help="population: the match kernels of the table scale's local runs (default both: the "
                             "batched kernel's study, then the old one-pair kernel's on the same stored factors)")
    parser.add_argument("--s3", choices=["run", "copy", "skip"], default="run",
                        help="population: the table scale on moto S3: a whole run (default), the local tables "
                             "copied there and only the queries timed, or nothing")
    parser.add_argument("--out", default=None, help="gpu: the folder of its table (default bench-gpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="match: torch threads of the batched kernel's GEMMs and the floor (default 1: one per "
                             "task, as Ray workers run; the peels run on one thread)")
    args = parser.parse_args(argv)
    if args.suite == "lm":  # language-model token rows, padding and the match stage (raymatch/bench/lm.py)
        from .lm import main as lm

        return lm(["--repeats", str(max(1, min(args.repeats, 3)))] + (["--quick"] if args.quick else []))
    if args.suite == "population":
        from .population import main as population

        if not set(args.part or ()) <= {"table", "layer"}:
            print("raymatch bench population: --part must be table or layer", file=sys.stderr)
            return 2
        if args.models is not None and args.models < 2:
            print("raymatch bench population: --models must be at least 2", file=sys.stderr)
            return 2
        print(f"raymatch bench population — {machine()}")
        sizes = {"n_models": 20, "vgg_models": 3, "n_images": 600, "rows": 2000} if args.quick else {}
        if args.models is not None:
            sizes["n_models"] = args.models
        kernels = ("batched", "old") if args.kernel == "both" else (args.kernel,)
        return population(parts=tuple(args.part or ("table", "layer")), kernels=kernels, s3=args.s3, **sizes)
    if args.suite == "gpu":
        from .gpu import main as gpu

        return gpu(device=args.device or "cuda", out=args.out or "bench-gpu", quick=args.quick)
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
    return _match(args, sizes)


def _match(args, sizes: dict) -> int:
    """``raymatch bench match``: rows 1–6 (the match core), rows 7–8 (the batched kernel), row 9 (the measures)."""
    import torch

    known = {"core", "blocks", "measures"}
    parts = set(args.part or known)
    if not parts <= known:
        print(f"raymatch bench match: --part must be core, blocks or measures; got {sorted(parts - known)}",
              file=sys.stderr)
        return 2
    args.device = args.device or "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("raymatch bench match: --device cuda, but torch sees no CUDA device (a CPU-only torch build?)",
              file=sys.stderr)
        return 2
    print(f"raymatch bench match — {machine()}")
    if "core" in parts:
        print(f"synthetic ReLU pair: {sizes['n_samples']} samples, {sizes['n_neurons']} + {sizes['n_neurons']} "
              f"neurons (raymatch.match.synthetic.relu_pair, seed 0)\n")
        rows = bench_match(repeats=max(1, args.repeats), **sizes)
        judge(rows)
        print_table(rows)
    if "blocks" in parts:
        torch.set_num_threads(max(1, args.threads))
        device = torch.device(args.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"\nrows 7–8: milliseconds per curve; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
              f"device {name}; today's kernel: numpy/scipy, one BLAS thread")
        print_blocks(bench_blocks(quick=args.quick, repeats=max(1, min(args.repeats, 3)), device=device))
    if "measures" in parts:
        from .measure_stage import STAGE_MEASURES, bench_measure_stage, print_measure_stage

        repeats = max(1, min(args.repeats, 5))
        print(f"\nrow 9: the match task (raymatch.engine.tasks.match_task, local store) with measures "
              f"[max_match, cka] and with {', '.join(STAGE_MEASURES)} too; median of {repeats} rounds")
        print_measure_stage(bench_measure_stage(quick=args.quick, repeats=repeats), repeats=repeats)
    return 0
