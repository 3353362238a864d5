"""The ``raymatch`` command line."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import __version__


def demo(args: argparse.Namespace) -> int:
    """Placeholder main job: the maximum match of a synthetic pair over the paper's ε grid."""
    from .match import match_curve
    from .match.synthetic import relu_pair

    A, B = relu_pair(args.samples, args.neurons, args.neurons, seed=args.seed)
    curve = match_curve(A, B)
    print(f"synthetic ReLU pair: {args.samples} samples, {args.neurons} + {args.neurons} neurons, seed {args.seed}")
    print(f"maximal ε (every live neuron matched): {curve.max_epsilon:.4f}")
    print(f"{'eps':>6} {'|X*|':>6} {'|Y*|':>6} {'similarity':>10}")
    for eps in (0.0, 0.15, 0.2, 0.25, 0.3, 0.5):
        m = curve.at(eps)
        print(f"{eps:>6.2f} {m.size_a:>6d} {m.size_b:>6d} {m.similarity:>10.4f}")
    chance = np.sqrt(max(0.0, 1 - args.neurons / args.samples))
    print(f"chance ratio of a random vector against one layer's span: √(1 − k/d) ≈ {chance:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raymatch", description="Neuron-activation subspace matches on Ray.")
    parser.add_argument("--version", action="version", version=f"raymatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="run a benchmark and print its table", add_help=False)
    bench.set_defaults(run=None)

    run_demo = commands.add_parser("demo", help="match a synthetic pair over the paper's ε grid")
    run_demo.add_argument("--samples", type=int, default=5000)
    run_demo.add_argument("--neurons", type=int, default=256)
    run_demo.add_argument("--seed", type=int, default=0)
    run_demo.set_defaults(run=demo)

    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
