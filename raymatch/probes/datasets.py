"""Probe datasets that load offline: scikit-learn's digits, Fashion-MNIST and CIFAR-10.

Every loader returns ``(images, labels)``: images as float32 ``(N, C, H, W)``, normalised the way
the models expect, and labels as int64 ``(N,)``. Nothing is downloaded and nothing is cached on
disk; decoded files are kept in an in-process LRU cache, and every call returns fresh arrays that
the caller may modify.

Where the files live:

- ``digits`` ships with scikit-learn (``sklearn.datasets.load_digits``).
- ``fashion-mnist``: the original gzip'd idx files, by default in ``/usr/share/datasets/fashion-mnist``
  (Debian's ``dataset-fashion-mnist``), else ``data_dir`` or ``$RAYMATCH_FASHION_MNIST_DIR``.
- ``cifar10``: the binary version (``cifar-10-batches-bin``), from ``data_dir`` or ``$RAYMATCH_CIFAR10_DIR``.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR10_DIR_ENV",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_DIR_ENV",
    "IMAGE_SHAPES",
    "SPLITS",
    "SPLIT_SIZES",
    "DatasetError",
    "available_datasets",
    "load_dataset",
]


class DatasetError(ValueError):
    """A probe dataset cannot be loaded: unknown name or split, missing or corrupt files."""


#: The splits each dataset offers, in the order they are listed in error messages.
SPLITS: dict[str, tuple[str, ...]] = {
    "digits": ("train", "test", "all"),
    "fashion-mnist": ("train", "test"),
    "cifar10": ("train", "test"),
}

FASHION_MNIST_DIR_ENV = "RAYMATCH_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_DIR_ENV = "RAYMATCH_CIFAR10_DIR"

DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_SIZE = 1437

#: Images per split as published (nothing is read), so that a study can be checked before anything loads.
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "digits": {"train": DIGITS_TRAIN_SIZE, "test": 1797 - DIGITS_TRAIN_SIZE, "all": 1797},
    "fashion-mnist": {"train": 60_000, "test": 10_000},
    "cifar10": {"train": 50_000, "test": 10_000},
}
#: Each dataset's image shape (channels, height, width), as its loader returns it.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8), "fashion-mnist": (1, 28, 28),
                                                 "cifar10": (3, 32, 32)}

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_IMAGE_SHAPE = (28, 28)
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

CIFAR10_SUBFOLDER = "cifar-10-batches-bin"
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR10_IMAGE_SHAPE = (3, 32, 32)
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

N_CLASSES = 10  # Fashion-MNIST and CIFAR-10 alike

IDX_UBYTE_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_UBYTE_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

_CACHE_SIZE = 4


def available_datasets() -> list[str]:
    """The names :func:`load_dataset` accepts: ``['digits', 'fashion-mnist', 'cifar10']``."""
    return list(SPLITS)


def load_dataset(
    name: str, split: str = "test", data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a probe dataset, normalised.

    Parameters
    ----------
    name : str
        One of :func:`available_datasets`.
    split : str
        ``'train'`` or ``'test'``; ``digits`` also has ``'all'`` (all 1,797 images in their original order).
    data_dir : str or os.PathLike, optional
        Folder holding the dataset's files. Fashion-MNIST falls back to ``$RAYMATCH_FASHION_MNIST_DIR``, then
        ``/usr/share/datasets/fashion-mnist``; CIFAR-10 to ``$RAYMATCH_CIFAR10_DIR`` (it has no default) and
        accepts either the ``cifar-10-batches-bin`` folder or its parent. Ignored for ``digits``.

    Returns
    -------
    images : numpy.ndarray, float32, shape (N, C, H, W)
        ``digits``: (N, 1, 8, 8), ``fashion-mnist``: (N, 1, 28, 28), ``cifar10``: (N, 3, 32, 32).
    labels : numpy.ndarray, int64, shape (N,)
        Class indices 0–9.

    Raises
    ------
    DatasetError
        Unknown dataset or split, missing folder or file, corrupt file.

    Notes
    -----
    Normalisation: ``digits`` is scaled to [0, 1] (÷16), then standardised with the mean and std of its train
    split (one channel). Fashion-MNIST is ``(pixel/255 - 0.2860) / 0.3530``; CIFAR-10 is ``(pixel/255 - mean_c)
    / std_c`` with the paper's per-channel constants. The arithmetic is done in float64 and rounded once to
    float32.
    """
    if name not in SPLITS:
        raise DatasetError(f"unknown dataset {name!r}; available datasets: {', '.join(available_datasets())}")
    if split not in SPLITS[name]:
        raise DatasetError(f"unknown split {split!r} for {name}; available splits: {', '.join(SPLITS[name])}")
    if name == "digits":
        return _load_digits(split)
    if name == "fashion-mnist":
        return _load_fashion_mnist(split, data_dir)
    return _load_cifar10(split, data_dir)


