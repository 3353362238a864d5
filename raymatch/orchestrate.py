"""Planning and running a study: training, extraction, then the pair tasks, everything already stored skipped.

Stages (DESIGN.md §2): training per seed (only for a ``population.training`` study, and the null baseline's
untrained models), extraction per model (the actor pool), then one task per (block of pairs, layer, repeat)
computing the whole ε grid from one ``match_curve`` and writing its own result file
``results/matches/<task id>.parquet``; simple-match and CKA tasks likewise. A stage reads only what the one before
it stored, so a rerun — or a run on another machine — computes exactly what is missing.

Each run records itself in the ``runs`` table (``results/runs/<run id>.parquet``, written when it starts and
replaced when it ends) and the study's configuration in ``studies/<name>.json``, from which ``raymatch status``
and ``raymatch report`` work without the study file.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import itertools
import json
import secrets
import socket
import time
from dataclasses import dataclass, field

import pyarrow.compute as pc

from . import __version__
from .extract import ExtractionJob
from .extract.extractor import read_checkpoint, stored_repeats
from .extract.layers import select_layers
from .models import checkpoint_id
from .models.checkpoint import check_checkpoint
from .pairs import (
    FactorTask,
    MatchTask,
    SimpleTask,
    block_tasks,
    cka_and_write,
    factor_and_store,
    match_and_write,
    simple_and_write,
)
from .results import write_rows
from .store import ActivationKey, Store, StoreError
from .store.factors import FACTOR_VERSION, factor_prefix
from .study import pair_positions, untrained_prefix

STAGES = ("train", "extract", "factor", "match", "simple", "cka")


@dataclass
class Population:
    """One population of a study: its checkpoint keys (in population order) and the seeds still to train."""

    name: str  # "trained" or "untrained"
    checkpoints: list[str]
    reference: int | None = None  # position of the reference model (pairs: reference)
    train_todo: list[int] = field(default_factory=list)  # seeds without a stored checkpoint


@dataclass
class Plan:
    """What a study needs and what of it is already stored."""

    populations: list[Population]
    layers: list[str]
    model_ids: dict[str, str] = field(default_factory=dict)  # checkpoint → model id
    extraction_todo: list[str] = field(default_factory=list)  # checkpoints
    factor_tasks: list[FactorTask] = field(default_factory=list)  # one per (model, layer, repeat) not stored
    factor_done: int = 0
    match_tasks: list[MatchTask] = field(default_factory=list)  # only the pairs still to do
    match_done: int = 0  # pairs × layers × repeats stored
    simple_tasks: list[SimpleTask] = field(default_factory=list)
    simple_done: int = 0
    cka_tasks: list[MatchTask] = field(default_factory=list)
    cka_done: int = 0

    @property
    def checkpoints(self) -> list[str]:
        """Every checkpoint of every population (trained first)."""
        return [key for population in self.populations for key in population.checkpoints]

    @property
    def train_todo(self) -> int:
        return sum(len(population.train_todo) for population in self.populations)

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per stage: (done, to do), in models (train, extract), models × layers × repeats (factor),
        pairs × layers × repeats (match, cka) or
        pairs × layers × repeats × ε (simple)."""
        n = len(self.checkpoints)
        return {"train": (n - self.train_todo, self.train_todo),
                "extract": (n - len(self.extraction_todo), len(self.extraction_todo)),
                "factor": (self.factor_done, len(self.factor_tasks)),
                "match": (self.match_done, sum(len(task.pairs) for task in self.match_tasks)),
                "simple": (self.simple_done, len(self.simple_tasks)),
                "cka": (self.cka_done, sum(len(task.pairs) for task in self.cka_tasks))}


