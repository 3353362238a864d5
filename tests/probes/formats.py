"""Writers for small files in the datasets' original on-disk formats, for the reader tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The uncompressed idx encoding of a uint8 array: magic, one big-endian uint32 per dimension, data."""
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", size) for size in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_gzip(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def write_fashion_mnist(folder: Path, split: str, pixels: np.ndarray, labels: np.ndarray) -> Path:
    """Write ``pixels`` (N, 28, 28) uint8 and ``labels`` (N,) uint8 as one split's two idx ``.gz`` files."""
    prefix = {"train": "train", "test": "t10k"}[split]
    folder.mkdir(parents=True, exist_ok=True)
    write_gzip(folder / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(pixels, IMAGES_MAGIC))
    write_gzip(folder / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(labels, LABELS_MAGIC))
    return folder


def cifar_bytes(pixels: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: per image one label byte, then its (3, 32, 32) pixels channel-major."""
    records = np.concatenate([labels.reshape(-1, 1), pixels.reshape(len(labels), -1)], axis=1)
    return records.astype(np.uint8).tobytes()


def write_cifar_batch(path: Path, pixels: np.ndarray, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cifar_bytes(pixels, labels))
    return path
