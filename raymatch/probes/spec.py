"""Probe specifications: which inputs a study feeds its models, and which activation rows it keeps.

A :class:`ProbeSpec` names a dataset split, an optional seeded subset of it and, for conv layers, the row
sampling protocol of Wang et al. (2018): a conv channel's activation vector runs over (image, position) pairs,
and the paper keeps 10,000 of those rows, drawn 16 times. The rows drawn depend only on the spec and on the
layer's spatial shape, never on the model, so every model of a population is compared on the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .datasets import SPLITS, DatasetError, available_datasets, load_dataset

__all__ = ["ProbeSpec", "RowSample", "load_probe", "row_positions", "sample_rows"]


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _positive_int(value: Any, field: str) -> int:
    if not _is_integer(value) or value <= 0:
        raise ValueError(f"{field} must be a positive integer; got {value!r}")
    return int(value)


def _non_negative_int(value: Any, field: str) -> int:
    if not _is_integer(value) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer; got {value!r}")
    return int(value)


def _check_keys(data: Any, known: tuple[str, ...], required: tuple[str, ...], field: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{field} must be a mapping with fields {', '.join(known)}; got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ValueError(f"{field} has unknown field(s) {', '.join(unknown)}; known fields: {', '.join(known)}")
    for key in required:
        if key not in data:
            raise ValueError(f"{field}.{key} is required")


@dataclass(frozen=True)
class RowSample:
    """Row sampling for conv layers: ``rows`` distinct (image, position) pairs, drawn ``repeats`` times.

    Parameters
    ----------
    rows : int
        Rows per draw, sampled without replacement from the ``n_images × height × width`` grid (the paper: 10,000).
    repeats : int
        Independent draws (the paper: 16); results are averaged over them.
    seed : int
        Seeds every draw, together with the repeat index and the layer's spatial shape.
    """

    rows: int
    repeats: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", _positive_int(self.rows, "probe.rows.rows"))
        object.__setattr__(self, "repeats", _positive_int(self.repeats, "probe.rows.repeats"))
        object.__setattr__(self, "seed", _non_negative_int(self.seed, "probe.rows.seed"))

    def to_dict(self) -> dict[str, int]:
        """``{'rows': ..., 'repeats': ..., 'seed': ...}``, plain ints."""
        return {"rows": self.rows, "repeats": self.repeats, "seed": self.seed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RowSample:
        """Build from ``{'rows': int, 'repeats': int = 1, 'seed': int = 0}``; ``ValueError`` names a bad field."""
        _check_keys(data, ("rows", "repeats", "seed"), ("rows",), "probe.rows")
        return cls(**data)


@dataclass(frozen=True)
class ProbeSpec:
    """What a study feeds its models and which activation rows it compares.

    Parameters
    ----------
    dataset : str
        One of :func:`~raymatch.probes.available_datasets`.
    split : str
        A split of that dataset (``'train'``, ``'test'``; ``digits`` also ``'all'``).
    n_examples : int, optional
        Keep a seeded subset of this many examples (in their split order); ``None`` keeps the whole split.
    seed : int
        Seeds the subset.
    rows : ``'all'`` or RowSample
        ``'all'`` uses every (image, position) row of a conv layer; a :class:`RowSample` (or a mapping with its
        fields) samples rows as in the paper.
    data_dir : str, optional
        Where the dataset's files live. Not part of :attr:`id`: the same files anywhere give the same probe.
    """

    dataset: str
    split: str = "test"
    n_examples: int | None = None
    seed: int = 0
    rows: str | RowSample = "all"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str):
            raise ValueError(f"probe.dataset must be a string; got {type(self.dataset).__name__}")
        if self.dataset not in SPLITS:
            raise ValueError(f"probe.dataset must be one of {', '.join(available_datasets())}; got {self.dataset!r}")
        if not isinstance(self.split, str):
            raise ValueError(f"probe.split must be a string; got {type(self.split).__name__}")
        if self.split not in SPLITS[self.dataset]:
            raise ValueError(
                f"probe.split must be one of {', '.join(SPLITS[self.dataset])} for {self.dataset}; got {self.split!r}"
            )
        if self.n_examples is not None:
            object.__setattr__(self, "n_examples", _positive_int(self.n_examples, "probe.n_examples"))
        object.__setattr__(self, "seed", _non_negative_int(self.seed, "probe.seed"))
        object.__setattr__(self, "rows", _as_rows(self.rows))
        if self.data_dir is not None:
            if not isinstance(self.data_dir, (str, os.PathLike)):
                raise ValueError(f"probe.data_dir must be a string path; got {type(self.data_dir).__name__}")
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))

    @property
    def id(self) -> str:
        """16 hex characters identifying the probe's content (everything but ``data_dir``).

        The first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys, no spaces) of
        ``dataset, split, n_examples, seed, rows``: stable across processes, machines and Python versions.
        """
        content = self.to_dict()
        del content["data_dir"]
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields; ``rows`` is ``'all'`` or ``{'rows', 'repeats', 'seed'}``."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "n_examples": self.n_examples,
            "seed": self.seed,
            "rows": self.rows if self.rows == "all" else self.rows.to_dict(),
            "data_dir": self.data_dir,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeSpec:
        """Build from a mapping as written by :meth:`to_dict` (missing fields take their defaults).

        Raises
        ------
        ValueError
            Unknown or missing fields, wrong types or out-of-range values; the message names the field
            (``probe.rows.repeats``, ...).
        """
        _check_keys(data, ("dataset", "split", "n_examples", "seed", "rows", "data_dir"), ("dataset",), "probe")
        return cls(**data)


def _as_rows(rows: Any) -> str | RowSample:
    if isinstance(rows, RowSample):
        return rows
    if isinstance(rows, Mapping):
        return RowSample.from_dict(rows)
    if isinstance(rows, str) and rows == "all":
        return "all"
    raise ValueError(f"probe.rows must be 'all' or a row sample {{rows, repeats, seed}}; got {rows!r}")


def load_probe(spec: ProbeSpec) -> torch.Tensor:
    """The probe's input images.

    Parameters
    ----------
    spec : ProbeSpec

    Returns
    -------
    torch.Tensor, float32, shape (N, C, H, W)
        The split from :func:`~raymatch.probes.load_dataset`; with ``n_examples`` set, the examples at indices
        ``np.sort(np.random.default_rng(spec.seed).permutation(len(split))[:n_examples])``, in split order.

    Raises
    ------
    DatasetError
        The dataset cannot be loaded, or ``n_examples`` exceeds the split's size.
    """
    images, _ = load_dataset(spec.dataset, spec.split, spec.data_dir)
    if spec.n_examples is not None:
        if spec.n_examples > len(images):
            raise DatasetError(
                f"probe asks for {spec.n_examples} examples but {spec.dataset}/{spec.split} has {len(images)}"
            )
        chosen = np.sort(np.random.default_rng(spec.seed).permutation(len(images))[: spec.n_examples])
        images = images[chosen]
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def sample_rows(spec: ProbeSpec, n_images: int, height: int, width: int, repeat: int) -> np.ndarray | None:
    """The activation rows one repeat of the probe keeps for a layer of the given spatial shape.

    Rows index the layer's (image, y, x) grid in C order: ``flat = (image * height + y) * width + x``, which is
    the row order of a ``(N, C, H, W)`` activation reshaped to ``(N·H·W, C)`` after moving channels last.

    Parameters
    ----------
    spec : ProbeSpec
    n_images, height, width : int
        The layer output's spatial shape: ``N``, ``H``, ``W`` of ``(N, C, H, W)``; ``height = width = 1`` for
        linear layers.
    repeat : int
        Which draw, in ``[0, spec.rows.repeats)``.

    Returns
    -------
    numpy.ndarray, int64, shape (spec.rows.rows,), or None
        ``None`` when ``spec.rows == 'all'`` (keep every row). Otherwise distinct flat row indices, sorted
        ascending, drawn without replacement with ``np.random.default_rng([seed, repeat, n_images, height,
        width])``. They depend only on the spec and the spatial shape, so every model of a population gets the
        same rows.

    Raises
    ------
    ValueError
        ``repeat`` out of range, or more rows asked for than the layer has (``rows > n_images·height·width``).

    Notes
    -----
    A linear layer has only ``n_images`` rows, usually far fewer than a conv layer's sample size, so
    callers use all rows for linear layers instead of calling this with ``height = width = 1``.
    """
    n_images = _positive_int(n_images, "n_images")
    height = _positive_int(height, "height")
    width = _positive_int(width, "width")
    if spec.rows == "all":
        return None
    sample = spec.rows
    if not _is_integer(repeat) or not 0 <= repeat < sample.repeats:
        raise ValueError(f"repeat must be an integer in [0, {sample.repeats}); got {repeat!r}")
    available = n_images * height * width
    if sample.rows > available:
        raise ValueError(
            f"probe asks for {sample.rows} rows but a layer of {n_images} images × {height}×{width} positions has "
            f"only {available} (image, position) rows"
        )
    rng = np.random.default_rng([sample.seed, int(repeat), n_images, height, width])
    rows = rng.choice(available, size=sample.rows, replace=False)
    rows.sort()
    return rows.astype(np.int64, copy=False)


def row_positions(flat: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split flat row indices into their image, y and x.

    Parameters
    ----------
    flat : array_like of int, shape (n_rows,)
        Indices ``(image * height + y) * width + x``, e.g. from :func:`sample_rows`.
    height, width : int
        The layer's spatial size.

    Returns
    -------
    image, y, x : numpy.ndarray, int64, shape (n_rows,) each
    """
    height = _positive_int(height, "height")
    width = _positive_int(width, "width")
    flat = np.asarray(flat)
    if flat.size and flat.dtype.kind not in "iu":
        raise ValueError(f"flat must hold integers; got dtype {flat.dtype}")
    flat = flat.astype(np.int64)
    if flat.size and flat.min() < 0:
        raise ValueError(f"flat must hold non-negative indices; got minimum {int(flat.min())}")
    image, position = np.divmod(flat, height * width)
    y, x = np.divmod(position, width)
    return image, y, x
