"""How a population is trained: :class:`TrainingSpec`, the named recipes, and a study's :class:`Training` (seeds)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails

from ..config import (
    Boolean,
    Config,
    ConfigError,
    Loc,
    NonNegativeInt,
    NonNegativeNumber,
    OptionalLocalPath,
    OptionalPositiveInt,
    PositiveInt,
    PositiveNumber,
    ProperFraction,
    Seeds,
    is_integer,
    is_list,
    one_of,
    problem_at,
    relocated,
    shown,
    worded,
)
from ..probes.datasets import SPLITS
from ..store import layout
from ..store.layout import digest
from .lm_spec import CAUSAL_LM, CausalLMSpec

#: The recipe names a :class:`TrainingSpec` may carry.
RECIPES = ("quick", "paper-cifar")

#: How the checkpoint is chosen among the epochs: best holdout accuracy (ties → earliest), or the last epoch.
SELECTIONS = ("best-holdout", "last")


_RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Tuned so that small_cnn at width 0.5 reaches ~97 % test accuracy on digits in well under a second on one
    # CPU thread; on Fashion-MNIST, small_cnn at width 1 takes ~30 s per epoch on one thread (86 % after one).
    "quick": {
        "dataset": "digits",
        "epochs": 12,
        "batch_size": 64,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": (8,),
        "gamma": 0.1,
        "augment": False,
    },
    # The paper's CIFAR-10 training (Wang et al. 2018, §5 and the authors' code).
    "paper-cifar": {
        "dataset": "cifar10",
        "epochs": 160,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": (80, 120),
        "gamma": 0.1,
        "augment": True,
    },
}


# ------------------------------------------------------------------------------------------------------ fields


def _as_int(value: Any, minimum: int) -> int | None:
    """``value`` as an int when it is an integer (not a bool) ≥ ``minimum``, else None."""
    return int(value) if is_integer(value) and value >= minimum else None


def _increasing(epochs: tuple[int, ...]) -> tuple[int, ...]:
    if any(later <= earlier for earlier, later in itertools.pairwise(epochs)):
        raise ValueError(f"must be strictly increasing; got {list(epochs)}")
    return epochs


#: Epochs after which the learning rate drops: strictly increasing, each ≥ 1.
Milestones = Annotated[tuple[PositiveInt, ...], worded("a list of increasing epochs ≥ 1", accept=is_list),
                       AfterValidator(_increasing)]
Recipe = Annotated[Literal[RECIPES], worded(lambda value: f"unknown training recipe {value!r} (known: "
                                                          f"{', '.join(RECIPES)})")]


# ------------------------------------------------------------------------------------------------------ the spec


class TrainingSpec(Config):
    """How every model of a population is trained (everything but the seed and the architecture).

    Parameters
    ----------
    dataset : str
        A :func:`~raymatch.probes.load_dataset` name: ``'digits'``, ``'fashion-mnist'`` or ``'cifar10'``.
        Training uses its ``'train'`` split, the reported test accuracy its ``'test'`` split.
    recipe : {'quick', 'paper-cifar'}
        The recipe the numbers came from (see :func:`recipe`); a label, every number is explicit.
    epochs : int
        Passes over the training images, ≥ 0. Zero trains nothing and keeps the initialisation; null
        baselines are made with :func:`untrained_model`, whose records say so.
    batch_size : int
        Minibatch size, ≥ 1.
    lr : float
        Initial SGD learning rate, > 0.
    momentum : float
        SGD momentum, in [0, 1).
    weight_decay : float
        L2 weight decay (SGD's ``weight_decay``), ≥ 0.
    milestones : tuple of int
        Epochs (strictly increasing, ≥ 1) after which the learning rate is multiplied by ``gamma``.
    gamma : float
        Learning-rate factor at each milestone, > 0.
    augment : bool
        Random crop with padding 4 (padded with each channel's background, its minimum over the training
        images) and a random horizontal flip, drawn per image and epoch from the seed's generator.
    holdout : float, default 0.1
        Fraction of the train split held out for checkpoint selection, in [0, 1); must be > 0 with
        ``select='best-holdout'``. The held-out images are fixed per dataset (:func:`holdout_split`).
    n_train : int, optional
        Train on at most this many of the remaining images (a fixed subset), for tests and quick runs.
    data_dir : str, optional
        Where the dataset's files are (see :func:`~raymatch.probes.load_dataset`). Not part of :attr:`id`.
    select : {'best-holdout', 'last'}, default 'best-holdout'
        Keep the weights of the epoch with the best holdout accuracy (ties → earliest), or of the last epoch.

    Raises
    ------
    raymatch.config.ConfigError
        A ``ValueError`` naming every unknown key and every field that has a wrong type or an out-of-range
        value, one line each (``lr: must be in (0, inf), got -1``).
    """

    dataset: one_of(*SPLITS)
    recipe: Recipe
    epochs: NonNegativeInt
    batch_size: PositiveInt
    lr: PositiveNumber
    momentum: ProperFraction
    weight_decay: NonNegativeNumber
    milestones: Milestones
    gamma: PositiveNumber
    augment: Boolean
    holdout: ProperFraction = 0.1
    n_train: OptionalPositiveInt = None
    data_dir: OptionalLocalPath = None
    select: one_of(*SELECTIONS) = "best-holdout"

    _root: ClassVar[str] = "training spec"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if values.get("select") == "best-holdout" and values.get("holdout") == 0.0:
            return [(("holdout",), "must be > 0 with select='best-holdout' (or use select='last')")]
        return []

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSpec:
        """Build a spec from a mapping such as :meth:`to_dict`'s output or a study file's section.

        Keys that are left out take the defaults of the named ``recipe`` (``'quick'`` when that is left out
        too), so ``{'recipe': 'paper-cifar', 'data_dir': ...}`` is the paper's training.

        Parameters
        ----------
        data : mapping
            Field names to values.

        Returns
        -------
        TrainingSpec

        Raises
        ------
        raymatch.config.ConfigError
            Naming every key that is not a field, an unknown recipe, and every invalid value.
        """
        return super().from_dict(with_recipe_defaults(data))

    @property
    def id(self) -> str:
        """16 hex characters of the SHA-256 of the canonical JSON of :meth:`to_dict` without ``data_dir``."""
        data = self.to_dict()
        del data["data_dir"]
        return digest(data)


def with_recipe_defaults(data: Any) -> Any:
    """A training spec's fields: ``data`` over the defaults of the recipe it names (``'quick'`` when none).

    Parameters
    ----------
    data : mapping
        Some of :class:`TrainingSpec`'s fields; anything else is returned as it is, for the checks to report.

    Returns
    -------
    dict or object
        Every field of the recipe, overridden by ``data``; an unknown recipe takes ``'quick'``'s defaults (and
        keeps its name, for the checks to report).
    """
    if not isinstance(data, Mapping):
        return data
    name = data.get("recipe", "quick")
    defaults = _RECIPE_DEFAULTS.get(name, _RECIPE_DEFAULTS["quick"]) if isinstance(name, str) else {}
    return {**defaults, "recipe": name, **data}


def recipe(name: str, **overrides: Any) -> TrainingSpec:
    """A :class:`TrainingSpec` with a named recipe's defaults, some of them overridden.

    Parameters
    ----------
    name : {'quick', 'paper-cifar'}
        ``'paper-cifar'`` is the paper's CIFAR-10 training: dataset ``cifar10``, 160 epochs of SGD with
        momentum 0.9, weight decay 5e-4, batch 128, learning rate 0.1 multiplied by 0.1 after epochs 80 and
        120, random crop (padding 4) and horizontal flip. The paper trained VGG16 with learning rate 0.05:
        pass ``lr=0.05`` for it.
        ``'quick'`` trains small nets on digits or Fashion-MNIST on a CPU: dataset ``digits``, 12 epochs of SGD
        with momentum 0.9, weight decay 5e-4, batch 64, learning rate 0.05 multiplied by 0.1 after epoch 8,
        no augmentation. ``small_cnn`` at width 0.5 reaches ~97 % test accuracy on digits in well under a
        second on one thread; on Fashion-MNIST ``small_cnn`` at width 1 takes about 30 s per epoch on one
        thread and reaches ~86 % test accuracy after the first.
        Both hold out 10 % of the train split and keep the epoch with the best holdout accuracy.
    **overrides
        Any other :class:`TrainingSpec` field, e.g. ``dataset='fashion-mnist'``, ``epochs=3``, ``n_train=500``.

    Returns
    -------
    TrainingSpec

    Raises
    ------
    raymatch.config.ConfigError
        A ``ValueError`` for an unknown recipe name, or naming every override that is not a field and every
        invalid value.
    """
    if not isinstance(name, str) or name not in _RECIPE_DEFAULTS:
        raise ConfigError([f"recipe: unknown training recipe {name!r} (known: {', '.join(RECIPES)})"])
    if "recipe" in overrides:
        raise ConfigError(["recipe: name the recipe as the first argument of recipe(), not as an override"])
    return TrainingSpec(**{**_RECIPE_DEFAULTS[name], "recipe": name, **overrides})


class Training(Config):
    """A population the study trains itself: one model per seed, all with one training recipe.

    Parameters
    ----------
    seeds : tuple of int
        Distinct non-negative seeds, at least two; their order is the population order.
    spec : raymatch.train.TrainingSpec or raymatch.train.lm_spec.CausalLMSpec
        The recipe and its settings (dataset, epochs, optimiser, held-out split …); with ``task: causal-lm``
        (a ``source: transformers`` architecture) a :class:`~raymatch.train.lm_spec.CausalLMSpec` (corpus,
        tokenizer and GPT-2 sizes, steps …).
    save_every : int, optional
        Also keep each seed's weights after every ``save_every``-th epoch: its training trajectory, compared
        within the seed (see :attr:`Study.pairs <raymatch.study.Study.pairs>`). Not part of the study's config hash.

    Notes
    -----
    In a study file the seeds and the spec's fields sit side by side, fields left out taking the recipe's
    defaults (:func:`recipe`)::

        training: {seeds: [0, 1, 2, 3], recipe: quick, dataset: digits, epochs: 8}
        training: {seeds: [0, 1, 2, 3], task: causal-lm, corpus: /usr/share/games/fortunes, steps: 400}
    """

    seeds: Seeds
    spec: TrainingSpec | CausalLMSpec
    save_every: OptionalPositiveInt = None

    _path: ClassVar[str] = "population.training"
    #: The spec's fields sit beside the seeds in a study file (:mod:`raymatch.config.paths` follows them there).
    _inline: ClassVar[tuple[str, ...]] = ("spec",)

    @classmethod
    def _collect(cls, data: Any) -> tuple[dict[str, Any], list[InitErrorDetails]]:
        if not isinstance(data, Mapping):
            return {}, [problem_at((), "must be a mapping of seeds, recipe and training settings; got "
                                       f"{shown(data)}", data)]
        if isinstance(data.get("spec"), (TrainingSpec, CausalLMSpec)):
            return super()._collect(data)  # built in code: Training(seeds=..., spec=...)
        own = ("seeds", "save_every")
        spec_class = CausalLMSpec if data.get("task") == CAUSAL_LM else TrainingSpec
        allowed = ", ".join((*own, *spec_class.model_fields))
        unknown = [problem_at((key,), f"unknown key (allowed: {allowed})", data) for key in data
                   if key not in (*own, "task") and key not in spec_class.model_fields]
        if "task" in data and data["task"] != CAUSAL_LM:
            unknown.append(problem_at(("task",), f"must be {CAUSAL_LM} (a language model; without task: an image "
                                                 f"classifier of the zoo); got {shown(data['task'])}", data))
        settings = {key: value for key, value in data.items() if key in spec_class.model_fields}
        try:
            spec = spec_class.model_validate(with_recipe_defaults(settings) if spec_class is TrainingSpec
                                             else settings)
            spec_problems = []
        except ValidationError as error:  # located among the seeds: the spec's fields sit beside them
            spec, spec_problems = None, relocated(error)
        values, problems = super()._collect({**{key: data[key] for key in own if key in data},
                                             **({"spec": spec} if spec is not None else {})})
        problems = [problem for problem in problems if tuple(problem["loc"]) != ("spec",)]
        return values, unknown + problems + spec_problems

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        spec = TrainingSpec.model_json_schema()
        seeds = {**TypeAdapter(Seeds).json_schema(),
                 "description": "Distinct non-negative seeds, one model each, in population order."}
        save_every = {**TypeAdapter(OptionalPositiveInt).json_schema(),
                      "description": "Keep every k-th epoch's weights: the seed's training trajectory."}
        language = CausalLMSpec.model_json_schema()
        properties = {"seeds": seeds, "save_every": save_every,
                      **{name: {key: value for key, value in schema.items() if key != "default"}
                         for name, schema in spec["properties"].items()},
                      **{name: schema for name, schema in language["properties"].items()
                         if name not in spec["properties"]}}
        properties["task"] = {**properties["task"], "description": "causal-lm: a language model (a transformers "
                              "architecture); the corpus and the GPT-2's sizes replace the image recipe's fields."}
        return {"title": "Training", "type": "object", "properties": properties, "required": ["seeds"],
                "additionalProperties": False,
                "description": "Seeds trained with one recipe; fields left out take the recipe's defaults. With "
                               "task: causal-lm, a language model's corpus and sizes (CausalLMSpec)."}

    def to_dict(self) -> dict[str, Any]:
        """The seeds and the spec's fields side by side, as in a study file (``save_every`` only when set).

        Returns
        -------
        dict
        """
        every = {} if self.save_every is None else {"save_every": self.save_every}
        return {"seeds": list(self.seeds), **every, **self.spec.to_dict()}

    @property
    def is_lm(self) -> bool:
        """Whether the seeds are language models (``task: causal-lm``)."""
        return isinstance(self.spec, CausalLMSpec)

    def prefix(self, architecture: Any) -> str:
        """Store prefix of the trained checkpoints: ``checkpoints/<arch>/trained-<digest of architecture and spec>``.

        Parameters
        ----------
        architecture : raymatch.models.Architecture

        Returns
        -------
        str
        """
        if self.is_lm:
            return layout.lm_prefix("trained", self.spec.id)
        return layout.trained_prefix(architecture.name, architecture.to_dict(), self.spec.id)
