"""The driver's memory at population scale (issue 23, point 4): planning 1,000 models holds arrays of pairs, not a
tuple per pair; the stored pairs are codes read a batch at a time; the results writer holds at most its byte
bound; and the outcomes a stage keeps hold no rows. Counted with tracemalloc, without running a million pairs."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from raymatch.engine.bounded import Outcome
from raymatch.engine.context import PlanContext
from raymatch.engine.pairlist import PairList, StoredPairs
from raymatch.engine.plan import ModelGroup, Plan
from raymatch.engine.run import stage_recorder
from raymatch.engine.stages import stage_named
from raymatch.engine.stages.match import match_factor_reads, match_tasks
from raymatch.engine.tasks import CURVE_KEYS, MatchTask, block_tasks
from raymatch.results import TableWriter, read_columns
from raymatch.store import ActivationKey, write_activations
from raymatch.study import Study

N_MODELS = 1000
PAIRS = N_MODELS * (N_MODELS - 1) // 2  # 499,500 per layer
LAYERS = ["relu1", "relu2"]


def big_study(root, n_models: int) -> tuple[Study, Plan]:
    """A study of ``n_models`` checkpoints that exist only in its plan; the first model's matrices are stored."""
    study = Study.from_dict({
        "name": "big", "store": {"uri": f"file://{root}"}, "population": {"glob": "checkpoints/*.safetensors"},
        "architecture": {"name": "mlp", "in_channels": 1, "input_size": 8},
        "probe": {"dataset": "digits", "split": "all"}, "layers": LAYERS, "eps": [0.25],
        "resources": {"pair_block": 16}})
    checkpoints = [f"checkpoints/seed{i}.safetensors" for i in range(n_models)]
    plan = Plan([ModelGroup("trained", checkpoints)], LAYERS,
                model_ids={key: f"{i:016x}" for i, key in enumerate(checkpoints)})
    store = study.store.open()
    for layer in LAYERS:  # what the planner reads: the stored repeats of each group's first model
        write_activations(store, ActivationKey(study.probe.id, f"{0:016x}", layer), np.ones((20, 4), np.float32))
    return study, plan


