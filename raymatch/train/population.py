"""A population on Ray: one task per seed, a checkpoint and then its record per seed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine.bounded import Outcome
    from ..store import Store

from ..store.layout import checkpoint_key, training_record_key, trajectory_checkpoint_key, trajectory_record_key
from .loop import _check_seed, train_model, untrained_model
from .spec import TrainingSpec

# ------------------------------------------------------------------------------------------ populations on Ray


def population_keys(prefix: str, seeds: Iterable[int]) -> list[str]:
    """The checkpoint keys ``<prefix>/seed<k>.safetensors``, in the order of ``seeds`` (distinct, ≥ 0)."""
    prefix = _check_prefix(prefix)
    return [checkpoint_key(prefix, seed) for seed in _check_seeds(seeds)]


def record_key(prefix: str, seed: int) -> str:
    """The record key ``<prefix>/seed<k>.json`` of one seed: the seed is done iff it exists."""
    return training_record_key(_check_prefix(prefix), _check_seed(seed))


def trajectory_epochs(epochs: int, save_every: int | None) -> list[int]:
    """The epochs ``k, 2k, …`` (up to ``epochs``) whose weights a ``save_every = k`` training keeps; [] for None."""
    return [] if save_every is None else list(range(save_every, epochs + 1, save_every))


def trajectory_keys(prefix: str, seed: int, epochs: Iterable[int]) -> list[str]:
    """The checkpoint keys ``<prefix>/seed<k>/epoch<e>.safetensors`` of one seed's saved epochs, in their order."""
    prefix = _check_prefix(prefix)
    return [trajectory_checkpoint_key(prefix, _check_seed(seed), epoch) for epoch in epochs]


def pending_seeds(store: Store, prefix: str, seeds: Iterable[int], saved_epochs: Iterable[int] = ()) -> list[int]:
    """The seeds, in the given order, whose record is not in the store (one listing of ``prefix``).

    A checkpoint without its record (a task killed between the two writes) is pending; so is a seed lacking
    the record of one of ``saved_epochs`` (a trajectory asked for after the seed was trained without it).
    """
    seeds = _check_seeds(seeds)
    saved_epochs = list(saved_epochs)
    present = set(store.list(_check_prefix(prefix)))
    return [seed for seed in seeds if record_key(prefix, seed) not in present
            or any(trajectory_record_key(prefix.strip("/"), seed, epoch) not in present for epoch in saved_epochs)]