# ----------------------------------------------------------------------------------------------------------- digits


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _digits_splits()[split]
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=1)
def _digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every digits split as read-only ``(images (N, 1, 8, 8) float32, labels (N,) int64)``."""
    from sklearn.datasets import load_digits  # imported lazily: scikit-learn is slow to import

    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64) / 16.0  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    indices = {"train": order[:DIGITS_TRAIN_SIZE], "test": order[DIGITS_TRAIN_SIZE:], "all": np.arange(len(labels))}
    train = pixels[indices["train"]]
    mean, std = train.mean(), train.std()
    splits = {}
    for split, chosen in indices.items():
        images = ((pixels[chosen] - mean) / std).astype(np.float32)[:, np.newaxis, :, :]
        splits[split] = (_read_only(images), _read_only(labels[chosen]))
    return splits


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST


def _load_fashion_mnist(split: str, data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    folder, source = _resolve_folder(data_dir, FASHION_MNIST_DIR_ENV, FASHION_MNIST_DEFAULT_DIR)
    how_to_fix = (
        f"install the files with `apt-get install dataset-fashion-mnist`, or point data_dir or "
        f"${FASHION_MNIST_DIR_ENV} at the folder holding the idx .gz files"
    )
    if not folder.is_dir():
        raise DatasetError(f"Fashion-MNIST folder {folder} ({source}) does not exist; {how_to_fix}")
    paths = [folder / file_name for file_name in FASHION_MNIST_FILES[split]]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"Fashion-MNIST file {path} ({source}) is missing; {how_to_fix}")
    images_path, labels_path = paths
    pixels, labels = _decode_fashion_mnist(
        str(images_path), str(labels_path), _file_signature(images_path), _file_signature(labels_path)
    )
    table = _normalisation_table([FASHION_MNIST_MEAN], [FASHION_MNIST_STD])[0]
    images = table[pixels][:, np.newaxis, :, :]
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _decode_fashion_mnist(
    images_path: str, labels_path: str, images_signature: tuple, labels_signature: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split's idx files to read-only uint8 arrays ``(N, 28, 28)`` and ``(N,)``.

    The signatures (inode, size, mtime) are only part of the cache key, so a rewritten file is decoded anew.
    """
    pixels = _read_idx(Path(images_path), IDX_UBYTE_IMAGES_MAGIC)
    labels = _read_idx(Path(labels_path), IDX_UBYTE_LABELS_MAGIC)
    if pixels.shape[1:] != FASHION_MNIST_IMAGE_SHAPE:
        raise DatasetError(
            f"corrupt Fashion-MNIST file {images_path}: images are {pixels.shape[1]}×{pixels.shape[2]}, "
            f"expected {FASHION_MNIST_IMAGE_SHAPE[0]}×{FASHION_MNIST_IMAGE_SHAPE[1]}"
        )
    if len(pixels) != len(labels):
        raise DatasetError(
            f"Fashion-MNIST files disagree: {images_path} holds {len(pixels)} images but {labels_path} holds "
            f"{len(labels)} labels"
        )
    _check_labels(labels, labels_path)
    return _read_only(pixels), _read_only(labels)


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read a gzip'd idx file of unsigned bytes.

    Layout: a big-endian uint32 magic number ``0x000008NN`` (``08`` = unsigned byte, ``NN`` = number of
    dimensions), one big-endian uint32 size per dimension, then the data in C order.

    Returns
    -------
    numpy.ndarray, uint8, shape given by the header's dimension sizes
    """
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError, zlib.error) as error:
        # gzip raises BadGzipFile (an OSError) for a wrong header, EOFError for a truncated stream
        raise DatasetError(f"corrupt file {path}: not a complete gzip stream ({error})") from None
    n_dims = expected_magic & 0xFF
    magic = int(np.frombuffer(raw, dtype=">u4", count=1)[0]) if len(raw) >= 4 else None
    if magic != expected_magic:
        found = "none (file shorter than 4 bytes)" if magic is None else f"0x{magic:08X}"
        raise DatasetError(
            f"corrupt idx file {path}: magic number {found}, expected 0x{expected_magic:08X} "
            f"(unsigned bytes, {n_dims} dimension{'s' if n_dims > 1 else ''})"
        )
    header_bytes = 4 * (1 + n_dims)
    if len(raw) < header_bytes:
        raise DatasetError(f"corrupt idx file {path}: {len(raw)} bytes, shorter than its {header_bytes}-byte header")
    header = np.frombuffer(raw, dtype=">u4", count=1 + n_dims)
    shape = tuple(int(size) for size in header[1:])
    expected_bytes = header_bytes + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected_bytes:
        raise DatasetError(
            f"corrupt idx file {path}: header announces shape {shape} ({expected_bytes} bytes with the header) "
            f"but the file holds {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape)


# --------------------------------------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(split: str, data_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    folder, source = _resolve_folder(data_dir, CIFAR10_DIR_ENV, default=None)
    if folder is None:
        raise DatasetError(
            f"CIFAR-10 has no default folder: pass data_dir or set ${CIFAR10_DIR_ENV} to the "
            f"{CIFAR10_SUBFOLDER} folder of the binary version (or its parent)"
        )
    if not folder.is_dir():
        raise DatasetError(f"CIFAR-10 folder {folder} ({source}) does not exist")
    if (folder / CIFAR10_SUBFOLDER).is_dir():
        folder = folder / CIFAR10_SUBFOLDER
    paths = [folder / file_name for file_name in CIFAR10_FILES[split]]
    for path in paths:
        if not path.is_file():
            raise DatasetError(
                f"CIFAR-10 file {path} ({source}) is missing; data_dir or ${CIFAR10_DIR_ENV} must name the "
                f"{CIFAR10_SUBFOLDER} folder of the binary version, or its parent"
            )
    pixels, labels = _decode_cifar10(tuple(str(path) for path in paths), tuple(_file_signature(p) for p in paths))
    table = _normalisation_table(CIFAR10_MEAN, CIFAR10_STD)
    images = np.empty(pixels.shape, dtype=np.float32)
    for channel in range(CIFAR10_IMAGE_SHAPE[0]):
        images[:, channel] = table[channel][pixels[:, channel]]
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _decode_cifar10(paths: tuple[str, ...], signatures: tuple[tuple, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Decode CIFAR-10 binary batches, concatenated in the given order.

    Each record is one label byte followed by 3,072 pixel bytes in channel-major order (3×32×32).

    Returns
    -------
    pixels : numpy.ndarray, uint8, shape (N, 3, 32, 32), read-only
    labels : numpy.ndarray, uint8, shape (N,), read-only
    """
    all_pixels, all_labels = [], []
    for path in paths:
        raw = Path(path).read_bytes()
        if len(raw) == 0 or len(raw) % CIFAR10_RECORD_BYTES:
            raise DatasetError(
                f"corrupt CIFAR-10 file {path}: {len(raw)} bytes is not a positive multiple of the "
                f"{CIFAR10_RECORD_BYTES}-byte record (1 label byte + 3×32×32 pixel bytes)"
            )
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
        _check_labels(records[:, 0], path)
        all_labels.append(records[:, 0])
        all_pixels.append(records[:, 1:].reshape(-1, *CIFAR10_IMAGE_SHAPE))
    return _read_only(np.concatenate(all_pixels)), _read_only(np.concatenate(all_labels))


