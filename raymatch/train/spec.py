"""How a population is trained: :class:`TrainingSpec` and the named recipes."""

from __future__ import annotations

import itertools
import math
import operator
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from ..store.layout import digest

if TYPE_CHECKING:
    pass

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


# ------------------------------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class TrainingSpec:
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
    ValueError
        Naming every field that has a wrong type or an out-of-range value.
    """

    dataset: str
    recipe: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]
    gamma: float
    augment: bool
    holdout: float = 0.1
    n_train: int | None = None
    data_dir: str | None = None
    select: str = "best-holdout"

    def __post_init__(self) -> None:
        checked, problems = _check_spec(self)
        if problems:
            raise ValueError("invalid training spec: " + "; ".join(problems))
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (``milestones`` as a list)."""
        data = {spec_field.name: getattr(self, spec_field.name) for spec_field in fields(self)}
        data["milestones"] = list(self.milestones)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingSpec:
        """Build a spec from a mapping such as :meth:`to_dict`'s output or a study file's section.

        Keys that are left out take the defaults of the named ``recipe`` (``'quick'`` when that is left out
        too), so ``{'recipe': 'paper-cifar', 'data_dir': ...}`` is the paper's training.

        Raises
        ------
        ValueError
            For a key that is not a field (named in the message), an unknown recipe, or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a training spec must be a mapping of field names to values, got {type(data).__name__}")
        _reject_unknown(data)
        overrides = dict(data)
        name = overrides.pop("recipe", "quick")
        return recipe(name, **overrides)

    @property
    def id(self) -> str:
        """16 hex characters of the SHA-256 of the canonical JSON of :meth:`to_dict` without ``data_dir``."""
        data = self.to_dict()
        del data["data_dir"]
        return digest(data)


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
    ValueError
        For an unknown recipe name, an override that is not a field (named), or invalid values.
    """
    if not isinstance(name, str) or name not in _RECIPE_DEFAULTS:
        raise ValueError(f"recipe: unknown training recipe {name!r} (known: {', '.join(RECIPES)})")
    _reject_unknown(overrides)
    if "recipe" in overrides:
        raise ValueError("recipe: name the recipe as the first argument of recipe(), not as an override")
    return TrainingSpec(**{**_RECIPE_DEFAULTS[name], "recipe": name, **overrides})


def _reject_unknown(data: Mapping[str, Any]) -> None:
    known = [spec_field.name for spec_field in fields(TrainingSpec)]
    unknown = [key for key in data if key not in known]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise ValueError(f"unknown training spec key{plural} {names} (known: {', '.join(known)})")


class _Invalid(Exception):
    """One field's problem, collected by :func:`_check_spec`."""


def _check_spec(spec: TrainingSpec) -> tuple[dict[str, Any], list[str]]:
    """Check every field; return the normalised values and one message per bad field."""
    from ..probes.datasets import available_datasets  # imports torch through raymatch.probes

    def integer(value: Any, minimum: int) -> int:
        number = _as_int(value, minimum)
        if number is None:
            raise _Invalid(f"must be an integer ≥ {minimum}, got {value!r}")
        return number

    def real(value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = True) -> float:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _Invalid(f"must be a number in {interval}, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise _Invalid(f"must be a finite number in {interval}, got {value!r}")
        below = number <= low if low_open else number < low
        above = number >= high if high_open else number > high
        if below or above:
            raise _Invalid(f"must be in {interval}, got {value!r}")
        return number

    def choice(value: Any, options: Iterable[str]) -> str:
        options = list(options)
        if not isinstance(value, str) or value not in options:
            raise _Invalid(f"must be one of {', '.join(repr(option) for option in options)}, got {value!r}")
        return value

    def milestones(value: Any) -> tuple[int, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise _Invalid(f"must be a list of increasing epochs ≥ 1, got {value!r}")
        epochs = tuple(integer(item, 1) for item in value)
        if any(later <= earlier for earlier, later in itertools.pairwise(epochs)):
            raise _Invalid(f"must be strictly increasing, got {list(epochs)}")
        return epochs

    def boolean(value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise _Invalid(f"must be true or false, got {value!r}")
        return bool(value)

    def optional_path(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)):
            raise _Invalid(f"must be a folder path or null, got {value!r}")
        return os.fspath(value)

    checks = {
        "dataset": lambda value: choice(value, available_datasets()),
        "recipe": lambda value: choice(value, RECIPES),
        "epochs": lambda value: integer(value, 0),
        "batch_size": lambda value: integer(value, 1),
        "lr": lambda value: real(value, 0.0, math.inf, low_open=True),
        "momentum": lambda value: real(value, 0.0, 1.0),
        "weight_decay": lambda value: real(value, 0.0, math.inf),
        "milestones": milestones,
        "gamma": lambda value: real(value, 0.0, math.inf, low_open=True),
        "augment": boolean,
        "holdout": lambda value: real(value, 0.0, 1.0),
        "n_train": lambda value: None if value is None else integer(value, 1),
        "data_dir": optional_path,
        "select": lambda value: choice(value, SELECTIONS),
    }
    checked: dict[str, Any] = {}
    problems: list[str] = []
    for name, check in checks.items():
        try:
            checked[name] = check(getattr(spec, name))
        except _Invalid as problem:
            problems.append(f"{name} {problem}")
    if checked.get("select") == "best-holdout" and checked.get("holdout") == 0.0:
        problems.append("holdout must be > 0 with select='best-holdout' (or use select='last')")
    return checked, problems


def _as_int(value: Any, minimum: int) -> int | None:
    """``value`` as an int when it is an integer (not a bool) ≥ ``minimum``, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = operator.index(value)
    except TypeError:
        return None
    return number if number >= minimum else None
