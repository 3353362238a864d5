"""Training populations of networks: one recipe, many seeds, each checkpoint selected on a fixed holdout.

A population is one architecture trained with one :class:`TrainingSpec` from many seeds. The seed alone
decides the initialisation (``torch.manual_seed`` before :func:`~raymatch.models.build_model`) and the
order of the minibatches and augmentations (a ``numpy.random.Generator``), so on the CPU the same seed
gives a byte-identical checkpoint.

Checkpoint selection never looks at the test split. The paper's authors selected each network's checkpoint
by its accuracy on the CIFAR-10 test set, which is also the probe set they matched activations on; here a
fixed fraction of the *train* split (:func:`holdout_split`, the same images for every seed) is held out for
selection, and the test split, the probe of the matches, is only evaluated once, on the selected weights.

:func:`train_population` fans a population out as Ray tasks and writes, per seed::

    <prefix>/seed<k>.safetensors   the selected weights (safetensors)
    <prefix>/seed<k>.json          the training record, written last: a seed is done iff its record exists

so a re-run trains only the seeds whose record is missing. :func:`untrained_model` (``untrained=True``)
writes the initialisations instead, the null baseline: seed ``k``'s untrained model is exactly the
starting point of seed ``k``'s training.

Importing this module does not import torch or Ray; the functions that need them import them when called.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import operator
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .runner import Outcome
    from .store import Store

__all__ = [
    "HOLDOUT_SEED",
    "RECIPES",
    "SELECTIONS",
    "TrainedModel",
    "TrainingSpec",
    "holdout_split",
    "pending_seeds",
    "population_keys",
    "recipe",
    "record_key",
    "train_model",
    "train_population",
    "untrained_model",
]

#: The recipe names a :class:`TrainingSpec` may carry.
RECIPES = ("quick", "paper-cifar")

#: How the checkpoint is chosen among the epochs: best holdout accuracy (ties → earliest), or the last epoch.
SELECTIONS = ("best-holdout", "last")

#: Seed of the permutation that splits a train split into training and holdout images. It is a constant, never
#: a model's seed: every model of every population on a dataset selects on the same held-out images.
HOLDOUT_SEED = 1810_11750

_ID_HEX_CHARS = 16
_EVAL_BATCH = 1024
_CROP_PADDING = 4

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
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:_ID_HEX_CHARS]


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
    from .probes.datasets import available_datasets  # imports torch through raymatch.probes

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


# --------------------------------------------------------------------------------------------- the holdout split


def holdout_split(n_examples: int, holdout: float, n_train: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a train split of ``n_examples`` images into training and holdout indices.

    One fixed permutation (seeded by :data:`HOLDOUT_SEED`, not by any model's seed) puts the first
    ``round(holdout * n_examples)`` images (at least one when ``holdout > 0``) in the holdout; ``n_train``
    caps the training images at the first ``n_train`` of the rest in the same permutation. The holdout
    therefore does not depend on ``n_train`` either.

    Parameters
    ----------
    n_examples : int
        Number of images in the train split.
    holdout : float
        Fraction held out, in [0, 1).
    n_train : int, optional
        Cap on the number of training images.

    Returns
    -------
    train_indices : numpy.ndarray, int64, shape (n_train_used,)
        Sorted indices into the train split.
    holdout_indices : numpy.ndarray, int64, shape (n_holdout,)
        Sorted indices into the train split, disjoint from ``train_indices``.

    Raises
    ------
    ValueError
        When nothing would be left to train on.
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(n_examples).astype(np.int64)
    n_holdout = 0 if holdout == 0 else max(1, math.floor(holdout * n_examples + 0.5))
    if n_holdout >= n_examples:
        raise ValueError(f"holding out {n_holdout} of {n_examples} training images leaves none to train on")
    rest = order[n_holdout:]
    if n_train is not None:
        rest = rest[:n_train]
    return np.sort(rest), np.sort(order[:n_holdout])


# -------------------------------------------------------------------------------------------------- training


@dataclass
class TrainedModel:
    """A trained (or initialised) model: its checkpoint and how it came about.

    Attributes
    ----------
    checkpoint : bytes
        The selected weights as safetensors bytes (:func:`~raymatch.models.checkpoint_bytes`).
    record : dict
        JSON-able: ``kind`` (``'trained'`` / ``'untrained'``), ``seed``, ``arch``, ``arch_kwargs``,
        ``dataset``, ``training`` (the spec's :meth:`~TrainingSpec.to_dict`, None when untrained), ``spec_id``
        (None when untrained), ``epochs`` (run), ``selected_epoch``, ``test_accuracy`` (of the selected
        weights on the test split; None for an untrained model made without a dataset), ``n_test``,
        ``seconds``, ``device``, ``threads``, ``torch_version``, ``code_version`` and ``checkpoint_id``;
        trained models also have ``holdout_accuracy`` (of the selected weights; None without a holdout),
        ``holdout_accuracy_history`` and ``train_loss`` (one mean training loss per epoch), ``n_train`` and
        ``n_holdout``. :func:`train_population` adds ``checkpoint_key``.
    """

    checkpoint: bytes
    record: dict[str, Any]


def train_model(arch: str, arch_kwargs: Mapping[str, Any], spec: TrainingSpec, seed: int, *, threads: int = 1,
                device: str = "cpu") -> TrainedModel:
    """Train one model from one seed and keep the weights selected on the holdout.

    The seed fixes everything random: ``torch.manual_seed(seed)`` before
    :func:`~raymatch.models.build_model` (so the starting point is ``untrained_model(arch, arch_kwargs,
    seed)``), and ``numpy.random.default_rng(seed)`` for the minibatch order and the augmentations. On the
    CPU, with the same ``threads`` and torch version, the same seed gives byte-identical checkpoints
    (``torch.use_deterministic_algorithms`` is on while training, in warn-only mode). The caller's torch
    RNG state, thread count and determinism setting are restored afterwards.

    Selection never sees the test split: each epoch is scored on the fixed holdout of the train split
    (:func:`holdout_split`), and only the selected weights are evaluated on the test split. (The paper's
    authors selected checkpoints on the CIFAR-10 test set, which is also the probe their matches were
    computed on.)

    Parameters
    ----------
    arch : str
        A :func:`~raymatch.models.build_model` name.
    arch_kwargs : mapping
        Its keyword arguments (``in_channels``, ``num_classes``, ``width``, ``input_size``); they must fit the
        dataset's images, e.g. ``{'in_channels': 1, 'input_size': 8}`` for digits.
    spec : TrainingSpec
    seed : int
        ≥ 0.
    threads : int, default 1
        ``torch.set_num_threads`` while training.
    device : str, default 'cpu'
        ``'cpu'`` or ``'cuda'`` (``'cuda:<i>'``); CUDA falls back to the CPU, with a warning, when torch
        sees no GPU. The record says which device was used.

    Returns
    -------
    TrainedModel

    Raises
    ------
    ValueError
        For a bad seed or thread count, or a model that does not fit the dataset's images or labels.
    raymatch.probes.DatasetError
        When the dataset cannot be loaded.
    """
    import torch

    from .models import build_model, checkpoint_bytes, checkpoint_id
    from .probes.datasets import load_dataset

    started = time.perf_counter()
    seed, threads = _check_seed(seed), _check_threads(threads)
    arch_kwargs = dict(arch_kwargs)
    device = _resolve_device(torch, device)
    images, labels = load_dataset(spec.dataset, "train", spec.data_dir)  # (N, C, H, W) float32, (N,) int64
    train_indices, holdout_indices = holdout_split(len(labels), spec.holdout, spec.n_train)
    rng = np.random.default_rng(seed)
    # Pad crops with each channel's background (a black pixel once normalised), as padding before normalising does.
    pad_values = images.min(axis=(0, 2, 3)) if spec.augment else None

    with _torch_settings(torch, threads, device):
        torch.manual_seed(seed)
        model = build_model(arch, **arch_kwargs).to(device)
        _check_fits(torch, model, images, labels, arch, arch_kwargs, spec.dataset, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                    weight_decay=spec.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(spec.milestones), gamma=spec.gamma)

        def holdout_accuracy() -> float | None:
            return _accuracy(torch, model, images, labels, holdout_indices, device) if len(holdout_indices) else None

        selected_state, selected_epoch = _state_on_cpu(model), 0
        best = holdout_accuracy() if spec.epochs == 0 else None
        losses: list[float] = []
        history: list[float | None] = []
        for epoch in range(1, spec.epochs + 1):
            losses.append(_train_epoch(torch, model, optimizer, images, labels, train_indices, spec, rng, pad_values,
                                       device))
            scheduler.step()
            accuracy = holdout_accuracy()
            history.append(accuracy)
            if spec.select == "last" or epoch == 1 or accuracy > best:  # strict: ties keep the earliest epoch
                selected_state, selected_epoch, best = _state_on_cpu(model), epoch, accuracy
        model.load_state_dict(selected_state)
        test_images, test_labels = load_dataset(spec.dataset, "test", spec.data_dir)
        test_accuracy = _accuracy(torch, model, test_images, test_labels, None, device)
        checkpoint = checkpoint_bytes(model)

    record = {
        **_record_base("trained", seed, arch, arch_kwargs, spec.dataset, threads, device, torch),
        "training": spec.to_dict(),
        "spec_id": spec.id,
        "epochs": spec.epochs,
        "selected_epoch": selected_epoch,
        "holdout_accuracy": best,
        "holdout_accuracy_history": history,
        "train_loss": losses,
        "test_accuracy": test_accuracy,
        "n_train": len(train_indices),
        "n_holdout": len(holdout_indices),
        "n_test": len(test_labels),
        "seconds": time.perf_counter() - started,
        "checkpoint_id": checkpoint_id(checkpoint),
    }
    return TrainedModel(checkpoint, record)


def untrained_model(arch: str, arch_kwargs: Mapping[str, Any], seed: int, *, dataset: str | None = None,
                    data_dir: str | None = None, threads: int = 1) -> TrainedModel:
    """The initialisation of seed ``seed``: the null baseline, and the starting point of :func:`train_model`.

    Parameters
    ----------
    arch : str
        A :func:`~raymatch.models.build_model` name.
    arch_kwargs : mapping
        Its keyword arguments.
    seed : int
        ≥ 0; ``torch.manual_seed(seed)`` then :func:`~raymatch.models.build_model`, on the CPU.
    dataset : str, optional
        When given, the record's ``test_accuracy`` is measured on this dataset's test split (about chance).
    data_dir : str, optional
        Where the dataset's files are.
    threads : int, default 1
        ``torch.set_num_threads`` while building and evaluating.

    Returns
    -------
    TrainedModel
        Its record has ``kind='untrained'``, ``epochs=0``, ``training=None`` and ``spec_id=None``.
    """
    import torch

    from .models import build_model, checkpoint_bytes, checkpoint_id

    started = time.perf_counter()
    seed, threads = _check_seed(seed), _check_threads(threads)
    arch_kwargs = dict(arch_kwargs)
    with _torch_settings(torch, threads, "cpu"):
        torch.manual_seed(seed)
        model = build_model(arch, **arch_kwargs)
        test_accuracy, n_test = None, None
        if dataset is not None:
            from .probes.datasets import load_dataset

            test_images, test_labels = load_dataset(dataset, "test", data_dir)
            _check_fits(torch, model, test_images, test_labels, arch, arch_kwargs, dataset, "cpu")
            test_accuracy, n_test = _accuracy(torch, model, test_images, test_labels, None, "cpu"), len(test_labels)
        model.eval()
        checkpoint = checkpoint_bytes(model)
    record = {
        **_record_base("untrained", seed, arch, arch_kwargs, dataset, threads, "cpu", torch),
        "training": None,
        "spec_id": None,
        "epochs": 0,
        "selected_epoch": 0,
        "test_accuracy": test_accuracy,
        "n_test": n_test,
        "seconds": time.perf_counter() - started,
        "checkpoint_id": checkpoint_id(checkpoint),
    }
    return TrainedModel(checkpoint, record)


def _record_base(kind: str, seed: int, arch: str, arch_kwargs: dict, dataset: str | None, threads: int,
                 device: str, torch: Any) -> dict[str, Any]:
    from . import __version__

    return {"kind": kind, "seed": seed, "arch": arch, "arch_kwargs": arch_kwargs, "dataset": dataset,
            "device": device, "threads": threads, "torch_version": torch.__version__, "code_version": __version__}


def _as_int(value: Any, minimum: int) -> int | None:
    """``value`` as an int when it is an integer (not a bool) ≥ ``minimum``, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = operator.index(value)
    except TypeError:
        return None
    return number if number >= minimum else None


def _check_seed(seed: Any) -> int:
    number = _as_int(seed, 0)
    if number is None:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return number


def _check_threads(threads: Any) -> int:
    number = _as_int(threads, 1)
    if number is None:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return number


def _resolve_device(torch: Any, device: str) -> str:
    if device == "cpu":
        return device
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        if torch.cuda.is_available():
            return device
        warnings.warn(f"device {device!r} asked for but torch sees no GPU: training on the CPU", stacklevel=3)
        return "cpu"
    raise ValueError(f"device must be 'cpu' or 'cuda' ('cuda:<index>'), got {device!r}")


@contextlib.contextmanager
def _torch_settings(torch: Any, threads: int, device: str):
    """Threads, deterministic algorithms and a private RNG for the block; the caller's settings come back."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cuda_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    if cuda_devices:
        # cuBLAS is only deterministic with a fixed workspace; it must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)


def _check_fits(torch: Any, model: Any, images: np.ndarray, labels: np.ndarray, arch: str, arch_kwargs: dict,
                dataset: str, device: str) -> None:
    """Fail early, naming the mismatch, when the model cannot take the dataset's images or labels.

    The probe forward pass runs in eval mode: it updates no batch-norm statistics and draws no random numbers.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(torch.tensor(images[:2], device=device))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        shape = tuple(images.shape[1:])
        raise ValueError(f"{arch} with arch_kwargs {arch_kwargs} does not take {dataset} images of shape {shape} "
                         f"(set in_channels / input_size to fit them): {first_line}") from None
    finally:
        model.train(was_training)
    n_classes = int(labels.max()) + 1
    if outputs.ndim != 2 or outputs.shape[1] < n_classes:
        raise ValueError(f"{arch} with arch_kwargs {arch_kwargs} gives outputs of shape {tuple(outputs.shape[1:])} "
                         f"per image, but {dataset} has {n_classes} classes")


def _state_on_cpu(model: Any) -> dict[str, Any]:
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


def _train_epoch(torch: Any, model: Any, optimizer: Any, images: np.ndarray, labels: np.ndarray,
                 train_indices: np.ndarray, spec: TrainingSpec, rng: np.random.Generator,
                 pad_values: np.ndarray | None, device: str) -> float:
    """One pass over the training images in the seed's order; returns the mean training loss."""
    model.train()
    order = rng.permutation(len(train_indices))
    batches = [order[start:start + spec.batch_size] for start in range(0, len(order), spec.batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()  # batch norm cannot normalise a single image's 1×1 features in training mode
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for positions in batches:
        chosen = train_indices[positions]
        batch = images[chosen]  # (B, C, H, W), a fresh copy
        if pad_values is not None:
            batch = _augment(batch, rng, pad_values)
        inputs = torch.from_numpy(batch).to(device)
        targets = torch.from_numpy(labels[chosen]).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * len(chosen)  # stays on the device: no synchronisation per batch
        count += len(chosen)
    return float(total.item() / count)


def _augment(batch: np.ndarray, rng: np.random.Generator, pad_values: np.ndarray) -> np.ndarray:
    """Random crop with padding 4 and random horizontal flip, per image.

    Parameters
    ----------
    batch : numpy.ndarray, float32, shape (B, C, H, W)
    rng : numpy.random.Generator
        Draws, in this order, the B vertical offsets, the B horizontal offsets and the B flips.
    pad_values : numpy.ndarray, shape (C,)
        The value of the padding per channel.

    Returns
    -------
    numpy.ndarray, float32, shape (B, C, H, W)
    """
    n, channels, height, width = batch.shape
    pad = _CROP_PADDING
    padded = np.empty((n, channels, height + 2 * pad, width + 2 * pad), dtype=batch.dtype)
    padded[...] = pad_values.astype(batch.dtype)[np.newaxis, :, np.newaxis, np.newaxis]
    padded[:, :, pad:pad + height, pad:pad + width] = batch
    top = rng.integers(0, 2 * pad + 1, size=n)
    left = rng.integers(0, 2 * pad + 1, size=n)
    flip = rng.random(n) < 0.5
    rows = (top[:, np.newaxis] + np.arange(height))[:, np.newaxis, :, np.newaxis]  # (B, 1, H, 1)
    columns = (left[:, np.newaxis] + np.arange(width))[:, np.newaxis, np.newaxis, :]  # (B, 1, 1, W)
    cropped = padded[np.arange(n)[:, None, None, None], np.arange(channels)[None, :, None, None], rows, columns]
    cropped[flip] = cropped[flip][..., ::-1]
    return cropped


def _accuracy(torch: Any, model: Any, images: np.ndarray, labels: np.ndarray, indices: np.ndarray | None,
              device: str) -> float:
    """Top-1 accuracy in eval mode on ``images[indices]`` (all images when ``indices`` is None)."""
    model.eval()
    n = len(labels) if indices is None else len(indices)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, n, _EVAL_BATCH):
            chosen = slice(start, start + _EVAL_BATCH) if indices is None else indices[start:start + _EVAL_BATCH]
            inputs = torch.tensor(images[chosen], device=device)
            targets = torch.tensor(labels[chosen], device=device)
            correct += (model(inputs).argmax(dim=1) == targets).sum()
    return int(correct.item()) / n


# ------------------------------------------------------------------------------------------ populations on Ray


def population_keys(prefix: str, seeds: Iterable[int]) -> list[str]:
    """The checkpoint keys ``<prefix>/seed<k>.safetensors``, in the order of ``seeds`` (distinct, ≥ 0)."""
    prefix = _check_prefix(prefix)
    return [f"{prefix}/seed{seed}.safetensors" for seed in _check_seeds(seeds)]


def record_key(prefix: str, seed: int) -> str:
    """The record key ``<prefix>/seed<k>.json`` of one seed: the seed is done iff it exists."""
    return f"{_check_prefix(prefix)}/seed{_check_seed(seed)}.json"


def pending_seeds(store: Store, prefix: str, seeds: Iterable[int]) -> list[int]:
    """The seeds, in the given order, whose record is not in the store (one listing of ``prefix``).

    A checkpoint without its record (a task killed between the two writes) is pending.
    """
    seeds = _check_seeds(seeds)
    present = set(store.list(_check_prefix(prefix)))
    return [seed for seed in seeds if record_key(prefix, seed) not in present]


def train_population(store: Store, arch: str, arch_kwargs: Mapping[str, Any], spec: TrainingSpec,
                     seeds: Iterable[int], *, prefix: str, untrained: bool = False, cpus_per_task: float = 1,
                     gpus_per_task: float = 0, max_in_flight: int = 4, progress: bool | None = None) -> list[Outcome]:
    """Train (or initialise) one model per seed as Ray tasks, skipping the seeds already done.

    Each task writes ``<prefix>/seed<k>.safetensors`` and then its record ``<prefix>/seed<k>.json``
    (:class:`TrainedModel`'s record plus ``checkpoint_key``). A seed is done iff its record exists; done
    seeds are not submitted, so a second call submits nothing and a seed whose task died after writing its
    checkpoint is trained again (the checkpoint is overwritten).

    Parameters
    ----------
    store : raymatch.store.Store
    arch : str
        A :func:`~raymatch.models.build_model` name.
    arch_kwargs : mapping
        Its keyword arguments; JSON-able.
    spec : TrainingSpec
        How to train; with ``untrained=True`` only ``spec.dataset`` / ``spec.data_dir`` are used (for the
        untrained models' test accuracy).
    seeds : iterable of int
        Distinct, ≥ 0.
    prefix : str
        Store key prefix of the population, e.g. ``'checkpoints/digits-small_cnn'``.
    untrained : bool, default False
        Write :func:`untrained_model` initialisations instead of trained models (the null baseline).
    cpus_per_task : float, default 1
        Ray ``num_cpus`` per task; the task's torch threads are ``max(1, int(cpus_per_task))``.
    gpus_per_task : float, default 0
        Ray ``num_gpus`` per task; when > 0 the task trains on ``'cuda'``. Needs
        :func:`raymatch.runner.run_bounded` to accept ``num_gpus`` (raises NotImplementedError otherwise).
    max_in_flight : int, default 4
        Tasks submitted at once.
    progress : bool, optional
        Progress reporting, as in :func:`~raymatch.runner.run_bounded`.

    Returns
    -------
    list of raymatch.runner.Outcome
        One per seed submitted (``item`` = seed, ``result`` = the record as written, or ``error``), in the order
        of ``seeds``; empty when every seed was already done.

    Raises
    ------
    ValueError
        For bad seeds, prefix or arch_kwargs, or when a record already under ``prefix`` was made with another
        architecture, ``arch_kwargs``, kind (trained / untrained) or spec id: use another prefix.
    """
    import inspect

    from .runner import run_bounded
    from .store import check_key

    seeds = _check_seeds(seeds)
    prefix = _check_prefix(prefix)
    for key in population_keys(prefix, seeds[:1]):
        check_key(key)
    arch_kwargs = dict(arch_kwargs)
    try:
        json.dumps(arch_kwargs)
    except TypeError as error:
        raise ValueError(f"arch_kwargs must be JSON-able, as they go into every record: {error}") from None
    if not isinstance(spec, TrainingSpec):
        raise ValueError(f"spec must be a TrainingSpec, got {type(spec).__name__}")
    if cpus_per_task <= 0 or gpus_per_task < 0:
        raise ValueError(f"cpus_per_task must be > 0 and gpus_per_task >= 0, got {cpus_per_task} and {gpus_per_task}")

    todo = pending_seeds(store, prefix, seeds)
    _check_done_records(store, prefix, [seed for seed in seeds if seed not in set(todo)], arch, arch_kwargs,
                        None if untrained else spec.id)
    if not todo:
        return []
    resources: dict[str, float] = {"num_cpus": cpus_per_task}
    if gpus_per_task > 0:
        if "num_gpus" not in inspect.signature(run_bounded).parameters:
            raise NotImplementedError("gpus_per_task > 0 needs raymatch.runner.run_bounded to accept num_gpus")
        resources["num_gpus"] = gpus_per_task
    threads = max(1, int(cpus_per_task))
    device = "cuda" if gpus_per_task > 0 else "cpu"
    label = f"{'initialise' if untrained else 'train'} {prefix}"
    task_args = (store, arch, arch_kwargs, spec, prefix, untrained, threads, device)
    return run_bounded(_population_task, todo, args=task_args, max_in_flight=max_in_flight, label=label,
                       progress=progress, **resources)


def _population_task(store: Store, arch: str, arch_kwargs: dict, spec: TrainingSpec, prefix: str, untrained: bool,
                     threads: int, device: str, seed: int) -> dict[str, Any]:
    """Ray task body: train or initialise one seed, write its checkpoint, then its record."""
    if untrained:
        model = untrained_model(arch, arch_kwargs, seed, dataset=spec.dataset, data_dir=spec.data_dir, threads=threads)
    else:
        model = train_model(arch, arch_kwargs, spec, seed, threads=threads, device=device)
    (checkpoint,) = population_keys(prefix, [seed])
    store.write_bytes(checkpoint, model.checkpoint)
    record = {**model.record, "checkpoint_key": checkpoint}
    store.write_json(record_key(prefix, seed), record)
    return record


def _check_done_records(store: Store, prefix: str, done: list[int], arch: str, arch_kwargs: dict,
                        spec_id: str | None) -> None:
    """Refuse to mix models made another way into a population: every done record must match the request."""
    expected = {"kind": "untrained" if spec_id is None else "trained", "arch": arch, "arch_kwargs": arch_kwargs,
                "spec_id": spec_id}
    for seed in done:
        key = record_key(prefix, seed)
        stored = store.read_json(key)
        for name, value in expected.items():
            if stored.get(name) != value:
                raise ValueError(f"{key} in {store!r} was made with {name}={stored.get(name)!r}, not {value!r}: "
                                 f"a population's models must all be made the same way (use another prefix)")


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds must be a list of non-negative integers, got {seeds!r}")
    checked = [_check_seed(seed) for seed in seeds]
    if len(set(checked)) != len(checked):
        repeated = sorted({seed for seed in checked if checked.count(seed) > 1})
        raise ValueError(f"seeds must be distinct; repeated: {repeated}")
    return checked


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise ValueError(f"prefix must be a non-empty store key prefix, got {prefix!r}")
    return prefix.strip("/")