def traced(compute):
    """``(compute(), bytes traced that it keeps, peak bytes traced while it ran)``."""
    tracemalloc.start()
    try:
        result = compute()
        return (result, *tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()


def test_planning_a_thousand_models_keeps_under_twenty_bytes_a_pair(tmp_path):
    study, plan = big_study(tmp_path, N_MODELS)
    context = PlanContext(study, study.store.open(), plan, factor_readers=(match_factor_reads,))

    def plan_match():
        tasks, done = match_tasks(context)
        reads = sum(1 for _ in match_factor_reads(context))
        return tasks, done, reads

    (tasks, done, reads), kept, peak = traced(plan_match)
    blocks = -(-N_MODELS // 16)  # 63 blocks of 16 models: 63 · 64 / 2 tasks per layer
    assert done == 0 and len(tasks) == len(LAYERS) * blocks * (blocks + 1) // 2
    assert sum(len(task.pairs) for task in tasks) == len(LAYERS) * PAIRS
    assert all(isinstance(task.pairs, PairList) and len(task.pairs.models) <= 32 for task in tasks)
    assert reads == sum(len(task.models) for task in tasks)
    # a tuple per pair held by the tasks alone would be 64 bytes a pair (64 MB here), and as many again for the
    # group's pairs; what planning keeps is int32 positions (the group's and the tasks'), and its peak adds the
    # sorting of one unit's pairs into blocks
    n = len(LAYERS) * PAIRS
    assert kept < 20 * n, f"{kept / 1e6:.1f} MB kept after planning {n} pairs"
    assert peak < 40 * n, f"{peak / 1e6:.1f} MB traced while planning {n} pairs"
    first = tasks[0]
    assert first.pairs[0] == (f"{0:016x}", f"{1:016x}") and first.models[:2] == [f"{0:016x}", f"{1:016x}"]


def test_the_blocks_are_the_tuples_blocks():
    """The array grouping gives the tasks of the grouping of tuples: same pairs, order, models and ids."""
    models = [f"m{i}" for i in range(11)]
    pairs = [(models[i], models[j]) for i in range(11) for j in range(i + 1, 11) if (i + j) % 3]
    positions = {model: 10 - i for i, model in enumerate(models)}  # positions other than the order of appearance
    tasks = block_tasks("s", "h", "p", "relu", 0, pairs, block=3, positions=positions)
    grouped: dict = {}
    for a, b in pairs:
        grouped.setdefault(tuple(sorted((positions[a] // 3, positions[b] // 3))), []).append((a, b))
    want = [MatchTask("s", "h", "p", "relu", 0, tuple(group)) for _, group in sorted(grouped.items())]
    assert [task.pairs for task in tasks] == [task.pairs for task in want]
    assert [task.task_id for task in tasks] == [task.task_id for task in want]
    assert [task.models for task in tasks] == [task.models for task in want]


def identity_batches(n_models: int, rows: int, batch: int = 2**16):
    """Batches of the identity columns of ``rows`` curves rows: the pairs (i, j), i < j, of two layers in order."""
    a, b = np.triu_indices(n_models, k=1)
    ids = np.array([f"{i:016x}" for i in range(n_models)], dtype=object)
    for start in range(0, rows, batch):
        index = np.arange(start, min(rows, start + batch)) % a.size
        layer = np.where(np.arange(start, min(rows, start + batch)) < a.size, "relu1", "relu2")
        yield pa.record_batch({"population": pa.array(["trained"] * index.size), "layer": pa.array(layer),
                               "repeat": pa.array(np.zeros(index.size, np.int32)),
                               "model_a": pa.array(ids[a[index]]), "model_b": pa.array(ids[b[index]])})


def test_a_million_stored_pairs_are_held_as_codes(tmp_path):
    stored, kept, peak = traced(lambda: StoredPairs(identity_batches(N_MODELS, 2 * PAIRS)))
    assert len(stored) == 2 * PAIRS
    # as a set of 5-tuples of fresh strings this is ~300 bytes a row (300 MB); codes: 8 bytes, sorted once
    assert kept < 10 * 2 * PAIRS, f"{kept / 1e6:.1f} MB kept for {2 * PAIRS} stored pairs"
    assert peak < 40 * 2 * PAIRS, f"{peak / 1e6:.1f} MB traced for {2 * PAIRS} stored pairs"
    ids = [f"{i:016x}" for i in range(N_MODELS)]
    some = PairList(tuple(ids), [0, 5, 998, 7], [1, 4, 999, 7])
    assert stored.contains("trained", "relu2", 0, some).tolist() == [True, False, True, False]
    assert not stored.contains("untrained", "relu2", 0, some).any()
    assert ("trained", "relu1", 0, ids[3], ids[900]) in stored and ("trained", "relu1", 1, ids[3], ids[9]) not in stored


def curve_rows(n_rows: int, width: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_rows):
        row = dict.fromkeys(CURVE_KEYS)
        row.update({"study": "s", "population": "trained", "layer": "relu1", "repeat": 0, "model_a": f"a{i}",
                    "model_b": "b", "probe_id": "p", "config_hash": "h", "code_version": "0", "n_samples": 100,
                    "n_a": width, "n_b": width, "dead_a": 0, "dead_b": 0, "critical_a": rng.random(width).tolist(),
                    "critical_b": rng.random(width).tolist(), "exact_tol": 1e-6, "max_epsilon": 1.0, "chance": 0.5,
                    "cka": 0.5, "seconds": 0.01, "status": "ok", "error": None})
        rows.append(row)
    return rows


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_writer_holds_at_most_its_byte_bound(request, kind):
    store = request.getfixturevalue(f"{kind}_store")
    block = curve_rows(256, 128)  # one task's rows: 256 pairs of 128 + 128 neurons, about 0.5 MB of Arrow
    writer = TableWriter(store, max_bytes=2 * 2**20, max_seconds=3600)
    held = []
    for _ in range(12):
        writer.add("curves", block)
        held.append(writer.pending_bytes())
    writer.close(compact=False)
    assert writer.written == {"curves": 12 * 256} and writer.commits >= 2
    assert max(held) < 2 * 2**20  # a commit as soon as the buffer reaches the bound
    assert read_columns(store, "curves", ["model_a"]).num_rows == 12 * 256


def test_the_outcomes_a_stage_keeps_hold_no_rows(local_store):
    writer = TableWriter(local_store)
    record = stage_recorder(Study.from_dict({
        "name": "s", "store": {"uri": "file:///tmp/unused"}, "population": {"glob": "checkpoints/*.safetensors"},
        "architecture": {"name": "mlp", "in_channels": 1, "input_size": 8},
        "probe": {"dataset": "digits", "split": "all"}, "layers": ["relu1"], "eps": [0.25]}),
        stage_named("match"), writer)
    outcome = Outcome("task", {"rows": curve_rows(3, 4), "failed": 0, "match_seconds": 0.5})
    record(outcome)
    assert outcome.result == {"failed": 0, "match_seconds": 0.5} and writer.pending("curves") == 3
    writer.close(compact=False)