def resolve_population(study, store: Store) -> list[str]:
    """The study's checkpoints: the explicit list, the trained seeds' keys, or the store keys matching its glob."""
    population = study.population
    if population.checkpoints:
        return list(population.checkpoints)
    if population.training is not None:
        from .train import population_keys

        return population_keys(population.training.prefix(study.architecture), population.training.seeds)
    pattern = population.glob
    prefix = pattern.split("*", 1)[0].rsplit("/", 1)[0] if "/" in pattern else ""
    found = [key for key in store.list(prefix) if fnmatch.fnmatch(key, pattern)]
    if len(found) < 2:
        raise ValueError(f"population.glob {pattern!r} matches {len(found)} checkpoint(s) in {store.uri}; "
                         "a study needs at least 2 models")
    return found


def _populations(study, store: Store) -> list[Population]:
    checkpoints = resolve_population(study, store)
    training = study.population.training
    reference = None
    if study.pairs == "reference":
        names = [f"seed{seed}" for seed in training.seeds] if training is not None else checkpoints
        if study.reference not in names:
            raise ValueError(f"reference {study.reference!r} is not in the population ({len(names)} models)")
        reference = names.index(study.reference)
    populations = [Population("trained", checkpoints, reference)]
    if training is not None:
        from .train import pending_seeds

        populations[0].train_todo = pending_seeds(store, training.prefix(study.architecture), training.seeds)
    if study.null_baseline:
        from .train import pending_seeds, population_keys

        seeds = training.seeds if training is not None else tuple(range(len(checkpoints)))
        prefix = untrained_prefix(study.architecture)
        populations.append(Population("untrained", population_keys(prefix, seeds), reference,
                                      pending_seeds(store, prefix, seeds)))
    return populations


def make_plan(study, store: Store) -> Plan:
    """Resolve the populations and count what is stored, without running anything."""
    plan = Plan(_populations(study, store), list(study.layer_names))
    if plan.train_todo:  # model ids (and everything after) are known once the checkpoints exist
        return plan
    probe = study.probe
    for key in plan.checkpoints:
        data = read_checkpoint(store, key)
        model = plan.model_ids[key] = checkpoint_id(data)
        if any(stored_repeats(store, probe.id, model, layer) is None for layer in plan.layers):
            plan.extraction_todo.append(key)  # refused here, before Ray, if corrupt, of another shape, or NaN
            check_checkpoint(study.architecture.module_tree(), data, arch=study.architecture.name, name=key)
    _check_distinct(plan)
    if plan.extraction_todo:  # repeats (and so the pair tasks) are known once activations exist
        return plan
    simple = study.simple_matches
    simple_layers = set(select_layers(study.architecture.module_tree(), simple.layers)) if simple.enabled else set()
    stored = {table: _stored_pairs(store, table, study) for table in ("matches", "cka")}
    stored_factors = set(store.list(f"factors/{FACTOR_VERSION}/{probe.id}"))
    for population in plan.populations:
        ids = [plan.model_ids[key] for key in population.checkpoints]
        positions = {model: index for index, model in enumerate(ids)}
        pairs = [(ids[i], ids[j]) for i, j in pair_positions(study.pairs, len(ids), population.reference)]
        for layer in plan.layers:
            repeats = stored_repeats(store, probe.id, ids[0], layer)
            for repeat in range(repeats):
                for model in ids:
                    key = ActivationKey(probe.id, model, layer, repeat)
                    plan.factor_done += f"{factor_prefix(key, study.center)}/_manifest.json" in stored_factors
                for stage, table in (("match", "matches"), ("cka", "cka")):
                    if stage == "cka" and not study.cka:
                        continue
                    missing = [pair for pair in pairs if (population.name, layer, repeat, *pair) not in stored[table]]
                    setattr(plan, f"{stage}_done", getattr(plan, f"{stage}_done") + len(pairs) - len(missing))
                    getattr(plan, f"{stage}_tasks").extend(block_tasks(
                        study.name, study.config_hash, probe.id, layer, repeat, missing, study.eps,
                        block=study.resources.pair_block, center=study.center, population=population.name,
                        positions=positions))
                if layer in simple_layers and population.name == "trained":
                    for pair, eps in itertools.product(pairs, simple.eps):
                        task = SimpleTask(study.name, study.config_hash, probe.id, layer, repeat, pair, eps,
                                          study.center, simple.max_neurons)
                        if store.exists(f"results/simple_matches/{task.task_id}.parquet"):
                            plan.simple_done += 1
                        else:
                            plan.simple_tasks.append(task)
    # Factors only where a pair still to do needs one (CKA reads the activations): a matrix that cannot be
    # factored (its pairs recorded as failed rows) is not asked for again.
    needed = {ActivationKey(task.probe_id, model, task.layer, task.repeat)
              for task in plan.match_tasks for model in task.models}
    needed |= {ActivationKey(task.probe_id, model, task.layer, task.repeat)
               for task in plan.simple_tasks for model in task.pair}
    for key in sorted(needed, key=lambda key: (key.layer, key.repeat, key.model_id)):
        if f"{factor_prefix(key, study.center)}/_manifest.json" not in stored_factors:
            plan.factor_tasks.append(FactorTask(key, study.center))
    return plan