def train_population(store: Store, arch: str, arch_kwargs: Mapping[str, Any], spec: TrainingSpec,
                     seeds: Iterable[int], *, prefix: str, untrained: bool = False, cpus_per_task: float = 1,
                     gpus_per_task: float = 0, max_in_flight: int = 4, progress: bool | None = None,
                     save_every: int | None = None) -> list[Outcome]:
    """Train (or initialise) one model per seed as Ray tasks, skipping the seeds already done.

    Each task writes ``<prefix>/seed<k>.safetensors`` and then its record ``<prefix>/seed<k>.json``
    (:class:`TrainedModel`'s record plus ``checkpoint_key``). A seed is done iff its record exists; done
    seeds are not submitted, so a second call submits nothing and a seed whose task died after writing its
    checkpoint is trained again (the checkpoint is overwritten).

    Parameters
    ----------
    store : raymatch.store.Store
    arch : str
        A :func:`~raymatch.models.build_model` name.
    arch_kwargs : mapping
        Its keyword arguments; JSON-able.
    spec : TrainingSpec
        How to train; with ``untrained=True`` only ``spec.dataset`` / ``spec.data_dir`` are used (for the
        untrained models' test accuracy).
    seeds : iterable of int
        Distinct, ≥ 0.
    prefix : str
        Store key prefix of the population, e.g. ``'checkpoints/digits-small_cnn'``.
    untrained : bool, default False
        Write :func:`untrained_model` initialisations instead of trained models (the null baseline).
    cpus_per_task : float, default 1
        Ray ``num_cpus`` per task; the task's torch threads are ``max(1, int(cpus_per_task))``.
    gpus_per_task : float, default 0
        Ray ``num_gpus`` per task; when > 0 the task trains on ``'cuda'``.
    max_in_flight : int, default 4
        Tasks submitted at once.
    progress : bool, optional
        Progress reporting, as in :func:`~raymatch.engine.bounded.run_bounded`.
    save_every : int, optional
        Also keep every ``save_every``-th epoch's weights of each trained seed, with a record, under
        ``<prefix>/seed<k>/epoch<e>.safetensors`` / ``.json`` (written before the seed's own record). A seed
        done without them is trained again (on the CPU, to the same bytes).

    Returns
    -------
    list of raymatch.engine.bounded.Outcome
        One per seed submitted (``item`` = seed, ``result`` = the record as written, or ``error``), in the order
        of ``seeds``; empty when every seed was already done.

    Raises
    ------
    ValueError
        For bad seeds, prefix or arch_kwargs, or when a record already under ``prefix`` was made with another
        architecture, ``arch_kwargs``, kind (trained / untrained) or spec id: use another prefix.
    """
    from ..engine.bounded import run_bounded
    from ..store import check_key

    seeds = _check_seeds(seeds)
    prefix = _check_prefix(prefix)
    for key in population_keys(prefix, seeds[:1]):
        check_key(key)
    arch_kwargs = dict(arch_kwargs)
    try:
        json.dumps(arch_kwargs)
    except TypeError as error:
        raise ValueError(f"arch_kwargs must be JSON-able, as they go into every record: {error}") from None
    if not isinstance(spec, TrainingSpec):
        raise ValueError(f"spec must be a TrainingSpec, got {type(spec).__name__}")
    if cpus_per_task <= 0 or gpus_per_task < 0:
        raise ValueError(f"cpus_per_task must be > 0 and gpus_per_task >= 0, got {cpus_per_task} and {gpus_per_task}")

    saved = [] if untrained else trajectory_epochs(spec.epochs, save_every)
    todo = pending_seeds(store, prefix, seeds, saved)
    _check_done_records(store, prefix, [seed for seed in seeds if seed not in set(todo)], arch, arch_kwargs,
                        None if untrained else spec.id)
    if not todo:
        return []
    resources: dict[str, float] = {"num_cpus": cpus_per_task}
    if gpus_per_task > 0:
        resources["num_gpus"] = gpus_per_task
    threads = max(1, int(cpus_per_task))
    device = "cuda" if gpus_per_task > 0 else "cpu"
    label = f"{'initialise' if untrained else 'train'} {prefix}"
    task_args = (store, arch, arch_kwargs, spec, prefix, untrained, threads, device, None if untrained else save_every)
    return run_bounded(_population_task, todo, args=task_args, max_in_flight=max_in_flight, label=label,
                       progress=progress, **resources)


def _population_task(store: Store, arch: str, arch_kwargs: dict, spec: TrainingSpec, prefix: str, untrained: bool,
                     threads: int, device: str, save_every: int | None, seed: int) -> dict[str, Any]:
    """Ray task body: train or initialise one seed, write its saved epochs, its checkpoint, then its record."""
    if untrained:
        model = untrained_model(arch, arch_kwargs, seed, dataset=spec.dataset, data_dir=spec.data_dir, threads=threads)
    else:
        model = train_model(arch, arch_kwargs, spec, seed, threads=threads, device=device, save_every=save_every)
    for saved in model.trajectory:
        (key,) = trajectory_keys(prefix, seed, [saved.epoch])
        store.write_bytes(key, saved.checkpoint)
        store.write_json(trajectory_record_key(prefix, seed, saved.epoch), {**saved.record, "checkpoint_key": key})
    (checkpoint,) = population_keys(prefix, [seed])
    store.write_bytes(checkpoint, model.checkpoint)
    record = {**model.record, "checkpoint_key": checkpoint}
    store.write_json(record_key(prefix, seed), record)
    return record


def _check_done_records(store: Store, prefix: str, done: list[int], arch: str, arch_kwargs: dict,
                        spec_id: str | None) -> None:
    """Refuse to mix models made another way into a population: every done record must match the request."""
    expected = {"kind": "untrained" if spec_id is None else "trained", "arch": arch, "arch_kwargs": arch_kwargs,
                "spec_id": spec_id}
    for seed in done:
        key = record_key(prefix, seed)
        stored = store.read_json(key)
        for name, value in expected.items():
            if stored.get(name) != value:
                raise ValueError(f"{key} in {store!r} was made with {name}={stored.get(name)!r}, not {value!r}: "
                                 f"a population's models must all be made the same way (use another prefix)")


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds must be a list of non-negative integers, got {seeds!r}")
    checked = [_check_seed(seed) for seed in seeds]
    if len(set(checked)) != len(checked):
        repeated = sorted({seed for seed in checked if checked.count(seed) > 1})
        raise ValueError(f"seeds must be distinct; repeated: {repeated}")
    return checked


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise ValueError(f"prefix must be a non-empty store key prefix, got {prefix!r}")
    return prefix.strip("/")

