"""A population in the store: its keys, which seeds are done, and one seed trained into it (no Ray here).

Per seed, a checkpoint and then its record: a seed is done iff its record exists. The fan-out of a population's
seeds as Ray tasks is the engine's (:func:`raymatch.engine.training.train_population`), each task running
:func:`train_seed`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store import Store

from ..store.layout import checkpoint_key, training_record_key, trajectory_checkpoint_key, trajectory_record_key
from .loop import _check_seed, train_model, untrained_model
from .spec import TrainingSpec

__all__ = ["check_done_records", "check_prefix", "check_seeds", "pending_seeds", "population_keys", "record_key",
           "train_seed", "trajectory_epochs", "trajectory_keys"]


def population_keys(prefix: str, seeds: Iterable[int]) -> list[str]:
    """The checkpoint keys ``<prefix>/seed<k>.safetensors``, in the order of ``seeds`` (distinct, ≥ 0)."""
    prefix = check_prefix(prefix)
    return [checkpoint_key(prefix, seed) for seed in check_seeds(seeds)]


def record_key(prefix: str, seed: int) -> str:
    """The record key ``<prefix>/seed<k>.json`` of one seed: the seed is done iff it exists."""
    return training_record_key(check_prefix(prefix), _check_seed(seed))


def trajectory_epochs(epochs: int, save_every: int | None) -> list[int]:
    """The epochs ``k, 2k, …`` (up to ``epochs``) whose weights a ``save_every = k`` training keeps; [] for None."""
    return [] if save_every is None else list(range(save_every, epochs + 1, save_every))


def trajectory_keys(prefix: str, seed: int, epochs: Iterable[int]) -> list[str]:
    """The checkpoint keys ``<prefix>/seed<k>/epoch<e>.safetensors`` of one seed's saved epochs, in their order."""
    prefix = check_prefix(prefix)
    return [trajectory_checkpoint_key(prefix, _check_seed(seed), epoch) for epoch in epochs]


def pending_seeds(store: Store, prefix: str, seeds: Iterable[int], saved_epochs: Iterable[int] = ()) -> list[int]:
    """The seeds, in the given order, whose record is not in the store (one listing of ``prefix``).

    A checkpoint without its record (a task killed between the two writes) is pending; so is a seed lacking
    the record of one of ``saved_epochs`` (a trajectory asked for after the seed was trained without it).
    """
    seeds = check_seeds(seeds)
    saved_epochs = list(saved_epochs)
    present = set(store.list(check_prefix(prefix)))
    return [seed for seed in seeds if record_key(prefix, seed) not in present
            or any(trajectory_record_key(prefix.strip("/"), seed, epoch) not in present for epoch in saved_epochs)]


def train_seed(store: Store, arch: str, arch_kwargs: dict, spec: TrainingSpec, prefix: str, untrained: bool,
               threads: int, device: str, save_every: int | None, seed: int) -> dict[str, Any]:
    """Train or initialise one seed, write its saved epochs, its checkpoint, then its record; returns the record.

    The task body of :func:`raymatch.engine.training.train_population` (one Ray task per seed).
    """
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


def check_done_records(store: Store, prefix: str, done: list[int], arch: str, arch_kwargs: dict,
                        spec_id: str | None) -> None:
    """Refuse to mix models made another way into a population: every done record must match the request.

    ``spec_id`` None: the records must be of untrained models.
    """
    expected = {"kind": "untrained" if spec_id is None else "trained", "arch": arch, "arch_kwargs": arch_kwargs,
                "spec_id": spec_id}
    for seed in done:
        key = record_key(prefix, seed)
        stored = store.read_json(key)
        for name, value in expected.items():
            if stored.get(name) != value:
                raise ValueError(f"{key} in {store!r} was made with {name}={stored.get(name)!r}, not {value!r}: "
                                 f"a population's models must all be made the same way (use another prefix)")


def check_seeds(seeds: Iterable[int]) -> list[int]:
    """``seeds`` as a list, each a non-negative integer and each once; ``ValueError`` otherwise."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds must be a list of non-negative integers, got {seeds!r}")
    checked = [_check_seed(seed) for seed in seeds]
    if len(set(checked)) != len(checked):
        repeated = sorted({seed for seed in checked if checked.count(seed) > 1})
        raise ValueError(f"seeds must be distinct; repeated: {repeated}")
    return checked


def check_prefix(prefix: str) -> str:
    """``prefix`` without leading or trailing slashes; ``ValueError`` for an empty one or a non-string."""
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise ValueError(f"prefix must be a non-empty store key prefix, got {prefix!r}")
    return prefix.strip("/")

