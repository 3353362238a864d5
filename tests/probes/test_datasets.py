"""The offline dataset readers: splits, normalisation, the original file formats and their failure modes.

Fashion-MNIST and CIFAR-10 are tested on tiny files written here in their exact original formats; decoded values
are compared bit-for-bit with the normalisation computed by hand in Python floats.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from raymatch.probes import DatasetError, available_datasets, load_dataset
from raymatch.probes import datasets as datasets_module

from .formats import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    cifar_bytes,
    idx_bytes,
    write_cifar_batch,
    write_fashion_mnist,
    write_gzip,
)

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def by_hand(pixel: int, mean: float, std: float) -> np.float32:
    """The documented normalisation of one byte, in Python (float64) arithmetic, rounded once to float32."""
    return np.float32((pixel / 255 - mean) / std)


def by_hand_array(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    lookup = np.array([by_hand(value, mean, std) for value in range(256)], dtype=np.float32)
    return lookup[pixels]


@pytest.fixture(autouse=True)
def no_dataset_env(monkeypatch):
    """Tests start with neither environment variable set, whatever the developer's shell has."""
    monkeypatch.delenv("RAYMATCH_FASHION_MNIST_DIR", raising=False)
    monkeypatch.delenv("RAYMATCH_CIFAR10_DIR", raising=False)


def test_available_datasets():
    assert available_datasets() == ["digits", "fashion-mnist", "cifar10"]


@pytest.mark.parametrize(
    ("name", "split", "message"),
    [
        ("mnist", "test", "unknown dataset 'mnist'; available datasets: digits, fashion-mnist, cifar10"),
        ("digits", "val", "unknown split 'val' for digits; available splits: train, test, all"),
        ("cifar10", "all", "unknown split 'all' for cifar10; available splits: train, test"),
    ],
)
def test_unknown_dataset_or_split(name, split, message):
    with pytest.raises(DatasetError) as error:
        load_dataset(name, split)
    assert str(error.value) == message
    assert isinstance(error.value, ValueError)


# ----------------------------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_dtypes():
    sizes = {"train": 1437, "test": 360, "all": 1797}
    for split, size in sizes.items():
        images, labels = load_dataset("digits", split)
        assert images.shape == (size, 1, 8, 8) and images.dtype == np.float32
        assert labels.shape == (size,) and labels.dtype == np.int64
    assert load_dataset("digits")[0].shape == (360, 1, 8, 8)  # the default split is test