def _check_distinct(plan: Plan) -> None:
    """Two keys with the same content would pair a model with itself: refuse, naming them."""
    seen: dict[str, str] = {}
    for key, model in plan.model_ids.items():
        if model in seen:
            raise ValueError(f"checkpoints {seen[model]!r} and {key!r} are the same model (id {model}); "
                             "a population needs distinct models")
        seen[model] = key


def _stored_pairs(store: Store, table: str, study) -> set[tuple]:
    """(population, layer, repeat, model_a, model_b) of every pair ``table`` holds rows of for this study.

    Work is planned per pair, not per task file: when the population grows, only the new pairs are computed,
    whichever blocks they fall in. A task writes all rows of its pairs in one object, so a pair with any row
    is complete (failed rows included: ``raymatch status`` lists them).
    """
    from .results import load_table

    rows = load_table(store, table, study=study.name)
    rows = rows.filter(pc.equal(rows.column("config_hash"), study.config_hash))
    columns = [rows.column(name).to_pylist() for name in ("population", "layer", "repeat", "model_a", "model_b")]
    return set(zip(*columns, strict=True))


# ------------------------------------------------------------------------------------------------ records


def study_record_key(name: str) -> str:
    return f"studies/{name}.json"


def write_study_record(study, store: Store) -> None:
    """``studies/<name>.json``: the study's configuration and its layers in network order (for status, report)."""
    store.write_json(study_record_key(study.name), {
        "name": study.name, "config_hash": study.config_hash, "code_version": __version__,
        "layers": list(study.layer_names), "eps": list(study.eps), "architecture": study.architecture.to_dict(),
        "probe": study.probe.to_dict(), "config": study.to_dict(),
    })


class RunRecord:
    """One row of the ``runs`` table, written when the run starts and replaced when it ends."""

    def __init__(self, study, store: Store):
        self.store = store
        started = _dt.datetime.now(_dt.timezone.utc)
        self.row = {"run_id": f"{study.name}.{started:%Y%m%dT%H%M%S}.{secrets.token_hex(4)}", "study": study.name,
                    "config_hash": study.config_hash, "host": socket.gethostname(), "code_version": __version__,
                    "started_at": started, "ended_at": None, "status": "running", "computed": 0, "skipped": 0,
                    "failed": 0, "stages": "{}", "error": None}
        self._write()

    def _write(self) -> None:
        write_rows(self.store, "runs", self.row["run_id"], [self.row])

    def finish(self, stages: dict, error: str | None = None) -> None:
        totals = {name: sum(counts.get(name, 0) for counts in stages.values())
                  for name in ("computed", "skipped", "failed")}
        failed = error is not None or totals["failed"] > 0
        self.row.update(totals, ended_at=_dt.datetime.now(_dt.timezone.utc), error=error,
                        status="failed" if failed else "succeeded",
                        stages=json.dumps({name: {key: counts[key] for key in ("computed", "skipped", "failed",
                                                                                "seconds") if key in counts}
                                           for name, counts in stages.items()}, sort_keys=True))
        self._write()