# ---------------------------------------------------------------------------------------------------------- helpers


def _resolve_folder(data_dir: str | os.PathLike | None, env_var: str, default: str | None) -> tuple[Path | None, str]:
    """The folder to read from and where that choice came from (for error messages)."""
    if data_dir is not None:
        return Path(data_dir), "from data_dir"
    from_env = os.environ.get(env_var)
    if from_env:
        return Path(from_env), f"from ${env_var}"
    if default is None:
        return None, "no default"
    return Path(default), "the default folder"


def _file_signature(path: Path) -> tuple[int, int, int]:
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns


def _normalisation_table(means, stds) -> np.ndarray:
    """float32 ``(n_channels, 256)``: the normalised value of every byte, computed in float64, rounded once.

    Indexing this table with the uint8 pixels is exact and avoids a float64 copy of the whole split.
    """
    byte_values = np.arange(256, dtype=np.float64) / 255.0
    means = np.asarray(means, dtype=np.float64)[:, np.newaxis]
    stds = np.asarray(stds, dtype=np.float64)[:, np.newaxis]
    return ((byte_values - means) / stds).astype(np.float32)


def _check_labels(labels: np.ndarray, path) -> None:
    if labels.size and int(labels.max()) >= N_CLASSES:
        first_bad = int(np.flatnonzero(labels >= N_CLASSES)[0])
        raise DatasetError(
            f"corrupt label in {path}: record {first_bad} has label {int(labels[first_bad])}, "
            f"expected 0–{N_CLASSES - 1}"
        )


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
