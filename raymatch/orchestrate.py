"""Planning and running a study: extraction, then the pair tasks, everything already stored skipped.

Stages (DESIGN.md §2): extraction per model (the actor pool), then one task per (block of pairs,
layer, repeat) computing the whole ε grid from one ``match_curve`` and writing its own result file
``results/matches/<task id>.parquet``. A stage reads only what the one before it stored, so a rerun —
or a run on another machine — computes exactly what is missing.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field

from .extract import ExtractionJob
from .extract.extractor import read_checkpoint, stored_repeats
from .extract.layers import select_layers
from .models import checkpoint_id
from .pairs import MatchTask, SimpleTask, block_tasks, cka_and_write, match_and_write, simple_and_write
from .store import Store


@dataclass
class Plan:
    """What a study needs and what of it is already stored."""

    checkpoints: list[str]
    model_ids: dict[str, str]  # checkpoint → model id
    layers: list[str]
    extraction_todo: list[str] = field(default_factory=list)  # checkpoints
    match_tasks: list[MatchTask] = field(default_factory=list)
    match_done: int = 0
    simple_tasks: list[SimpleTask] = field(default_factory=list)
    simple_done: int = 0
    cka_tasks: list[MatchTask] = field(default_factory=list)
    cka_done: int = 0

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per stage: (done, to do)."""
        n = len(self.checkpoints)
        return {"extract": (n - len(self.extraction_todo), len(self.extraction_todo)),
                "match": (self.match_done, len(self.match_tasks)),
                "simple": (self.simple_done, len(self.simple_tasks)),
                "cka": (self.cka_done, len(self.cka_tasks))}


def resolve_population(study, store: Store) -> list[str]:
    """The study's checkpoints: the explicit list, or the store keys matching its glob (sorted)."""
    if study.population.checkpoints:
        return list(study.population.checkpoints)
    pattern = study.population.glob
    prefix = pattern.split("*", 1)[0].rsplit("/", 1)[0] if "/" in pattern else ""
    found = [key for key in store.list(prefix) if fnmatch.fnmatch(key, pattern)]
    if len(found) < 2:
        raise ValueError(f"population.glob {pattern!r} matches {len(found)} checkpoint(s) in {store.uri}; "
                         "a study needs at least 2 models")
    return found


def make_plan(study, store: Store) -> Plan:
    """Resolve the population and count what is stored, without running anything."""
    checkpoints = resolve_population(study, store)
    model_ids = {key: checkpoint_id(read_checkpoint(store, key)) for key in checkpoints}
    layers = list(study.layer_names)
    probe = study.probe
    plan = Plan(checkpoints, model_ids, layers)
    plan.extraction_todo = [key for key in checkpoints
                            if any(stored_repeats(store, probe.id, model_ids[key], layer) is None for layer in layers)]
    if plan.extraction_todo:  # repeats (and so the pair tasks) are known once activations exist
        return plan
    pairs = [(model_ids[a], model_ids[b]) for a, b in study.pairs_of(checkpoints)]
    simple = study.simple_matches
    simple_layers = set(select_layers(study.architecture.module_tree(), simple.layers)) if simple.enabled else set()
    for layer in layers:
        repeats = stored_repeats(store, probe.id, model_ids[checkpoints[0]], layer)
        for repeat in range(repeats):
            blocks = block_tasks(study.name, study.config_hash, probe.id, layer, repeat, pairs, study.eps,
                                 block=study.resources.pair_block, center=study.center)
            for task in blocks:
                _sort(plan, "match", task, store)
                if study.cka:
                    _sort(plan, "cka", task, store)
            if layer in simple_layers:
                for pair in pairs:
                    for eps in simple.eps:
                        _sort(plan, "simple", SimpleTask(study.name, study.config_hash, probe.id, layer, repeat,
                                                         pair, eps, study.center, simple.max_neurons), store)
    return plan


_TABLES = {"match": "matches", "simple": "simple_matches", "cka": "cka"}


def _sort(plan: Plan, stage: str, task, store: Store) -> None:
    """File ``task`` under done or to do, by whether its result file exists."""
    if store.exists(f"results/{_TABLES[stage]}/{task.task_id}.parquet"):
        setattr(plan, f"{stage}_done", getattr(plan, f"{stage}_done") + 1)
    else:
        getattr(plan, f"{stage}_tasks").append(task)


def run_study(study, *, progress: bool | None = None) -> dict:
    """Run every stage of ``study`` on the connected Ray cluster; returns the run's summary."""
    from .extract.pool import extract_population
    from .runner import run_bounded

    started = time.perf_counter()
    store = study.store.open()
    store.check()
    summary: dict = {"study": study.name, "config_hash": study.config_hash, "stages": {}}
    plan = make_plan(study, store)
    stage_start = time.perf_counter()
    arch = study.architecture
    kwargs = {"in_channels": arch.in_channels, "num_classes": arch.num_classes, "width": arch.width,
              "input_size": arch.input_size}
    jobs = [ExtractionJob(key, arch.name, study.probe, tuple(study.layers), kwargs) for key in plan.extraction_todo]
    extract_population(store, jobs, gpus_per_actor=study.resources.gpus_per_actor,
                       cpus_per_actor=study.resources.cpus_per_task)
    summary["stages"]["extract"] = {"computed": len(jobs), "skipped": len(plan.checkpoints) - len(jobs),
                                    "failed": 0, "seconds": time.perf_counter() - stage_start}
    if jobs:
        plan = make_plan(study, store)
    stage_start = time.perf_counter()
    outcomes = run_bounded(match_and_write, plan.match_tasks, args=(store,),
                           max_in_flight=study.resources.max_in_flight, num_cpus=study.resources.cpus_per_task,
                           label="match", progress=progress)
    failed_tasks = [o for o in outcomes if not o.ok]
    summary["stages"]["match"] = {
        "computed": sum(o.ok for o in outcomes), "skipped": plan.match_done, "failed": len(failed_tasks),
        "failed_rows": sum(o.result["failed"] for o in outcomes if o.ok),
        "in_task_seconds": sum(o.seconds for o in outcomes), "seconds": time.perf_counter() - stage_start,
        "errors": [o.error for o in failed_tasks][:10],
    }
    for stage, fn, tasks, done in (("simple", simple_and_write, plan.simple_tasks, plan.simple_done),
                                   ("cka", cka_and_write, plan.cka_tasks, plan.cka_done)):
        stage_start = time.perf_counter()
        outcomes = run_bounded(fn, tasks, args=(store,), max_in_flight=study.resources.max_in_flight,
                               num_cpus=study.resources.cpus_per_task, label=stage, progress=progress)
        summary["stages"][stage] = {
            "computed": sum(o.ok for o in outcomes), "skipped": done, "failed": sum(not o.ok for o in outcomes),
            "in_task_seconds": sum(o.seconds for o in outcomes), "seconds": time.perf_counter() - stage_start,
            "errors": [o.error for o in outcomes if not o.ok][:10],
        }
    summary["seconds"] = time.perf_counter() - started
    return summary