# ------------------------------------------------------------------------------------------------ running


def run_study(study, *, progress: bool | None = None, only: str | None = None, connect=None) -> dict:
    """Run every stage of ``study`` on the connected Ray cluster; returns the run's summary.

    Parameters
    ----------
    study : raymatch.study.Study
    progress : bool, optional
        Progress bars (default: when stderr is a terminal; periodic lines otherwise).
    only : {'train'}, optional
        Stop after that stage.
    connect : callable, optional
        Called without arguments once the population is planned and the store is known writable, before
        anything is written: connect to Ray there, so that bad inputs fail without starting it.

    Returns
    -------
    dict
        ``study``, ``config_hash``, ``run_id``, ``seconds`` and ``stages``: per stage its ``computed``,
        ``skipped``, ``failed`` counts, ``seconds`` and the first ``errors``.
    """
    started = time.perf_counter()
    store = study.store.open()
    if not store.is_local:  # an unreachable endpoint, a missing bucket, refused credentials: one clear line
        store.check(write=False)
    plan = make_plan(study, store)  # bad populations and checkpoints fail here, before anything is written
    store.check()
    if connect is not None:
        connect()
    write_study_record(study, store)
    record = RunRecord(study, store)
    summary: dict = {"study": study.name, "config_hash": study.config_hash, "run_id": record.row["run_id"],
                     "stages": {}}
    try:
        _run_stages(study, store, plan, summary, progress, only)
    except BaseException as error:
        try:
            record.finish(summary["stages"], error=f"{type(error).__name__}: {error}")
        except StoreError:  # the store is what failed (unreachable, full): report the run's own error
            pass
        raise
    record.finish(summary["stages"])
    summary["seconds"] = time.perf_counter() - started
    return summary


def _run_stages(study, store: Store, plan: Plan, summary: dict, progress: bool | None, only: str | None) -> None:
    import ray

    from .extract.pool import actor_options, extract_population, start_actors
    from .runner import run_bounded

    stages = summary["stages"]
    resources = study.resources
    stage_start = time.perf_counter()
    training = study.population.training
    outcomes = []
    for population in plan.populations:
        if not population.train_todo:
            continue
        from .train import recipe, train_population

        untrained = population.name == "untrained"
        spec = training.spec if training is not None else recipe("quick", dataset=study.probe.dataset)
        prefix = untrained_prefix(study.architecture) if untrained else training.prefix(study.architecture)
        outcomes += train_population(store, study.architecture.name, study.architecture.kwargs, spec,
                                     population.train_todo, prefix=prefix, untrained=untrained,
                                     cpus_per_task=resources.cpus_per_task, gpus_per_task=resources.gpus_per_actor,
                                     max_in_flight=resources.max_in_flight,
                                     progress=progress)
    stages["train"] = _counts(outcomes, len(plan.checkpoints) - plan.train_todo, stage_start)
    if stages["train"]["failed"]:
        raise RuntimeError(f"training failed: {stages['train']['errors'][0]}")
    if only == "train":
        return
    if plan.train_todo:
        plan = make_plan(study, store)
    # Where extraction runs on CPUs, one pool of actors does every stage after training: the pair stages then
    # start in warm processes (no worker start-up, torch and the store already loaded) instead of cold tasks.
    # GPU actors are kept for extraction only: pair work is CPU work and must not hold a GPU.
    options, capacity = actor_options(gpus_per_actor=resources.gpus_per_actor, cpus_per_actor=resources.cpus_per_task)
    shared_actors = "num_gpus" not in options
    actors = None
    try:
        stage_start = time.perf_counter()
        jobs = [ExtractionJob(key, study.architecture.name, study.probe, tuple(study.layers),
                              study.architecture.kwargs) for key in plan.extraction_todo]
        if jobs and shared_actors:
            actors = start_actors(store, capacity, gpus_per_actor=0, cpus_per_actor=resources.cpus_per_task)
        extract_population(store, jobs, gpus_per_actor=resources.gpus_per_actor,
                           cpus_per_actor=resources.cpus_per_task, progress=progress, actors=actors)
        stages["extract"] = {"computed": len(jobs), "skipped": len(plan.checkpoints) - len(jobs), "failed": 0,
                             "seconds": time.perf_counter() - stage_start}
        if jobs:
            plan = make_plan(study, store)
        pair_stages = (("factor", factor_and_store, plan.factor_tasks, plan.factor_done),
                       ("match", match_and_write, plan.match_tasks, plan.match_done),
                       ("simple", simple_and_write, plan.simple_tasks, plan.simple_done),
                       ("cka", cka_and_write, plan.cka_tasks, plan.cka_done))
        if actors is None and shared_actors and any(tasks for _, _, tasks, _ in pair_stages):
            actors = start_actors(store, capacity, gpus_per_actor=0, cpus_per_actor=resources.cpus_per_task)
        for stage, fn, tasks, done in pair_stages:
            stage_start = time.perf_counter()
            if stage in ("match", "cka"):  # biggest blocks first: no CPU is left alone with a long task at the end
                tasks = sorted(tasks, key=lambda task: len(task.pairs), reverse=True)
            outcomes = run_bounded(fn, tasks, args=(store,), max_in_flight=resources.max_in_flight,
                                   num_cpus=resources.cpus_per_task, label=stage, progress=progress, actors=actors,
                                   fatal=(StoreError,))  # the store is down or full: stop, rerun later
            stages[stage] = _counts(outcomes, done, stage_start, units=(lambda task: len(task.pairs))
                                    if stage in ("match", "cka") else None)
            if stage == "match":
                stages[stage]["failed_rows"] = sum(o.result["failed"] for o in outcomes if o.ok)
    finally:
        for actor in actors or ():
            ray.kill(actor)


