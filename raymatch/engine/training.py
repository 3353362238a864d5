"""Training's fan-out on Ray: one task per seed of a population, beside extraction's (:mod:`.workers`).

Each task runs :func:`raymatch.train.population.train_seed` (train or initialise one seed, write its checkpoint and
then its record); the train stage (:mod:`raymatch.engine.stages.train`) runs them through the
:class:`~raymatch.engine.executors.Training` executor, one call per model group. A language-model population
(``task: causal-lm``) trains its tokenizer in one task first, then every seed and the untrained null in one task
each (:func:`train_lm_population`, :mod:`raymatch.train.lm_population`), into ``save_pretrained`` folders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..train import TrainingSpec
from ..train.population import (
    check_done_records,
    check_prefix,
    check_seeds,
    pending_seeds,
    population_keys,
    train_seed,
    trajectory_epochs,
)
from .bounded import Outcome, run_bounded

if TYPE_CHECKING:
    from ..store import Store
    from ..study import Study
    from .stages.train import TrainTask

__all__ = ["train_lm_population", "train_population"]


def train_population(store: Store, arch: str, arch_kwargs: Mapping[str, Any], spec: TrainingSpec,
                     seeds: Iterable[int], *, prefix: str, untrained: bool = False, cpus_per_task: float = 1,
                     gpus_per_task: float = 0, max_in_flight: int = 4, progress: bool | None = None,
                     save_every: int | None = None) -> list[Outcome]:
    """Train (or initialise) one model per seed as Ray tasks, skipping the seeds already done.

    Each task writes ``<prefix>/seed<k>.safetensors`` and then its record ``<prefix>/seed<k>.json``
    (:class:`~raymatch.train.TrainedModel`'s record plus ``checkpoint_key``). A seed is done iff its record exists; done
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
        Write :func:`~raymatch.train.untrained_model` initialisations instead of trained models (the null baseline).
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
    list of Outcome
        One per seed submitted (``item`` = seed, ``result`` = the record as written, or ``error``), in the order
        of ``seeds``; empty when every seed was already done.

    Raises
    ------
    ValueError
        For bad seeds, prefix or arch_kwargs, or when a record already under ``prefix`` was made with another
        architecture, ``arch_kwargs``, kind (trained / untrained) or spec id: use another prefix.
    """
    from ..store import check_key

    seeds = check_seeds(seeds)
    prefix = check_prefix(prefix)
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
    check_done_records(store, prefix, [seed for seed in seeds if seed not in set(todo)], arch, arch_kwargs,
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
    return run_bounded(train_seed, todo, args=task_args, max_in_flight=max_in_flight, label=label, unit="models",
                       progress=progress, **resources)




def lm_seed_task(spec, roots: dict[str, str], tokenizer: str, threads: int, task: TrainTask) -> dict:
    """Task body: one seed of a language-model population, trained or (``task.untrained``) initialised."""
    import os

    from ..train.lm_population import train_lm_seed

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the task's threads are torch's (a Ray worker forks)

    return train_lm_seed(spec, roots["untrained" if task.untrained else "trained"], tokenizer, task.untrained, threads,
                         task.seed)


def train_lm_population(study: Study, tasks: list[TrainTask], *, cpus_per_task: int = 1, max_in_flight: int = 4,
                        progress: bool | None = None) -> list[Outcome]:
    """A language-model population's tokenizer (one Ray task), then its seeds and untrained null (one task each).

    Parameters
    ----------
    study : Study
        With ``population.training: {task: causal-lm, …}``.
    tasks : list of TrainTask
        The seeds whose folder is not complete (:func:`~raymatch.train.lm_population.pending_lm_seeds`).
    cpus_per_task : int
        Ray ``num_cpus`` and torch threads of each task (training runs on the CPU).
    max_in_flight : int
    progress : bool, optional

    Returns
    -------
    list of Outcome
        One per task, in order; only the tokenizer's when it failed.
    """
    from ..train.lm_population import train_lm_tokenizer
    from .lm import lm_roots

    if not tasks:
        return []
    spec, roots = study.population.training.spec, lm_roots(study)
    (tokenizer,) = run_bounded(train_lm_tokenizer, [roots["trained"]], args=(spec,), max_in_flight=1,
                               label="train the tokenizer", progress=progress, num_cpus=cpus_per_task)
    if not tokenizer.ok:
        return [tokenizer]
    return run_bounded(lm_seed_task, tasks, args=(spec, roots, tokenizer.result, max(1, int(cpus_per_task))),
                       max_in_flight=max_in_flight, label="train language models", progress=progress,
                       num_cpus=cpus_per_task)
