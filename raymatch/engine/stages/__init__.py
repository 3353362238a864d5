"""The stages of a study, one module each, listed here in run order.

Each module declares one :class:`Stage`: how it plans from the store (what is stored, what is left), what it reads
and writes, what one task runs and which executor runs its tasks. :func:`~raymatch.engine.planning.make_plan`, the
run loop (:mod:`raymatch.engine.run`), :meth:`Plan.counts <raymatch.engine.plan.Plan.counts>`, the ``runs``
record and ``raymatch status``/``plan`` all loop over :data:`STAGES` and know no stage by name: a new stage is one
more module here and one more entry in :data:`STAGES`.

The modules import no torch (a cold Ray worker imports the module of its task body).
"""

from __future__ import annotations

from .cross import CROSS
from .extract import EXTRACT
from .factor import FACTOR
from .match import MATCH
from .simple import SIMPLE
from .stage import EXECUTORS, Stage
from .train import TRAIN

__all__ = ["EXECUTORS", "STAGES", "Stage", "stage_named"]

#: Every stage, in run order.
STAGES: tuple[Stage, ...] = (TRAIN, EXTRACT, FACTOR, MATCH, SIMPLE, CROSS)


def stage_named(name: str) -> Stage:
    """The declared stage called ``name``."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r} (stages: {', '.join(stage.name for stage in STAGES)})")