def _counts(outcomes: list, skipped: int, stage_start: float, units=None) -> dict:
    """A stage's summary; ``units(task)`` counts work in pairs instead of tasks (match and CKA)."""
    size = units or (lambda item: 1)
    return {"computed": sum(size(o.item) for o in outcomes if o.ok), "skipped": skipped, "tasks": len(outcomes),
            "failed": sum(size(o.item) for o in outcomes if not o.ok),
            "in_task_seconds": sum(o.seconds for o in outcomes),
            "task_seconds": sorted((o.seconds for o in outcomes), reverse=True),
            "seconds": time.perf_counter() - stage_start,
            "errors": [o.error for o in outcomes if not o.ok][:10]}


# ------------------------------------------------------------------------------------------------ status


def store_status(store: Store, *, runs: int = 10) -> dict:
    """The latest runs recorded in ``store`` and, per study recorded there, what is still to do.

    Parameters
    ----------
    store : Store
    runs : int, default 10
        How many of the latest runs to return.

    Returns
    -------
    dict
        ``runs``: a DataFrame of the latest runs (newest first); ``pending``: per study name, its plan's
        ``{stage: (done, to do)}`` or the error that stopped the planning; ``failed``: the failed ``matches``
        rows (study, population, layer, model_a, model_b, eps, error).
    """
    from .results import load
    from .study import Study

    history = load(store, "runs").sort_values("started_at", ascending=False).head(runs).reset_index(drop=True)
    pending: dict[str, dict | str] = {}
    for key in store.list("studies"):
        if not key.endswith(".json"):
            continue
        record = store.read_json(key)
        try:
            pending[record["name"]] = make_plan(Study.from_dict(record["config"]), store).counts()
        except Exception as error:  # a study whose checkpoints went missing still lists the others
            pending[record["name"]] = f"{type(error).__name__}: {error}"
    matches = load(store, "matches")
    failed = matches.loc[matches["status"] == "failed",
                         ["study", "population", "layer", "model_a", "model_b", "eps", "error"]]
    return {"runs": history, "pending": pending, "failed": failed.reset_index(drop=True)}
