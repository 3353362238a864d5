"""Training one model from one seed, its checkpoint selected on a fixed holdout."""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    pass

from .spec import TrainingSpec, _as_int

#: Seed of the permutation that splits a train split into training and holdout images. It is a constant, never
#: a model's seed: every model of every population on a dataset selects on the same held-out images.
HOLDOUT_SEED = 1810_11750

_EVAL_BATCH = 1024
_CROP_PADDING = 4

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
        ``n_holdout``. :func:`~raymatch.train.population.train_seed` adds ``checkpoint_key``.
    trajectory : list of SavedEpoch
        The weights kept every ``save_every`` epochs (:func:`train_model`), in epoch order; empty otherwise.
    """

    checkpoint: bytes
    record: dict[str, Any]
    trajectory: list[SavedEpoch] = field(default_factory=list)


@dataclass
class SavedEpoch:
    """The weights of one model after one epoch of training (one point of its trajectory).

    Attributes
    ----------
    epoch : int
        Epochs trained (1 = after the first pass).
    checkpoint : bytes
        Safetensors bytes of the weights at that point.
    record : dict
        JSON-able: ``kind = 'trajectory'``, ``seed``, ``epoch``, ``holdout_accuracy`` (after that epoch; None
        without a holdout), ``train_loss`` (of that epoch), ``spec_id`` and ``checkpoint_id``.
    """

    epoch: int
    checkpoint: bytes
    record: dict[str, Any]


def train_model(arch: str, arch_kwargs: Mapping[str, Any], spec: TrainingSpec, seed: int, *, threads: int = 1,
                device: str = "cpu", save_every: int | None = None) -> TrainedModel:
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
    save_every : int, optional
        Also keep the weights after every ``save_every``-th epoch (epochs ``k, 2k, …`` up to ``spec.epochs``) in
        :attr:`TrainedModel.trajectory`. Saving reads the weights only: the selected checkpoint is the same
        with or without it.

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

    from ..models import build_model, checkpoint_bytes, checkpoint_id
    from ..probes.datasets import load_dataset

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
        trajectory: list[SavedEpoch] = []
        for epoch in range(1, spec.epochs + 1):
            losses.append(_train_epoch(torch, model, optimizer, images, labels, train_indices, spec, rng, pad_values,
                                       device))
            scheduler.step()
            accuracy = holdout_accuracy()
            history.append(accuracy)
            if save_every is not None and epoch % save_every == 0:
                trajectory.append(_saved_epoch(model, checkpoint_bytes, checkpoint_id, seed, epoch, accuracy,
                                               losses[-1], spec.id))
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
    if save_every is not None:
        record["saved_epochs"] = [saved.epoch for saved in trajectory]
    return TrainedModel(checkpoint, record, trajectory)


def _saved_epoch(model: Any, checkpoint_bytes: Any, checkpoint_id: Any, seed: int, epoch: int,
                 accuracy: float | None, loss: float, spec_id: str) -> SavedEpoch:
    """The model's weights now, as one point of its trajectory."""
    data = checkpoint_bytes(model)
    return SavedEpoch(epoch, data, {"kind": "trajectory", "seed": seed, "epoch": epoch, "holdout_accuracy": accuracy,
                                    "train_loss": loss, "spec_id": spec_id, "checkpoint_id": checkpoint_id(data)})


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

    from ..models import build_model, checkpoint_bytes, checkpoint_id

    started = time.perf_counter()
    seed, threads = _check_seed(seed), _check_threads(threads)
    arch_kwargs = dict(arch_kwargs)
    with _torch_settings(torch, threads, "cpu"):
        torch.manual_seed(seed)
        model = build_model(arch, **arch_kwargs)
        test_accuracy, n_test = None, None
        if dataset is not None:
            from ..probes.datasets import load_dataset

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
    from .. import __version__

    return {"kind": kind, "seed": seed, "arch": arch, "arch_kwargs": arch_kwargs, "dataset": dataset,
            "device": device, "threads": threads, "torch_version": torch.__version__, "code_version": __version__}


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


