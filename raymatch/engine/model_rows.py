"""The ``models`` table: one row per model of a study (id, seed, checkpoint, accuracy), written by the driver.

The stages whose tables refer to models (:attr:`Stage.prepare <raymatch.engine.stages.Stage.prepare>`) record
the study's models here first, once their ids are known; a model recorded already is not recorded again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..store.layout import training_record_key, trajectory_record_key

if TYPE_CHECKING:
    from ..store import Store
    from ..study import Study
    from .plan import ModelGroup, Plan

__all__ = ["record_models"]


def record_models(study: Study, store: Store, plan: Plan) -> None:
    """Rows of the ``models`` table for the study's models not recorded yet: id, seed, checkpoint, accuracy."""
    from ..results import append_rows, read_columns

    if not plan.model_ids:
        return
    recorded = read_columns(store, "models", ["population", "model_id"],
                            filters={"study": study.name, "config_hash": study.config_hash})
    known = set(zip(*(recorded.column(name).to_pylist() for name in ("population", "model_id")), strict=True))
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
        for index, key in enumerate(group.checkpoints):
            model = plan.model_ids[key]
            if (group.name, model) in known:
                continue
            seed = seeds[index] if seeds is not None else None
            record = store.read_json(training_record_key(group.prefix, seed)) if seed is not None else {}
            if imported is not None and imported.layout == "authors-npz":  # the authors' rnd_<seed>
                seed = imported.seeds[index]
            rows.append({"study": study.name, "config_hash": study.config_hash, "population": group.name,
                         "model_id": model, "seed": seed, "checkpoint": key, "architecture": architecture,
                         "holdout_accuracy": record.get("holdout_accuracy"),
                         "test_accuracy": record.get("test_accuracy"),
                         "epochs": record.get("epochs"), "selected_epoch": record.get("selected_epoch"),
                         "epoch": record.get("selected_epoch")})
    if rows:
        append_rows(store, "models", rows)


def _trajectory_model_rows(study: Study, store: Store, plan: Plan, group: ModelGroup, known: set,
                           rows: list[dict]) -> list[dict]:
    """``models`` rows of a trajectory's saved epochs not recorded yet (population ``trajectory``, ``epoch`` e).

    A saved epoch with the same weights as a model recorded already (its seed's selected epoch) is not recorded
    again: the ``models`` table has one row per model id.
    """
    taken = {model for _, model in known} | {row["model_id"] for row in rows}
    added = []
    for key, (seed, epoch) in zip(group.checkpoints, group.origins, strict=True):
        model = plan.model_ids[key]
        if epoch is None or model in taken:
            continue
        taken.add(model)
        record = store.read_json(trajectory_record_key(group.prefix, seed, epoch))
        added.append({"study": study.name, "config_hash": study.config_hash, "population": group.name,
                      "model_id": model, "seed": seed, "checkpoint": key, "architecture": study.architecture.name,
                      "holdout_accuracy": record.get("holdout_accuracy"), "test_accuracy": None,
                      "epochs": study.population.training.spec.epochs, "selected_epoch": None, "epoch": epoch})
    return added
