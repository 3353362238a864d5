"""A language-model population as a study names it: folders, a glob over folders, or Hub ids × seeds × revisions.

- ``models: [folder-or-id, …]``: the models listed;
- ``glob: "lm-seeds/*"``: the folders a pattern matches, in sorted order;
- ``hub: "org/name-seed{seed}", seeds: […], revisions: […]``: every seed × revision (a revision is a checkpoint of
  the training trajectory: ``step1000`` is step 1000).

Nothing is resolved or loaded here (:mod:`raymatch.models.transformers_source` does that).
"""

from __future__ import annotations

import glob as globbing
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .checkpoint import CheckpointError

__all__ = ["LMModel", "ModelSourceError", "expand_population", "seed_of", "step_of"]

_SEED = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)
_STEP = re.compile(r"^(?:step|ckpt|checkpoint)[_-]?(\d+)(k?)$", re.IGNORECASE)


class ModelSourceError(CheckpointError):
    """A model (folder or Hub id) that cannot be found, resolved offline or loaded; the message names it."""


@dataclass(frozen=True)
class LMModel:
    """One model of a population, as the study names it.

    Attributes
    ----------
    name : str
        A folder or a Hub id (``org/name``), as written.
    revision : str, optional
        A Hub revision (branch, tag or commit); None: the Hub's ``main``. Folders have none.
    seed : int, optional
        The seed: the ``{seed}`` of a ``hub`` pattern, else the number after ``seed`` in the folder's or id's name.
    step : int, optional
        The training step of the revision (``step1000`` → 1000, ``step_20k`` → 20000); None when it names none.
    """

    name: str
    revision: str | None = None
    seed: int | None = None
    step: int | None = None

    @property
    def label(self) -> str:
        """``name`` or ``name@revision``: how messages and the ``models`` table name the model."""
        return f"{self.name}@{self.revision}" if self.revision else self.name

    def to_dict(self) -> dict[str, Any]:
        """name, revision, seed and step (the ``models`` table's columns)."""
        return {"name": self.name, "revision": self.revision, "seed": self.seed, "step": self.step}


def seed_of(name: str) -> int | None:
    """The number after ``seed`` in a folder's or id's last part (``lm-seeds/seed3`` → 3), or None."""
    found = _SEED.findall(os.path.basename(os.path.normpath(name)))
    return int(found[-1]) if found else None


def step_of(revision: str | None) -> int | None:
    """The training step a revision names (``step1000`` → 1000, ``step_20k`` → 20000), or None."""
    match = _STEP.match(revision or "")
    if not match:
        return None
    return int(match.group(1)) * (1000 if match.group(2) else 1)


def _hub_models(pattern: str, seeds: Sequence[int] | None, revisions: Sequence[str] | None) -> list[LMModel]:
    if not isinstance(pattern, str) or not pattern:
        raise ModelSourceError(f"population.hub: must be a Hub id pattern like 'org/name-seed{{seed}}'; "
                               f"got {pattern!r}")
    rest = pattern.replace("{seed}", "")
    if "{" in rest or "}" in rest:
        raise ModelSourceError(f"population.hub: {pattern!r}: the only placeholder is {{seed}}")
    if "{seed}" in pattern and not seeds:
        raise ModelSourceError(f"population.seeds: required by the pattern {pattern!r}")
    if seeds and "{seed}" not in pattern:
        raise ModelSourceError(f"population.hub: {pattern!r} has no {{seed}} for population.seeds")
    for i, seed in enumerate(seeds or ()):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ModelSourceError(f"population.seeds[{i}]: must be a non-negative integer; got {seed!r}")
    for i, revision in enumerate(revisions or ()):
        if not isinstance(revision, str) or not revision:
            raise ModelSourceError(f"population.revisions[{i}]: must be a non-empty string; got {revision!r}")
    models = []
    for seed in seeds or [None]:
        name = pattern if seed is None else pattern.replace("{seed}", str(seed))
        for revision in revisions or [None]:
            models.append(LMModel(name, revision, seed if seed is not None else seed_of(name), step_of(revision)))
    return models


def expand_population(models: Sequence[str] | None = None, glob: str | None = None, hub: str | None = None,
                      seeds: Sequence[int] | None = None, revisions: Sequence[str] | None = None) -> list[LMModel]:
    """The models of a population section, in order; nothing is resolved or loaded yet.

    Parameters
    ----------
    models : list of str, optional
        Folders or Hub ids.
    glob : str, optional
        A pattern over local folders (relative to the working directory); the folders it matches, sorted.
    hub : str, optional
        A Hub id pattern with ``{seed}``, expanded for every seed in ``seeds`` and every revision in ``revisions``.
    seeds : list of int, optional
    revisions : list of str, optional
        Hub revisions (None: ``main``); ``step<N>`` names step N.

    Returns
    -------
    list of LMModel

    Raises
    ------
    ModelSourceError
        Not exactly one of ``models``, ``glob``, ``hub``; seeds or revisions without ``hub``; an empty list, a glob
        matching no folder, a duplicated model; one line naming the field.
    """
    given = [key for key, value in (("models", models), ("glob", glob), ("hub", hub)) if value is not None]
    if len(given) != 1:
        raise ModelSourceError("population: give exactly one of models, glob or hub"
                               + (f" (got {', '.join(given)})" if given else ""))
    if hub is None and (seeds is not None or revisions is not None):
        raise ModelSourceError("population: seeds and revisions go with hub: 'org/name-seed{seed}'")
    if models is not None:
        if isinstance(models, str) or not models:
            raise ModelSourceError("population.models: must be a non-empty list of folders or Hub ids")
        for i, name in enumerate(models):
            if not isinstance(name, str) or not name:
                raise ModelSourceError(f"population.models[{i}]: must be a folder or a Hub id; got {name!r}")
        found = [LMModel(name, None, seed_of(name)) for name in models]
    elif glob is not None:
        folders = sorted(path for path in globbing.glob(os.path.expanduser(glob)) if os.path.isdir(path))
        if not folders:
            raise ModelSourceError(f"population.glob: {glob!r} matches no folder")
        found = [LMModel(path, None, seed_of(path)) for path in folders]
    else:
        found = _hub_models(hub, seeds, revisions)
    labels = [model.label for model in found]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ModelSourceError(f"population: {label} is listed twice")
    return found