def test_digits_train_split_is_standardised():
    images, _ = load_dataset("digits", "train")
    assert abs(float(images.mean(dtype=np.float64))) < 1e-6
    assert float(images.std(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)


def test_digits_splits_follow_the_seeded_permutation_and_partition_all():
    bunch = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    train_indices, test_indices = order[:1437], order[1437:]
    assert np.intersect1d(train_indices, test_indices).size == 0
    assert np.array_equal(np.sort(np.concatenate([train_indices, test_indices])), np.arange(1797))

    all_images, all_labels = load_dataset("digits", "all")
    assert np.array_equal(all_labels, bunch.target)  # "all" keeps the original order
    scaled = bunch.images / 16.0
    mean, std = scaled[train_indices].mean(), scaled[train_indices].std()
    np.testing.assert_array_equal(all_images[:, 0], ((scaled - mean) / std).astype(np.float32))
    for split, indices in [("train", train_indices), ("test", test_indices)]:
        images, labels = load_dataset("digits", split)
        np.testing.assert_array_equal(images, all_images[indices])
        np.testing.assert_array_equal(labels, all_labels[indices])


def test_digits_ignores_data_dir_and_returns_arrays_the_caller_owns(tmp_path):
    images, labels = load_dataset("digits", "test", data_dir=tmp_path / "nowhere")
    pristine = images.copy()
    images[:] = 0.0
    labels[:] = -1
    again, again_labels = load_dataset("digits", "test")
    np.testing.assert_array_equal(again, pristine)
    assert again_labels.min() >= 0


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST


def fashion_pixels(n: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    pixels[0, 0, 0], pixels[0, 0, 1], pixels[0, 27, 27] = 0, 255, 128  # the extremes and a midpoint, pinned below
    return pixels


@pytest.fixture
def fashion_dir(tmp_path):
    """Three train images and two test images, every byte value present in the train split."""
    folder = tmp_path / "fashion"
    train = fashion_pixels(3, seed=1)
    train[1].flat[:256] = np.arange(256, dtype=np.uint8)
    write_fashion_mnist(folder, "train", train, np.array([9, 0, 3], dtype=np.uint8))
    write_fashion_mnist(folder, "test", fashion_pixels(2, seed=2), np.array([7, 2], dtype=np.uint8))
    return folder


def test_fashion_mnist_decodes_the_idx_files_bit_exactly(fashion_dir):
    images, labels = load_dataset("fashion-mnist", "train", data_dir=fashion_dir)
    assert images.shape == (3, 1, 28, 28) and images.dtype == np.float32
    assert labels.tolist() == [9, 0, 3] and labels.dtype == np.int64
    np.testing.assert_array_equal(
        images[:, 0], by_hand_array(fashion_pixels_of(fashion_dir, "train"), FASHION_MEAN, FASHION_STD)
    )
    assert images[0, 0, 0, 0] == np.float32((0 / 255 - 0.2860) / 0.3530)
    assert images[0, 0, 0, 1] == np.float32((1 - 0.2860) / 0.3530)
    assert images[0, 0, 27, 27] == np.float32((128 / 255 - 0.2860) / 0.3530)

    test_images, test_labels = load_dataset("fashion-mnist", "test", data_dir=str(fashion_dir))
    assert test_labels.tolist() == [7, 2]
    np.testing.assert_array_equal(
        test_images[:, 0], by_hand_array(fashion_pixels(2, seed=2), FASHION_MEAN, FASHION_STD)
    )


def fashion_pixels_of(folder: Path, split: str) -> np.ndarray:
    """The raw bytes of a written images file, read back independently of the reader under test."""
    prefix = {"train": "train", "test": "t10k"}[split]
    raw = gzip.decompress((folder / f"{prefix}-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, 28, 28)


def test_fashion_mnist_folder_from_env_var_and_data_dir_wins(fashion_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYMATCH_FASHION_MNIST_DIR", str(fashion_dir))
    _, labels = load_dataset("fashion-mnist", "test")
    assert labels.tolist() == [7, 2]

    other = write_fashion_mnist(tmp_path / "other", "test", fashion_pixels(1, seed=3), np.array([5], dtype=np.uint8))
    _, labels = load_dataset("fashion-mnist", "test", data_dir=other)
    assert labels.tolist() == [5]


def test_fashion_mnist_default_folder(tmp_path, monkeypatch):
    missing = tmp_path / "not-installed"
    monkeypatch.setattr(datasets_module, "FASHION_MNIST_DEFAULT_DIR", str(missing))
    with pytest.raises(DatasetError) as error:
        load_dataset("fashion-mnist", "test")
    message = str(error.value)
    assert str(missing) in message and "default" in message
    assert "apt-get install dataset-fashion-mnist" in message and "RAYMATCH_FASHION_MNIST_DIR" in message


def test_fashion_mnist_default_folder_is_debians():
    assert datasets_module.FASHION_MNIST_DEFAULT_DIR == "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(
    not os.path.isfile("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_installed_fashion_mnist_test_split():
    images, labels = load_dataset("fashion-mnist", "test")
    assert images.shape == (10_000, 1, 28, 28)
    assert np.array_equal(np.bincount(labels), np.full(10, 1000))


def test_fashion_mnist_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(DatasetError, match="does not exist") as error:
        load_dataset("fashion-mnist", "test", data_dir=missing)
    assert str(missing) in str(error.value) and "apt-get install dataset-fashion-mnist" in str(error.value)


def test_fashion_mnist_missing_file_names_the_path(fashion_dir):
    (fashion_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="is missing") as error:
        load_dataset("fashion-mnist", "test", data_dir=fashion_dir)
    assert str(fashion_dir / "t10k-labels-idx1-ubyte.gz") in str(error.value)
    assert "RAYMATCH_FASHION_MNIST_DIR" in str(error.value)


def corrupt_files():
    """(what is written as t10k-images / t10k-labels, words the error must contain, which file it names)."""
    pixels, labels = fashion_pixels(2, seed=4), np.array([1, 2], dtype=np.uint8)
    good_images, good_labels = gzip.compress(idx_bytes(pixels, IMAGES_MAGIC)), gzip.compress(idx_bytes(labels))
    return {
        "wrong image magic": (gzip.compress(idx_bytes(pixels, 0x00000802)), good_labels, "0x00000802", "images"),
        "labels magic on images": (
            gzip.compress(idx_bytes(labels, LABELS_MAGIC)),
            good_labels,
            "magic number 0x00000801, expected 0x00000803",
            "images",
        ),
        "wrong label magic": (good_images, gzip.compress(idx_bytes(labels, 0x00000901)), "magic number", "labels"),
        "truncated gzip": (good_images[: len(good_images) // 2], good_labels, "gzip", "images"),
        "not gzip at all": (idx_bytes(pixels, IMAGES_MAGIC), good_labels, "gzip", "images"),
        "short header": (gzip.compress(b"\x00\x00\x08\x03\x00\x00"), good_labels, "header", "images"),
        "empty file": (gzip.compress(b""), good_labels, "magic number none", "images"),
        "fewer bytes than the header says": (
            gzip.compress(idx_bytes(pixels, IMAGES_MAGIC)[:-1]),
            good_labels,
            "holds",
            "images",
        ),
        "more bytes than the header says": (
            gzip.compress(idx_bytes(pixels, IMAGES_MAGIC) + b"\x00"),
            good_labels,
            "holds",
            "images",
        ),
        "image and label counts differ": (
            good_images,
            gzip.compress(idx_bytes(np.array([1, 2, 3], dtype=np.uint8))),
            "holds 2 images but",
            "labels",
        ),
        "images not 28×28": (
            gzip.compress(idx_bytes(np.zeros((2, 27, 28), dtype=np.uint8))),
            good_labels,
            "27×28",
            "images",
        ),
        "label out of range": (
            good_images,
            gzip.compress(idx_bytes(np.array([1, 10], dtype=np.uint8))),
            "10",
            "labels",
        ),
    }


@pytest.mark.parametrize("case", list(corrupt_files()))
def test_fashion_mnist_corrupt_file_names_the_file_and_the_problem(tmp_path, case):
    images_gz, labels_gz, words, culprit = corrupt_files()[case]
    folder = tmp_path / "fashion"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(images_gz)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(labels_gz)
    with pytest.raises(DatasetError) as error:
        load_dataset("fashion-mnist", "test", data_dir=folder)
    message = str(error.value)
    assert words in message
    assert str(folder / f"t10k-{culprit}-idx{3 if culprit == 'images' else 1}-ubyte.gz") in message


def test_fashion_mnist_returns_arrays_the_caller_owns(fashion_dir):
    images, labels = load_dataset("fashion-mnist", "test", data_dir=fashion_dir)
    pristine = images.copy()
    images[:] = 0.0
    labels[:] = 0
    again, again_labels = load_dataset("fashion-mnist", "test", data_dir=fashion_dir)
    np.testing.assert_array_equal(again, pristine)
    assert again_labels.tolist() == [7, 2]


def test_fashion_mnist_rewritten_files_are_read_anew(fashion_dir):
    load_dataset("fashion-mnist", "test", data_dir=fashion_dir)  # fills the in-process cache
    write_fashion_mnist(fashion_dir, "test", fashion_pixels(3, seed=5), np.array([4, 4, 4], dtype=np.uint8))
    _, labels = load_dataset("fashion-mnist", "test", data_dir=fashion_dir)
    assert labels.tolist() == [4, 4, 4]


# --------------------------------------------------------------------------------------------------------- CIFAR-10


def cifar_pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def cifar_by_hand(pixels: np.ndarray) -> np.ndarray:
    return np.stack(
        [by_hand_array(pixels[:, channel], CIFAR_MEAN[channel], CIFAR_STD[channel]) for channel in range(3)], axis=1
    )


@pytest.fixture
def cifar_dir(tmp_path):
    """``cifar-10-batches-bin`` with batches 1–5 of 1, 2, 1, 1, 2 images and a 3-image test batch.

    Image ``i`` of the train split has label ``i`` so that the order of the batches shows in the labels.
    """
    folder = tmp_path / "cifar" / "cifar-10-batches-bin"
    sizes = [1, 2, 1, 1, 2]
    first = 0
    for batch, size in enumerate(sizes, start=1):
        labels = np.arange(first, first + size, dtype=np.uint8)
        write_cifar_batch(folder / f"data_batch_{batch}.bin", cifar_pixels(size, seed=batch), labels)
        first += size
    test_pixels = cifar_pixels(3, seed=10)
    test_pixels[0, 0, 0, 0], test_pixels[0, 1, 0, 0], test_pixels[0, 2, 0, 0] = 0, 255, 128
    write_cifar_batch(folder / "test_batch.bin", test_pixels, np.array([3, 8, 0], dtype=np.uint8))
    return folder


def test_cifar10_decodes_the_binary_batches_bit_exactly(cifar_dir):
    images, labels = load_dataset("cifar10", "test", data_dir=cifar_dir)
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.float32
    assert labels.tolist() == [3, 8, 0] and labels.dtype == np.int64
    raw = np.frombuffer((cifar_dir / "test_batch.bin").read_bytes(), dtype=np.uint8).reshape(3, 3073)
    np.testing.assert_array_equal(images, cifar_by_hand(raw[:, 1:].reshape(3, 3, 32, 32)))
    assert images[0, 0, 0, 0] == np.float32((0 - 0.4914) / 0.2470)
    assert images[0, 1, 0, 0] == np.float32((1 - 0.4822) / 0.2435)
    assert images[0, 2, 0, 0] == np.float32((128 / 255 - 0.4465) / 0.2616)


def test_cifar10_train_concatenates_batches_1_to_5_in_order(cifar_dir):
    images, labels = load_dataset("cifar10", "train", data_dir=cifar_dir)
    assert labels.tolist() == list(range(7))
    expected = np.concatenate([cifar_pixels(size, seed=batch) for batch, size in enumerate([1, 2, 1, 1, 2], 1)])
    np.testing.assert_array_equal(images, cifar_by_hand(expected))


def test_cifar10_accepts_the_parent_folder_and_the_env_var(cifar_dir, monkeypatch):
    _, labels = load_dataset("cifar10", "test", data_dir=cifar_dir.parent)
    assert labels.tolist() == [3, 8, 0]
    monkeypatch.setenv("RAYMATCH_CIFAR10_DIR", str(cifar_dir.parent))
    _, labels = load_dataset("cifar10", "test")
    assert labels.tolist() == [3, 8, 0]


def test_cifar10_data_dir_wins_over_the_env_var(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYMATCH_CIFAR10_DIR", str(tmp_path / "elsewhere"))
    _, labels = load_dataset("cifar10", "test", data_dir=cifar_dir)
    assert labels.tolist() == [3, 8, 0]


def test_cifar10_has_no_default_folder():
    with pytest.raises(DatasetError, match=r"no default folder.*RAYMATCH_CIFAR10_DIR"):
        load_dataset("cifar10", "test")


def test_cifar10_missing_folder_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "absent"
    monkeypatch.setenv("RAYMATCH_CIFAR10_DIR", str(missing))
    with pytest.raises(DatasetError, match="does not exist") as error:
        load_dataset("cifar10", "test")
    assert str(missing) in str(error.value) and "RAYMATCH_CIFAR10_DIR" in str(error.value)


def test_cifar10_missing_batch_names_the_path(cifar_dir):
    (cifar_dir / "data_batch_3.bin").unlink()
    with pytest.raises(DatasetError, match="is missing") as error:
        load_dataset("cifar10", "train", data_dir=cifar_dir)
    assert str(cifar_dir / "data_batch_3.bin") in str(error.value)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (cifar_bytes(cifar_pixels(2, seed=0), np.array([1, 2], dtype=np.uint8))[:-1], "6145 bytes"),
        (cifar_bytes(cifar_pixels(1, seed=0), np.array([1], dtype=np.uint8)) + b"\x07", "3074 bytes"),
        (b"", "0 bytes"),
        (cifar_bytes(cifar_pixels(2, seed=0), np.array([1, 200], dtype=np.uint8)), "label 200"),
    ],
    ids=["one byte short", "one byte long", "empty", "label out of range"],
)
def test_cifar10_corrupt_batch_names_the_file_and_the_problem(cifar_dir, payload, words):
    (cifar_dir / "test_batch.bin").write_bytes(payload)
    with pytest.raises(DatasetError) as error:
        load_dataset("cifar10", "test", data_dir=cifar_dir)
    assert str(cifar_dir / "test_batch.bin") in str(error.value) and words in str(error.value)


def test_cifar10_returns_arrays_the_caller_owns(cifar_dir):
    images, _ = load_dataset("cifar10", "test", data_dir=cifar_dir)
    pristine = images.copy()
    images[:] = 0.0
    np.testing.assert_array_equal(load_dataset("cifar10", "test", data_dir=cifar_dir)[0], pristine)


def test_writers_match_the_documented_layouts(tmp_path):
    """Guard the fixtures themselves: an idx header is big-endian, a CIFAR record is label then channel-major."""
    assert idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8), IMAGES_MAGIC)[:16] == bytes.fromhex(
        "00000803000000020000001c0000001c"
    )
    pixels = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    pixels[0, 1, 0, 0] = 7  # first pixel of the green channel
    record = cifar_bytes(pixels, np.array([6], dtype=np.uint8))
    assert len(record) == 3073 and record[0] == 6 and record[1 + 1024] == 7
    assert gzip.decompress(write_gzip(tmp_path / "x.gz", b"abc").read_bytes()) == b"abc"
