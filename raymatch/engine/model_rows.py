"""The ``models`` table: one row per model of a study (id, name, seed, checkpoint, accuracy), written by the driver.

The stages whose tables refer to models (:attr:`Stage.prepare <raymatch.engine.stages.Stage.prepare>`) record
the study's models here first, once their ids are known; a model recorded already is not recorded again (one
recorded without a name, before ``models.name`` existed, is recorded again with it: the latest row wins).
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from ..store.layout import training_record_key, trajectory_record_key

if TYPE_CHECKING:
    from ..store import Store
    from ..study import Study
    from .plan import ModelGroup, Plan

__all__ = ["checkpoint_names", "record_models"]


def record_models(study: Study, store: Store, plan: Plan) -> None:
    """Rows of the ``models`` table for the study's models not recorded yet: id, seed, checkpoint, accuracy."""
    from ..results import append_rows, read_columns

    if not plan.model_ids:
        return
    recorded = read_columns(store, "models", ["population", "model_id", "name"],
                            filters={"study": study.name, "config_hash": study.config_hash})
    # (population, model id) → whether it was recorded with a name: one without is recorded again, named
    known: dict[tuple[str, str], bool] = {}
    for population, model, name in zip(*(recorded.column(column).to_pylist()
                                         for column in ("population", "model_id", "name")), strict=True):
        known[population, model] = known.get((population, model), False) or name is not None
    if study.is_lm:  # language models: name, revision, step (raymatch.engine.lm)
        from .lm import lm_model_rows

        rows = lm_model_rows(study, store, plan, known)
        if rows:
            append_rows(store, "models", rows)
        return
    training, imported = study.population.training, study.population.activations
    architecture = study.architecture.label if study.architecture is not None else f"imported:{imported.layout}"
    rows = []
    for group in plan.groups:
        if group.permute_b_seed is not None:  # the permuted null: the trained models, recorded as such
            continue
        if group.origins is not None:  # a trajectory: its saved epochs (the final weights are rows already)
            rows += _trajectory_model_rows(study, store, plan, group, known, rows)
            continue
        seeds = (training.seeds if training is not None else range(len(group.checkpoints))) if group.prefix else None
        names = ([f"seed{seed}" for seed in seeds] if seeds is not None
                 else list(group.checkpoints) if imported is not None else checkpoint_names(group.checkpoints))
        for index, key in enumerate(group.checkpoints):
            model = plan.model_ids[key]
            if known.get((group.name, model), names[index] is None):
                continue
            seed = seeds[index] if seeds is not None else None
            record = store.read_json(training_record_key(group.prefix, seed)) if seed is not None else {}
            if imported is not None and imported.layout == "authors-npz":  # the authors' rnd_<seed>
                seed = imported.seeds[index]
            rows.append({"study": study.name, "config_hash": study.config_hash, "population": group.name,
                         "model_id": model, "name": names[index], "seed": seed, "checkpoint": key,
                         "architecture": architecture,
                         "holdout_accuracy": record.get("holdout_accuracy"),
                         "test_accuracy": record.get("test_accuracy"),
                         "epochs": record.get("epochs"), "selected_epoch": record.get("selected_epoch"),
                         "epoch": record.get("selected_epoch")})
    if rows:
        append_rows(store, "models", rows)


def _trajectory_model_rows(study: Study, store: Store, plan: Plan, group: ModelGroup, known: dict,
                           rows: list[dict]) -> list[dict]:
    """``models`` rows of a trajectory's saved epochs not recorded yet (population ``trajectory``, ``epoch`` e).

    A saved epoch with the same weights as a model recorded already (its seed's selected epoch) is not recorded
    again: the ``models`` table has one row per model id.
    """
    taken = {model for (_, model), named in known.items() if named} | {row["model_id"] for row in rows}
    added = []
    for key, (seed, epoch) in zip(group.checkpoints, group.origins, strict=True):
        model = plan.model_ids[key]
        if epoch is None or model in taken:
            continue
        taken.add(model)
        record = store.read_json(trajectory_record_key(group.prefix, seed, epoch))
        added.append({"study": study.name, "config_hash": study.config_hash, "population": group.name,
                      "model_id": model, "name": f"seed{seed}@epoch{epoch}", "seed": seed, "checkpoint": key,
                      "architecture": study.architecture.name,
                      "holdout_accuracy": record.get("holdout_accuracy"), "test_accuracy": None,
                      "epochs": study.population.training.spec.epochs, "selected_epoch": None, "epoch": epoch})
    return added


def checkpoint_names(keys: list[str]) -> list[str]:
    """Each checkpoint's path relative to the folder the population's checkpoints share (the population's root).

    ``checkpoints/vgg/a/best.pt`` and ``checkpoints/vgg/b/best.pt`` are ``a/best.pt`` and ``b/best.pt``; keys,
    absolute paths and URIs alike (``s3://bucket/run3/model.pt``). With no folder in common, the keys themselves.
    """
    folders = [posixpath.dirname(key).split("/") for key in keys]
    shared = 0
    while folders and all(len(parts) > shared and parts[shared] == folders[0][shared] for parts in folders):
        shared += 1
    return [key.split("/", shared)[-1] for key in keys] if shared else list(keys)
