"""The ``raymatch`` command line."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys

from . import __version__


def demo(args: argparse.Namespace) -> int:
    """Placeholder main job: the maximum match of a synthetic pair over the paper's ε grid."""
    from .engine.tasks import chance_level
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
    chance = chance_level(args.neurons, args.samples)
    print(f"chance ratio of a random vector against one layer's span: √(1 − k/d) ≈ {chance:.3f}")
    return 0


def query(args: argparse.Namespace) -> int:
    """Run one SQL query over a store's results tables and print (or save) the result."""
    from .results import format_frame
    from .results import query as run_query
    from .store import Store

    if args.format == "parquet" and args.output is None and sys.stdout.isatty():
        raise ValueError("--format parquet writes binary: give --output FILE or redirect stdout")
    store = Store.open_existing(args.store, endpoint_url=args.endpoint_url)
    output = format_frame(run_query(store, args.sql), args.format)
    if args.output is not None and isinstance(output, bytes):
        with open(args.output, "wb") as handle:
            handle.write(output)
    elif args.output is not None:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(output)
    elif isinstance(output, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(output)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(output if output.endswith("\n") else output + "\n")
    return 0


def _note(line: str) -> None:
    """One line to stderr, now (``raymatch: …``); nothing when nobody reads stderr any more."""
    try:
        print(f"raymatch: {line}", file=sys.stderr, flush=True)
    except OSError:
        pass


def _connect_ray(address: str | None, num_cpus: int | None, timeout: float | None = None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray; reuse a live session.

    ``address`` has ``timeout`` seconds to answer (:func:`raymatch.engine.connect.connect_ray`).
    """
    from .engine.connect import DEFAULT_CONNECT_TIMEOUT, connect_ray

    connect_ray(address, num_cpus, DEFAULT_CONNECT_TIMEOUT if timeout is None else timeout, on_start=_note)


def _load_checked(args: argparse.Namespace):
    """Read and check a study file; refuse layers given no more samples than neurons unless --allow-few-samples."""
    from .study import StudyError, few_samples, load_study

    study = load_study(args.study)
    few = few_samples(study)
    if few and not args.allow_few_samples:
        raise StudyError([f"layers: {layer} has {neurons} neurons but the probe gives it only {samples} samples, so "
                          f"every neuron matches trivially: raise {field} (or pass --allow-few-samples)"
                          for layer, neurons, samples, field in few])
    for layer, neurons, samples, _ in few:
        print(f"raymatch: warning: layer {layer} has {neurons} neurons and only {samples} samples: its rows match "
              "trivially (chance = 0)", file=sys.stderr)
    return study


def run(args: argparse.Namespace) -> int:
    """Run a study file: training, extraction, then every (pair block × layer × repeat) task; skip what is stored."""
    from .engine.run import run_study

    study = _load_checked(args)
    summary = run_study(study, progress=None, retry_failed=args.retry_failed,
                        connect=lambda: _connect_ray(args.address, args.num_cpus, args.connect_timeout))  # inputs good
    print(f"study {summary['study']} (config {summary['config_hash']}, run {summary['run_id']}) finished in "
          f"{summary['seconds']:.1f} s")
    print(f"{'stage':<8} {'computed':>9} {'skipped':>8} {'failed':>7} {'seconds':>8}")
    for stage, counts in summary["stages"].items():
        print(f"{stage:<8} {counts['computed']:>9} {counts['skipped']:>8} {counts['failed']:>7} "
              f"{counts['seconds']:>8.1f}")
    match = summary["stages"].get("match", {})
    failed_tasks = sum(counts["failed"] for counts in summary["stages"].values())
    if "match" in summary["stages"] and not args.quiet:
        _print_similarity(study)
    if match.get("failed_rows"):
        print(f"{match['failed_rows']} result rows failed; see: raymatch query STORE "
              "\"SELECT * FROM matches WHERE status = 'failed'\"")
    if match.get("failed_measures"):
        print(f"{match['failed_measures']} measures rows failed; see: raymatch query STORE "
              "\"SELECT * FROM measures WHERE status = 'failed'\"")
    for counts in summary["stages"].values():
        for error in counts.get("errors", []):
            print(f"failed task: {error}", file=sys.stderr)
    return 1 if failed_tasks else 0


def _print_similarity(study) -> None:
    """The layer × ε table of mean similarity over pairs (the null baseline beside it), after a run."""
    from .report import format_similarity_table, similarity_table
    from .results import load

    matches = load(study.store.open(), "matches", study=study.name)
    if not matches.empty:
        null = ", the null baselines beside" if study.null_baseline else ""
        print(f"\nmean maximum-match similarity over pairs (layer × ε{null}):")
        print(format_similarity_table(similarity_table(matches, layers=list(study.layer_names))))


def train(args: argparse.Namespace) -> int:
    """Train (only) the population of a study file: its seeds and the null baseline's untrained models."""
    from .engine.run import run_study
    from .study import load_study

    study = load_study(args.study)
    if study.population.training is None and "untrained" not in study.null_baseline:
        raise ValueError(f"{args.study}: the study trains nothing (no population.training, no null_baseline)")
    counts = run_study(study, progress=None, only="train",
                       connect=lambda: _connect_ray(args.address, args.num_cpus, args.connect_timeout)
                       )["stages"]["train"]
    print(f"study {study.name}: trained {counts['computed']} model(s), {counts['skipped']} already stored, "
          f"{counts['failed']} failed ({counts['seconds']:.1f} s)")
    return 1 if counts["failed"] else 0


def import_activations(args: argparse.Namespace) -> int:
    """Import a study's activations (``population.activations``) into its store, and nothing else."""
    from .engine.executors import import_population
    from .engine.planning import make_plan
    from .results import check_store_version
    from .study import load_study

    study = load_study(args.study)
    if study.population.activations is None:
        raise ValueError(f"{args.study}: the study imports no activations (it has no population.activations)")
    store = study.store.open()
    if not store.is_local:
        store.check(write=False)
    planned = make_plan(study, store)["extract"]  # every file read and checked before anything is written
    store.check()
    check_store_version(store)
    outcomes = import_population(study, store, planned.tasks)
    for outcome in outcomes:
        outcome.reraise()
    layers = sum(len(outcome.item.layers) for outcome in outcomes)
    print(f"study {study.name}: imported {len(outcomes)} model(s) ({layers} model × layer matrices) into "
          f"{store.uri}; {planned.done} model(s) already stored")
    return 0


def status(args: argparse.Namespace) -> int:
    """Print a store's latest runs, what each recorded study still has to do, and the failed rows."""
    from .engine.status import status_lines, store_status
    from .store import Store

    store = Store.open_existing(args.store, endpoint_url=args.endpoint_url)
    print("\n".join(status_lines(store_status(store, runs=args.runs), store.uri)))
    return 0


def gc(args: argparse.Namespace) -> int:
    """List (or with --yes delete) a store's old temporary objects and what no recorded study references."""
    from .engine.gc import collect_garbage, garbage_lines, parse_age, plan_garbage, size_text
    from .store import Store

    older_than = parse_age(args.older_than)
    store = Store.open_existing(args.store, endpoint_url=args.endpoint_url)
    found = plan_garbage(store, older_than=older_than)
    print("\n".join(garbage_lines(found, store.uri, args.older_than)))
    if not args.yes:
        print("dry run: nothing deleted (--yes deletes the objects listed)" if found.objects else "nothing to delete")
        return 0
    count, size = collect_garbage(store, found)
    print(f"deleted {count} object(s) ({size_text(size)})")
    return 0


def plan(args: argparse.Namespace) -> int:
    """Print, per stage, how much of a study is stored and how much is left, without running anything."""
    from .engine.planning import make_plan

    study = _load_checked(args)
    store = study.store.open()
    if not store.is_local:  # an unreachable endpoint, a missing bucket, refused credentials: said as such
        store.check(write=False)
    planned = make_plan(study, store)
    counts, known = planned.counts(), planned.known()
    print(f"study {study.name} (config {study.config_hash})")
    print(f"{'stage':<8} {'done':>6} {'to do':>6}")
    for stage, (done, todo) in counts.items():
        print(f"{stage:<8} {done:>6} {todo:>6}" if known[stage] else f"{stage:<8} {'?':>6} {'?':>6}")
    waiting = [stage for stage, is_known in known.items() if not is_known]
    if waiting:
        print(f"({', '.join(waiting)}: counted once the stages before them have stored what they need)")
    return 0


def schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of a study file, for an editor's YAML language server."""
    from .study import study_json_schema

    print(json.dumps(study_json_schema(), indent=2))
    return 0


def _user_error(error: BaseException) -> str:
    """The first line of an error's message, for a one-line report.

    For an error raised in a Ray task or actor, the first line of its cause: the wrapper's names only the remote
    function.
    """
    ray = sys.modules.get("ray")
    if ray is not None and isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        error = error.cause
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds; got {text!r}")
    return value


def _add_ray_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    command.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    command.add_argument("--connect-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                         help="how long the cluster at --address has to answer before the command fails (default 30)")


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes: ``--debug`` and ``--verbose`` (before or after the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    common.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                        help="log run and stage events (the 'raymatch' logger) to stderr")
    return common


def _store_options() -> argparse.ArgumentParser:
    """``STORE [--endpoint-url URL]``: the subcommands that read an existing store (query, status, report)."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("store", metavar="STORE", help="store URI: a local path, file://… or s3://bucket/prefix")
    store.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint (for S3-compatible stores)")
    return store


def _study_options(verb: str) -> argparse.ArgumentParser:
    """``STUDY.yaml [--allow-few-samples]``: the subcommands that read a study file (run, plan)."""
    study = argparse.ArgumentParser(add_help=False)
    study.add_argument("study", metavar="STUDY.yaml")
    study.add_argument("--allow-few-samples", action="store_true",
                       help=f"{verb} layers the probe gives no more samples than neurons (they match trivially)")
    return study


def _log_to_stderr(verbose: bool) -> None:
    """Run and stage events of the ``raymatch`` logger to stderr with ``--verbose``; warnings only otherwise."""
    logger = logging.getLogger("raymatch")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("raymatch: %(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    common, store = _common_options(), _store_options()
    parser = argparse.ArgumentParser(prog="raymatch", description="Neuron-activation subspace matches on Ray.",
                                     parents=[common])
    parser.add_argument("--version", action="version", version=f"raymatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="run a benchmark and print its table", add_help=False)
    bench.set_defaults(run=None)

    run_demo = commands.add_parser("demo", help="match a synthetic pair over the paper's ε grid", parents=[common])
    run_demo.add_argument("--samples", type=int, default=5000)
    run_demo.add_argument("--neurons", type=int, default=256)
    run_demo.add_argument("--seed", type=int, default=0)
    run_demo.set_defaults(run=demo)

    run_query = commands.add_parser(
        "query", help="run SQL over a store's results (curves, matches, matches_at(eps), universality(eps), cka, "
                      "cross_curves, simple_matches, runs, models)",
        description="Run one DuckDB SQL query over the results of a store: the views curves, matches (at each "
                    "study's ε grid), the table macros matches_at(eps) (any ε, from the stored curves) and "
                    "universality(eps) (per neuron: in how many of its model's pairs it is matched), cka, "
                    "cross_curves and cross_matches (cross_layers), simple_matches, runs, models, tasks, studies "
                    "and curves_all (every configuration). S3 credentials come from the standard AWS environment.",
        parents=[store, common])
    run_query.add_argument("sql", metavar="SQL", help="the query, e.g. 'SELECT layer, avg(similarity) FROM matches "
                                                     "GROUP BY layer'")
    run_query.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table",
                           help="output format (default: table)")
    run_query.add_argument("--output", metavar="FILE", help="write the result to FILE instead of stdout")
    run_query.set_defaults(run=query)

    run_study_cmd = commands.add_parser("run", help="run a study file (YAML) on Ray",
                                        parents=[_study_options("run"), common])
    _add_ray_arguments(run_study_cmd)
    run_study_cmd.add_argument("--quiet", action="store_true", help="no similarity table after the run")
    run_study_cmd.add_argument("--retry-failed", action="store_true",
                               help="compute again the pairs whose stored rows failed (default: failed rows are done)")
    run_study_cmd.set_defaults(run=run)

    train_cmd = commands.add_parser("train", help="train a study's population (population.training, null baseline)",
                                    parents=[common])
    train_cmd.add_argument("study", metavar="STUDY.yaml")
    _add_ray_arguments(train_cmd)
    train_cmd.set_defaults(run=train)

    from . import report as report_cmd

    report_parser = commands.add_parser(
        "report", help="figures (PNG) and summary.md from a store's results tables",
        description="Write the paper's figures and a short markdown summary of one study's results.",
        parents=[store, common])
    report_cmd.add_arguments(report_parser)
    report_parser.set_defaults(run=report_cmd.command)

    from .report import evaluation as evaluation_cmd

    evaluate_parser = commands.add_parser(
        "evaluate-measures", help="what each similarity measure sees on a study's trained population (Ding et al.)",
        description="Run Ding et al.'s (2021) tests on a study's trained models from the store: principal-component "
                    "deletion, depth and seed-vs-layer specificity, for every standard measure and the subspace "
                    "match at each ε; print the measure × test table and store it for raymatch report.",
        parents=[store, common])
    evaluation_cmd.add_arguments(evaluate_parser)
    evaluate_parser.set_defaults(run=evaluation_cmd.command)

    import_cmd = commands.add_parser("import", help="import a study's activations (population.activations) only",
                                     parents=[common])
    import_cmd.add_argument("study", metavar="STUDY.yaml")
    import_cmd.set_defaults(run=import_activations)

    status_cmd = commands.add_parser("status", help="latest runs, what each study still has to do, failed rows",
                                     parents=[store, common])
    status_cmd.add_argument("--runs", type=int, default=10, help="how many of the latest runs to show (default 10)")
    status_cmd.set_defaults(run=status)

    gc_cmd = commands.add_parser(
        "gc", help="list (--yes: delete) old temporary objects and objects no recorded study references",
        description="Clean up a store: temporary objects older than --older-than, and activations, factors and "
                    "trained checkpoints that no recorded study (studies/*.json) references, and results-table files "
                    "that compaction replaced and no table version younger than --older-than uses. A dry run unless "
                    "--yes; nothing is deleted while a run may still write (a 'running' run with a fresh "
                    "heartbeat).", parents=[store, common])
    gc_cmd.add_argument("--older-than", default="1h", metavar="AGE",
                        help="temporary objects at least this old, and table files replaced at least this long ago "
                             "(rounded up to hours) (45s, 30m, 1h, 2d; default 1h)")
    gc_cmd.add_argument("--yes", action="store_true", help="delete what is listed (default: list only)")
    gc_cmd.set_defaults(run=gc)

    plan_cmd = commands.add_parser("plan", help="count what a study has stored and what is left, per stage",
                                   parents=[_study_options("plan"), common])
    plan_cmd.set_defaults(run=plan)

    schema_cmd = commands.add_parser("schema", help="print the JSON Schema of a study file (for editors)",
                                     parents=[common])
    schema_cmd.set_defaults(run=schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``raymatch`` command: parse ``argv`` and run the subcommand; returns the exit status.

    A reader of stdout that goes away (``raymatch plan … | head``) ends the command quietly, status 0; an
    interrupted run keeps its 130 when nobody reads its output any more (``| tee`` interrupted with it).
    """
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    args.debug, args.verbose = getattr(args, "debug", False), getattr(args, "verbose", False)
    _log_to_stderr(args.verbose)
    try:
        code = _command(parser, args, rest)
    except BrokenPipeError:  # whoever read stdout is gone: what is left unprinted is not wanted
        code = 0
    return _finished(code)


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace, rest: list[str]) -> int:
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        return args.run(args)
    from .config import ConfigError  # (not raymatch.study, which imports torch: query and status start fast)

    try:
        return args.run(args)
    except BrokenPipeError:
        raise
    except KeyboardInterrupt as error:  # SIGINT/SIGTERM: a run records itself as cancelled
        if args.debug:
            raise
        from .engine.cancel import RunCancelled

        _note(f"{error}: rows computed so far are stored; rerun to finish" if isinstance(error, RunCancelled)
              else "interrupted")
        return 130
    except ConfigError as error:  # every problem of the file, one per line (a StudyError)
        if args.debug:
            raise
        _note("\n".join([f"error: {args.study}: {len(error.problems)} problem(s)",
                         *(f"  {problem}" for problem in error.problems)]))
        return 2
    except (ValueError, OSError) as error:
        if args.debug:
            raise
        _note(f"error: {_user_error(error)}")
        return 2


def _finished(code: int) -> int:
    """Flush stdout before the interpreter does: a closed pipe then changes nothing (Python would exit 120).

    Ray's copy of colorama resets the terminal's colours at exit, a stray ``ESC[0m`` after the last line: not
    wanted either (nothing here leaves a colour set).
    """
    try:
        sys.stdout.flush()
    except OSError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    colorama = sys.modules.get("colorama.initialise")
    if colorama is not None:
        atexit.unregister(colorama.reset_all)
    return code


if __name__ == "__main__":
    sys.exit(main())
