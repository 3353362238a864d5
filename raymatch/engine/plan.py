"""Planning a study from what its store holds: the model groups, and per stage the tasks still to do.

Nothing here runs anything or writes to the store. :func:`make_plan` resolves the study's model groups (the
trained population and the untrained null baseline), then asks every declared stage (:mod:`.stages`) what it
has done and what is left. A stage whose inputs do not exist yet (extraction before the models are trained,
pair tasks before the activations are stored) is planned as *not known yet*, and planned again once the stage
before it has run.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

from ..store import Store

__all__ = ["ModelGroup", "Plan", "PlanContext", "StagePlan", "make_plan", "population_policy", "resolve_population"]


@dataclass
class ModelGroup:
    """One group of models a study compares among themselves: the trained population or the null baseline.

    Attributes
    ----------
    name : {'trained', 'untrained', 'permuted', 'trajectory'}
        The ``population`` column of its rows (``trajectory``: the saved epochs of each trained seed, compared
        within the seed).
    checkpoints : list of str
        Checkpoint keys in population order.
    reference : int, optional
        Position of the reference model (``pairs: reference``).
    prefix : str, optional
        Where the study trains (or initialises) the group's checkpoints; None for checkpoints given by the user.
    train_todo : list of int
        Seeds whose checkpoint is not stored yet.
    permute_b_seed : int, optional
        Set for the permuted-row null: the trained checkpoints again, each pair's model b with its activation rows
        permuted by this seed (see :class:`~raymatch.engine.tasks.MatchTask`); its models are the trained ones
        (no training, extraction, factors or ``models`` rows of their own).
    position_pairs : list of (int, int), optional
        The pairs, as positions in ``checkpoints``, when the group sets them itself (``trajectory``: within each
        seed); otherwise the study's pair policy decides.
    origins : list of (int, int or None), optional
        ``(seed, epoch)`` of each checkpoint of a ``trajectory`` group (epoch None: the seed's final weights).
    """

    name: str
    checkpoints: list[str]
    reference: int | None = None
    prefix: str | None = None
    train_todo: list[int] = field(default_factory=list)
    permute_b_seed: int | None = None
    position_pairs: list[tuple[int, int]] | None = None
    origins: list[tuple[int, int | None]] | None = None


@dataclass
class StagePlan:
    """What one stage has stored and what it still has to do.

    Attributes
    ----------
    tasks : list
        The stage's work items still to do (each run by the stage's task function).
    done : int
        Units already stored (in the stage's :attr:`~raymatch.engine.stages.Stage.unit`).
    known : bool
        False while the stage's inputs do not exist yet: ``tasks`` and ``done`` are then empty.
    """

    tasks: list = field(default_factory=list)
    done: int = 0
    known: bool = True


#: A stage not plannable yet: what it needs is made by a stage before it.
NOT_KNOWN_YET = StagePlan(known=False)


@dataclass
class Plan:
    """What a study needs and what of it is already stored, per declared stage.

    Attributes
    ----------
    groups : list of ModelGroup
    layers : list of str
        Module names in network order.
    model_ids : dict
        Checkpoint key → model id (content digest), once every checkpoint exists.
    stages : dict
        Stage name → :class:`StagePlan`, in the order of :data:`~raymatch.engine.stages.STAGES`.
    """

    groups: list[ModelGroup]
    layers: list[str]
    model_ids: dict[str, str] = field(default_factory=dict)
    stages: dict[str, StagePlan] = field(default_factory=dict)

    @property
    def checkpoints(self) -> list[str]:
        """Every checkpoint of every group (trained first), each once (the permuted null reuses the trained)."""
        return list(dict.fromkeys(key for group in self.groups for key in group.checkpoints))

    def __getitem__(self, stage: str) -> StagePlan:
        return self.stages[stage]

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per stage in run order: ``(done, to do)`` in the stage's unit; ``(0, 0)`` for a stage not known yet.

        Units: models (train, extract), models × layers × repeats (factor), pairs × layers × repeats (match,
        cka), pairs × layers × repeats × ε (simple).
        """
        from .stages import STAGES

        return {stage.name: (self.stages[stage.name].done, sum(map(stage.size, self.stages[stage.name].tasks)))
                for stage in STAGES}

    def known(self) -> dict[str, bool]:
        """Per stage: whether its work is known yet (see :class:`StagePlan`)."""
        return {name: stage.known for name, stage in self.stages.items()}


class PlanContext:
    """What the stage planners share: the study, its store, the plan so far, and store reads made once.

    With ``retry_failed``, a pair whose only rows are failed ones counts as missing (``raymatch run
    --retry-failed``).
    """

    def __init__(self, study, store: Store, plan: Plan, *, retry_failed: bool = False,
                 known_ids: dict[str, str] | None = None):
        self.study, self.store, self.plan = study, store, plan
        self.retry_failed = retry_failed
        self.known_ids = dict(known_ids or {})  # checkpoint key → model id, from an earlier plan of this run
        self._repeats: dict[tuple[str, str], int | None] = {}

    def stored_repeats(self, matrices) -> dict[tuple[str, str], int | None]:
        """:func:`~raymatch.store.activations.stored_repeats` of ``(model id, layer)`` pairs, read in one batch.

        Remembered for the planning pass: each matrix's manifests are read once, whichever planner asks.
        """
        from ..store.activations import stored_repeats_of

        matrices = list(dict.fromkeys(matrices))
        missing = [matrix for matrix in matrices if matrix not in self._repeats]
        if missing:
            self._repeats.update(stored_repeats_of(self.store, self.study.probe.id, missing))
        return {matrix: self._repeats[matrix] for matrix in matrices}

    @functools.cached_property
    def pair_units(self) -> list[tuple[ModelGroup, str, int, list[tuple[str, str]], dict[str, int]]]:
        """``(group, layer, repeat, pairs, positions)`` for every group × layer × stored repeat."""
        from ..study import pair_positions

        repeats = self.stored_repeats((self.plan.model_ids[group.checkpoints[0]], layer)
                                      for group in self.plan.groups if group.checkpoints for layer in self.plan.layers)
        units = []
        for group in self.plan.groups:
            ids = [self.plan.model_ids[key] for key in group.checkpoints]
            positions = {model: index for index, model in enumerate(ids)}
            chosen = group.position_pairs
            if chosen is None:
                chosen = pair_positions(population_policy(self.study.pairs), len(ids), group.reference)
            # a saved epoch that is the selected one is the final model itself: no pair
            pairs = list(dict.fromkeys((ids[i], ids[j]) for i, j in chosen if ids[i] != ids[j]))
            for layer in self.plan.layers:
                for repeat in range(repeats[ids[0], layer]):
                    units.append((group, layer, repeat, pairs, positions))
        return units

    @functools.cache  # noqa: B019 - one context per planning pass
    def stored_pairs(self, table: str) -> frozenset[tuple]:
        """(population, layer, repeat, model_a, model_b) of every pair ``table`` holds rows of for this study.

        One scan of the table's log and identity columns, filtered to the study's current configuration. Work is
        planned per pair, not per task: when the population grows, only the new pairs are computed, whichever
        blocks they fall in. A pair with a row is done (failed rows included: ``raymatch status`` lists them),
        unless the context retries failed pairs: then only a pair with an ``"ok"`` row is done.
        """
        from ..results import read_columns

        columns = ["population", "layer", "repeat", "model_a", "model_b"]
        filters = {"study": self.study.name, "config_hash": self.study.config_hash}
        if self.retry_failed and "status" in _table_columns(table):
            filters["status"] = "ok"
        rows = read_columns(self.store, table, columns, filters=filters)
        return frozenset(zip(*(rows.column(name).to_pylist() for name in columns), strict=True))

    @functools.cached_property
    def finished_tasks(self) -> frozenset[str]:
        """Ids of the tasks recorded as done in the ``tasks`` table for this study (simple matches)."""
        from ..results import read_columns

        rows = read_columns(self.store, "tasks", ["task_id"],
                            filters={"study": self.study.name, "config_hash": self.study.config_hash})
        return frozenset(rows.column("task_id").to_pylist())

    def missing_pairs(self, table: str, group: ModelGroup, layer: str, repeat: int,
                      pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs of one unit that ``table`` holds no rows of."""
        stored = self.stored_pairs(table)
        return [pair for pair in pairs if (group.name, layer, repeat, *pair) not in stored]

    @functools.cached_property
    def stored_factors(self) -> frozenset[str]:
        """Every key under the probe's factor root (one listing)."""
        from ..store.layout import factor_root

        return frozenset(self.store.list(factor_root(self.study.probe.id)))

    @functools.cached_property
    def spatial_layers(self) -> frozenset[str]:
        """The study's layers with more than one position per example (conv layers), from a ``meta`` forward pass."""
        import math

        from ..extract.shapes import output_shapes
        from ..probes.datasets import IMAGE_SHAPES

        shapes = output_shapes(self.study.architecture, IMAGE_SHAPES[self.study.probe.dataset])
        return frozenset(name for name, shape in shapes.items() if len(shape) > 1 and math.prod(shape[1:]) > 1)

    @functools.cached_property
    def pooled_layers(self) -> tuple[str, ...]:
        """The conv layers whose per-example means extraction stores too (``cross_layers.pool: mean``)."""
        cross = self.study.cross_layers
        if cross is None or cross.pool != "mean":
            return ()
        return tuple(name for name in self.study.cross_layer_names if name in self.spatial_layers)

    @functools.cached_property
    def cross_units(self) -> list[tuple[ModelGroup, str, str, str, str, int, list[tuple[str, str]]]]:
        """``(group, layer_a, layer_b, matrix_a, matrix_b, repeat, pairs)`` of ``cross_layers``.

        Pairs of models first, then (``within_model``) each model against itself; none without ``cross_layers``.
        Same-layer units only with ``pool: mean`` (see :mod:`.cross`).

        The trajectory group is not compared across layers.
        """
        from .cross import layer_pairs, matrix_layer

        cross = self.study.cross_layers
        if cross is None:
            return []
        layers = list(self.study.cross_layer_names)
        units = []
        for group, layer, repeat, pairs, _ in self.pair_units:
            if group.name == "trajectory" or layer != layers[0]:
                continue  # one pass per (group, repeat) of the first cross layer: its repeats are every layer's
            if cross.pool == "mean" and repeat > 0:
                continue  # per-example matrices: one repeat
            ids = list(dict.fromkeys(self.plan.model_ids[key] for key in group.checkpoints))
            for same_model, chosen in ((False, pairs), (True, [(m, m) for m in ids] if cross.within_model else [])):
                for layer_a, layer_b in layer_pairs(layers, same_model, cross.pool == "mean") if chosen else []:
                    matrix_a = matrix_layer(layer_a, layer_a in self.spatial_layers, cross.pool)
                    matrix_b = matrix_layer(layer_b, layer_b in self.spatial_layers, cross.pool)
                    units.append((group, layer_a, layer_b, matrix_a, matrix_b, repeat, list(chosen)))
        return units

    @functools.cached_property
    def stored_cross(self) -> frozenset[tuple]:
        """(population, layer_a, layer_b, pool, repeat, model_a, model_b) of the study's ``cross_curves`` rows.

        Of the study's current configuration (one scan of the table's identity columns).
        """
        from ..results import read_columns

        columns = ["population", "layer_a", "layer_b", "pool", "repeat", "model_a", "model_b"]
        rows = read_columns(self.store, "cross_curves", columns,
                            filters={"study": self.study.name, "config_hash": self.study.config_hash})
        return frozenset(zip(*(rows.column(name).to_pylist() for name in columns), strict=True))

    def missing_cross(self, group: ModelGroup, layer_a: str, layer_b: str, repeat: int,
                      pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs of one cross unit that ``cross_curves`` holds no rows of."""
        pool = self.study.cross_layers.pool
        return [pair for pair in pairs
                if (group.name, layer_a, layer_b, pool, repeat, *pair) not in self.stored_cross]

    @functools.cached_property
    def simple_tasks(self) -> tuple[list[Any], int]:
        """The simple-match tasks still to do, and how many are stored."""
        from .tasks import SimpleTask

        study, simple = self.study, self.study.simple_matches
        if not simple.enabled:
            return [], 0
        layers = set(study.simple_layer_names)
        todo, done = [], 0
        for group, layer, repeat, pairs, _ in self.pair_units:
            if layer not in layers or group.name != "trained":
                continue
            for pair in pairs:
                for eps in simple.eps:
                    task = SimpleTask(study.name, study.config_hash, study.probe.id, layer, repeat, pair, eps,
                                      study.center, simple.max_neurons)
                    if task.task_id in self.finished_tasks:
                        done += 1
                    else:
                        todo.append(task)
        return todo, done


def _table_columns(table: str) -> list[str]:
    from ..results.schema import table_schema

    return table_schema(table).names


def resolve_population(study, store: Store) -> list[str]:
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


def population_policy(pairs: Any) -> str:
    """The pair policy across a population's models: ``pairs`` itself, or ``'all'`` for ``{reference: final}``."""
    return pairs if isinstance(pairs, str) else "all"


def _trajectory_group(study, trained: ModelGroup) -> ModelGroup:
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


def _groups(study, store: Store) -> list[ModelGroup]:
    from ..study import untrained_prefix
    from ..train import pending_seeds, population_keys, trajectory_epochs

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


def make_plan(study, store: Store, *, retry_failed: bool = False, known_ids: dict[str, str] | None = None) -> Plan:
    """Resolve the model groups and ask every stage what is stored and what is left, running nothing.

    Parameters
    ----------
    study : raymatch.study.Study
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
    from .stages import STAGES

    plan = Plan(_groups(study, store), list(study.layer_names))
    context = PlanContext(study, store, plan, retry_failed=retry_failed, known_ids=known_ids)
    for stage in STAGES:
        plan.stages[stage.name] = stage.plan(context)
    return plan
