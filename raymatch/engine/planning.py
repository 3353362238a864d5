"""Planning a study from what its store holds: the model groups, and per stage the tasks still to do.

Nothing here runs anything or writes to the store. :func:`make_plan` resolves the study's model groups (the
trained population, its trajectory, the null baselines), then asks every declared stage (:data:`~raymatch.engine
.stages.STAGES`, in run order) what it has stored and what is left, each through its own planner and a shared
:class:`~raymatch.engine.context.PlanContext`. A stage whose inputs do not exist yet (extraction before the models
are trained, pair tasks before the activations are stored: :attr:`Stage.reads <raymatch.engine.stages.Stage.reads>`)
is planned as *not known yet*, and planned again once the stages before it have run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from typing import TYPE_CHECKING

from .context import PlanContext
from .plan import NOT_KNOWN_YET, ModelGroup, Plan, StagePlan
from .stages import STAGES, Stage

if TYPE_CHECKING:
    from ..store import Store
    from ..study import Study

__all__ = ["make_plan", "model_groups", "resolve_population"]


def make_plan(study: Study, store: Store, *, retry_failed: bool = False,
              known_ids: dict[str, str] | None = None) -> Plan:
    """Resolve the model groups and ask every stage what is stored and what is left, running nothing.

    Parameters
    ----------
    study : Study
    store : Store
    retry_failed : bool, default False
        Plan the pairs whose only stored rows are failed ones again (by default a failed row is done work).
    known_ids : dict, optional
        Checkpoint key → model id from an earlier plan of the same run: those checkpoints are not read and hashed
        again (on S3 that is every checkpoint's bytes once more) unless their activations are still to extract.

    Returns
    -------
    Plan

    Raises
    ------
    ValueError
        A population that cannot be resolved, a corrupt or mismatched checkpoint, or two checkpoints that are
        the same model: before anything is written.
    """
    plan = Plan(model_groups(study, store), list(study.layer_names))
    wanted = [stage for stage in STAGES if stage.wanted(study)]
    context = PlanContext(study, store, plan, retry_failed=retry_failed, known_ids=known_ids,
                          factor_readers=tuple(stage.factor_reads for stage in wanted if stage.factor_reads),
                          pooled_readers=tuple(stage.pooled_layers for stage in wanted if stage.pooled_layers))
    for stage in STAGES:
        planned = _plan_stage(stage, context)
        plan.stages[stage.name] = dataclasses.replace(planned, todo=sum(map(stage.size, planned.tasks)))
    return plan


def _plan_stage(stage: Stage, context: PlanContext) -> StagePlan:
    """Nothing for a stage the study does not ask for; not known yet while a stage it reads has work left."""
    if not stage.wanted(context.study):
        return StagePlan()
    if any(context.plan[name].tasks or not context.plan[name].known for name in stage.reads):
        return NOT_KNOWN_YET
    return stage.plan(context)


def resolve_population(study: Study, store: Store) -> list[str]:
    """The study's checkpoints: the explicit list, the trained seeds' keys, or the store keys matching its glob.

    A study importing its activations has no checkpoints: its models' names stand in for them.

    Raises
    ------
    ValueError
        A glob matching fewer than 2 checkpoints.
    """
    population = study.population
    if population.checkpoints:
        return list(population.checkpoints)
    if population.activations is not None:  # imported: the models' names (seed<k>, or as listed)
        return population.activations.model_names
    if population.training is not None:
        from ..train import population_keys

        return population_keys(population.training.prefix(study.architecture), population.training.seeds)
    pattern = population.glob
    prefix = pattern.split("*", 1)[0].rsplit("/", 1)[0] if "/" in pattern else ""
    found = [key for key in store.list(prefix) if fnmatch.fnmatch(key, pattern)]
    if len(found) < 2:
        raise ValueError(f"population.glob {pattern!r} matches {len(found)} checkpoint(s) in {store.uri}; "
                         "a study needs at least 2 models")
    return found


def _trajectory_group(study: Study, trained: ModelGroup) -> ModelGroup:
    """The saved epochs and the final weights of each trained seed, paired within the seed by the pair policy.

    ``consecutive``: epoch e with e + k; ``{reference: final}``: each saved epoch with the seed's final
    (selected) weights; ``all``: every two of the seed's saved epochs and final weights.
    """
    from ..train import trajectory_epochs, trajectory_keys

    training = study.population.training
    epochs = trajectory_epochs(training.spec.epochs, training.save_every)
    checkpoints: list[str] = []
    origins: list[tuple[int, int | None]] = []
    pairs: list[tuple[int, int]] = []
    for seed, final in zip(training.seeds, trained.checkpoints, strict=True):
        start = len(checkpoints)
        checkpoints += [*trajectory_keys(trained.prefix, seed, epochs), final]
        origins += [(seed, epoch) for epoch in epochs] + [(seed, None)]
        last = len(checkpoints) - 1
        if study.pairs == "consecutive":
            pairs += list(itertools.pairwise(range(start, last)))
        elif study.pairs == "all":
            pairs += list(itertools.combinations(range(start, last + 1), 2))
        else:  # {reference: final}
            pairs += [(position, last) for position in range(start, last)]
    return ModelGroup("trajectory", checkpoints, prefix=trained.prefix, position_pairs=pairs, origins=origins)


def model_groups(study: Study, store: Store) -> list[ModelGroup]:
    """The groups of models a study compares among themselves, in order.

    The trained population (or the checkpoints given), the saved epochs of its seeds (``save_every``:
    ``trajectory``), and the null baselines asked for (``untrained``, ``permuted``).

    Raises
    ------
    ValueError
        A population that cannot be resolved, or a ``reference`` that is not in it.
    """
    from ..study import untrained_prefix
    from ..train import pending_seeds, population_keys, trajectory_epochs

    if study.is_lm:  # language models: folders, Hub revisions or the seeds the study trains
        from .lm import lm_model_groups

        return lm_model_groups(study)
    checkpoints = resolve_population(study, store)
    training = study.population.training
    reference = None
    if study.pairs == "reference":
        names = [f"seed{seed}" for seed in training.seeds] if training is not None else checkpoints
        if study.reference not in names:
            raise ValueError(f"reference {study.reference!r} is not in the population ({len(names)} models)")
        reference = names.index(study.reference)
    trained = ModelGroup("trained", checkpoints, reference)
    if training is not None:
        trained.prefix = training.prefix(study.architecture)
        trained.train_todo = pending_seeds(store, trained.prefix, training.seeds,
                                           trajectory_epochs(training.spec.epochs, training.save_every))
    groups = [trained]
    if training is not None and training.save_every is not None:
        groups.append(_trajectory_group(study, trained))
    if "untrained" in study.null_baseline:
        seeds = training.seeds if training is not None else tuple(range(len(checkpoints)))
        prefix = untrained_prefix(study.architecture)
        groups.append(ModelGroup("untrained", population_keys(prefix, seeds), reference, prefix,
                                 pending_seeds(store, prefix, seeds)))
    if "permuted" in study.null_baseline:
        from .tasks import PERMUTATION_SEED

        groups.append(ModelGroup("permuted", list(checkpoints), reference, permute_b_seed=PERMUTATION_SEED))
    return groups
