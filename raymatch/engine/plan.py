"""What a plan holds: the study's model groups, and per stage what is stored and what is left (data only).

:func:`raymatch.engine.planning.make_plan` makes a :class:`Plan` from a study and its store, asking every declared
stage (:data:`raymatch.engine.stages.STAGES`) what it has done and what is left. A stage whose inputs do not exist
yet (extraction before the models are trained, pair tasks before the activations are stored) is planned as *not
known yet* (:data:`NOT_KNOWN_YET`), and planned again once the stage before it has run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NOT_KNOWN_YET", "ModelGroup", "Plan", "StagePlan"]


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
    models : list of NamedModel, optional
        A language-model study's models, one per checkpoint (:class:`raymatch.study.lm.NamedModel`: what to
        resolve and load, the name of its ``models`` row); its checkpoints are their folders or Hub ``id@revision``.
    """

    name: str
    checkpoints: list[str]
    reference: int | None = None
    prefix: str | None = None
    train_todo: list[int] = field(default_factory=list)
    permute_b_seed: int | None = None
    position_pairs: list[tuple[int, int]] | None = None
    origins: list[tuple[int, int | None]] | None = None
    models: list | None = None


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
    todo : int
        Units still to do: the sizes of ``tasks`` (:attr:`Stage.size <raymatch.engine.stages.Stage.size>`), set by
        :func:`~raymatch.engine.planning.make_plan`.
    """

    tasks: list = field(default_factory=list)
    done: int = 0
    known: bool = True
    todo: int = 0


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
        return {name: (stage.done, stage.todo) for name, stage in self.stages.items()}

    def known(self) -> dict[str, bool]:
        """Per stage: whether its work is known yet (see :class:`StagePlan`)."""
        return {name: stage.known for name, stage in self.stages.items()}
