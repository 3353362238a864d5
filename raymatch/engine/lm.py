"""Language-model studies in the engine: their model groups, the extract stage's token jobs, their ``models`` rows.

A language-model study (``architecture.source: transformers``) goes through the same stages as any other; what
differs is here. Its models are folders or Hub revisions (:mod:`raymatch.study.lm`); a Hub population's revisions
are the step axis of the trajectory pairs (each seed's last revision is its final model, compared across seeds;
its revisions are compared within the seed by the pair policy); extraction runs one
:class:`~raymatch.extract.tokens.TokenExtractionJob` per model whose layers are not stored, on the extraction
executor (GPU actors where the cluster has GPUs); model ids are :func:`~raymatch.models.lm_model_id`. From the
stored token rows on, the factor, match, simple and cross stages run unchanged.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

from .plan import ModelGroup, StagePlan

if TYPE_CHECKING:
    from ..store import Store
    from ..study import Study
    from .context import PlanContext
    from .plan import Plan

__all__ = ["lm_model_groups", "lm_model_rows", "lm_roots", "plan_token_extraction"]


def lm_roots(study: Study) -> dict[str, str]:
    """``{'trained': folder, 'untrained': folder}`` of a study that trains its language models."""
    from ..study.lm import training_root

    training = study.population.training
    roots = {kind: training_root(training, study.store, study.base, kind) for kind in ("trained", "untrained")}
    if roots["trained"] is None:
        raise ValueError("population.training.folder: required with an s3:// store (the save_pretrained folders "
                         "are local)")
    return roots


def _prefix(study: Study, kind: str) -> str:
    """Where a trained population's folders are: their store prefix (for ``gc``), or the folder outside the store."""
    from ..store import layout

    training = study.population.training
    return lm_roots(study)[kind] if training.spec.folder is not None else layout.lm_prefix(kind, training.spec.id)


def _trained_groups(study: Study) -> list[ModelGroup]:
    from ..study.lm import study_models
    from ..train.lm_population import pending_lm_seeds

    seeds, roots = study.population.training.seeds, lm_roots(study)
    groups = []
    for kind in ("trained", "untrained") if "untrained" in study.null_baseline else ("trained",):
        models = study_models(study, kind)
        groups.append(ModelGroup(kind, [named.model.label for named in models], prefix=_prefix(study, kind),
                                 train_todo=pending_lm_seeds(roots[kind], seeds), models=models))
    return groups


def _along_revisions(study: Study) -> list[ModelGroup]:
    """Each seed's last revision (``trained``), and its revisions paired within the seed (``trajectory``)."""
    from ..study.lm import study_models

    by_seed: dict[str, list] = {}
    for named in study_models(study):
        by_seed.setdefault(named.model.name, []).append(named)
    finals = [revisions[-1] for revisions in by_seed.values()]
    groups = [ModelGroup("trained", [named.model.label for named in finals], models=finals)]
    if len(study.population.revisions) < 2:
        return groups
    ordered, pairs = [], []
    for revisions in by_seed.values():
        start, last = len(ordered), len(ordered) + len(revisions) - 1
        ordered += revisions
        if study.pairs == "consecutive":
            pairs += list(itertools.pairwise(range(start, last + 1)))
        elif study.pairs == "all":
            pairs += list(itertools.combinations(range(start, last + 1), 2))
        else:  # {reference: final}: each revision with the seed's last one
            pairs += [(position, last) for position in range(start, last)]
    groups.append(ModelGroup("trajectory", [named.model.label for named in ordered], position_pairs=pairs,
                             models=ordered))
    return groups


def lm_model_groups(study: Study) -> list[ModelGroup]:
    """The groups a language-model study compares: the models (or trained seeds), a trajectory, the nulls.

    Raises
    ------
    ValueError
        A ``reference`` that is not one of the models' names.
    """
    groups = _trained_groups(study) if study.population.training is not None else _along_revisions(study)
    if study.pairs == "reference":
        names = [named.name for named in groups[0].models]
        if study.reference not in names:
            raise ValueError(f"reference {study.reference!r} is not in the population ({', '.join(names)})")
        for group in groups:
            group.reference = names.index(study.reference)
    if "permuted" in study.null_baseline:
        from .tasks import PERMUTATION_SEED

        trained = groups[0]
        groups.append(ModelGroup("permuted", list(trained.checkpoints), trained.reference,
                                 permute_b_seed=PERMUTATION_SEED, models=trained.models))
    return groups


def plan_token_extraction(context: PlanContext) -> StagePlan:
    """One token job per model with a layer not stored; every model resolved and identified here, before Ray.

    Raises
    ------
    ValueError
        A model that cannot be resolved, two models with the same weights, a probe asking for more rows than it
        has real tokens, a tokenizer that does not exist.
    """
    from ..extract.tokens import TokenExtractionJob
    from ..models import lm_model_id, resolve_model
    from ..models.transformers_source import hub_cache_dir
    from .stages.extract import check_distinct

    study, plan = context.study, context.plan
    probe = study.text_probe
    if probe is None:
        raise ValueError("probe: the population's tokenizer does not exist (has the train stage run?)")
    for repeat in range(probe.tokens.repeats):
        probe.rows(repeat)  # more rows than real tokens: refused here, before Ray
    architecture = study.architecture
    models = {}
    for group in plan.groups:
        for key, named in zip(group.checkpoints, group.models, strict=True):
            if key not in plan.model_ids:
                resolved = resolve_model(named.model)
                plan.model_ids[key] = lm_model_id(resolved, architecture.model_class, architecture.dtype)
                models[key] = named
    check_distinct(plan.model_ids)
    repeats = context.stored_repeats((model, layer) for model in plan.model_ids.values() for layer in plan.layers)
    cache = hub_cache_dir()  # where the driver found the Hub models: every node must see it at that path
    jobs = [TokenExtractionJob(named.model, probe, tuple(study.layers), architecture.model_class, architecture.dtype,
                               cache_dir=cache) for key, named in models.items()
            if any(repeats[plan.model_ids[key], layer] is None for layer in plan.layers)]
    return StagePlan(jobs, len(models) - len(jobs))


def lm_model_rows(study: Study, store: Store, plan: Plan, known: dict) -> list[dict]:
    """``models`` rows of a language-model study's models not recorded yet: name, seed, revision, step."""
    from ..train.causal_lm import RECORD

    rows, taken = [], {model for _, model in known}
    for group in plan.groups:
        if group.permute_b_seed is not None:  # the permuted null: the trained models, recorded as such
            continue
        for key, named in zip(group.checkpoints, group.models, strict=True):
            model = plan.model_ids[key]
            if (group.name, model) in known or model in taken:
                continue
            taken.add(model)
            step = named.model.step
            record = os.path.join(named.model.name, RECORD) if study.population.training is not None else None
            if record is not None and os.path.isfile(record):
                import json

                with open(record) as handle:
                    step = json.load(handle).get("steps", step)
            rows.append({"study": study.name, "config_hash": study.config_hash, "population": group.name,
                         "model_id": model, "name": named.name, "seed": named.model.seed, "checkpoint": key,
                         "architecture": study.architecture.label, "revision": named.model.revision, "step": step})
    return rows
