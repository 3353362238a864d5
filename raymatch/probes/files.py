"""Probes from the user's own files: a folder of images, a ``.npy``/``.npz`` array, or a Parquet column.

Each loader returns float32 images ``(N, C, H, W)``, normalised as the probe spec says, or raises
:class:`~raymatch.probes.DatasetError` with one line naming the field or the file. :func:`content_digest` hashes
the files' bytes (never their paths), so the same data anywhere gives the same probe id and changed data a new one.

- ``images``: PNG/JPEG files under ``path`` (sub-folders, e.g. one per class, included), in sorted path order.
  Every image is greyscale → 1 channel, otherwise all are read as RGB → 3 channels. With ``size: [H, W]`` each is
  resized (bilinear) to cover ``H × W`` and centre-cropped to it; without, all must share one size. Pixels are
  ``byte / 255``, then ``(x - mean_c) / std_c``.
- ``array``: ``(N, C, H, W)`` (``layout: NCHW``), ``(N, H, W, C)`` (``layout: NHWC``) or ``(N, H, W)`` (one channel);
  values times ``scale``, then ``(x - mean_c) / std_c``. A ``.npz`` needs ``key`` unless it holds one array.
- ``table``: a Parquet ``column`` of encoded image bytes (read as the ``images`` route) or of fixed-length numeric
  lists, each one image flattened in ``layout`` order with ``size: [H, W]`` (channels = length / (H·W)), values
  times ``scale``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DatasetError

__all__ = ["IMAGE_SUFFIXES", "USER_DATASETS", "content_digest", "image_files", "load_user_probe"]

#: The probe datasets read from the user's own files.
USER_DATASETS = ("images", "array", "table")
#: File name endings read as images (any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_CACHE_SIZE = 4


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The PNG/JPEG files under ``folder`` (recursively), sorted by their path relative to it.

    Raises
    ------
    DatasetError
        The folder does not exist or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"probe.path: image folder {root} does not exist")
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DatasetError(f"probe.path: no PNG or JPEG file under {root}")
    return files


def _signature(spec: Any) -> tuple:
    """What the cached reads depend on: the files' names, sizes and modification times."""
    if spec.dataset == "images":
        files = image_files(spec.path)
    else:
        files = [Path(spec.path)]
        if not files[0].is_file():
            raise DatasetError(f"probe.path: file {files[0]} does not exist")
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def content_digest(spec: Any) -> str:
    """SHA-256 (hex) of the probe's files: their bytes, and for a folder each file's path relative to it.

    Parameters
    ----------
    spec : raymatch.probes.ProbeSpec
        A probe of one of :data:`USER_DATASETS`.

    Returns
    -------
    str
    """
    return _content_digest(spec.dataset, spec.path, _signature(spec))


@functools.lru_cache(maxsize=64)
def _content_digest(dataset: str, path: str, signature: tuple) -> str:
    hasher = hashlib.sha256()
    root = Path(path)
    for name, _size, _mtime in signature:
        file = Path(name)
        if dataset == "images":
            hasher.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                hasher.update(block)
        hasher.update(b"\0")
    return hasher.hexdigest()


def load_user_probe(spec: Any) -> np.ndarray:
    """The probe's images from the user's files, normalised.

    Parameters
    ----------
    spec : raymatch.probes.ProbeSpec
        A probe of one of :data:`USER_DATASETS`.

    Returns
    -------
    numpy.ndarray, float32, shape (N, C, H, W)
        Read-only (shared with later calls on unchanged files): copy before modifying.

    Raises
    ------
    DatasetError
        One line naming the field or file: a missing or unreadable file, images of mixed sizes without
        ``size``, an array of the wrong rank, a missing column or key, a mean/std of the wrong length.
    """
    settings = (spec.dataset, spec.path, spec.size, spec.mean, spec.std, spec.key, spec.layout, spec.scale,
                spec.column)
    return _load(settings, _signature(spec))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load(settings: tuple, signature: tuple) -> np.ndarray:
    dataset, path, size, mean, std, key, layout, scale, column = settings
    if dataset == "images":
        images = _decode_images([(Path(name), None) for name, _, _ in signature], size)
    elif dataset == "array":
        images = _read_array(Path(path), key, layout or "NCHW") * (1.0 if scale is None else float(scale))
    else:
        images = _read_table(Path(path), column, size, layout or "NCHW", 1.0 if scale is None else float(scale))
    images = _normalise(images, mean, std)
    images.flags.writeable = False
    return images


def _normalise(images: np.ndarray, mean, std) -> np.ndarray:
    """``(images - mean_c) / std_c`` in float64, rounded once to float32; images (N, C, H, W)."""
    channels = images.shape[1]
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise DatasetError(f"probe.{name}: has {len(values)} values but the images have {channels} channel(s)")
    shift = np.asarray(mean if mean is not None else (0.0,), np.float64).reshape(1, -1, 1, 1)
    divide = np.asarray(std if std is not None else (1.0,), np.float64).reshape(1, -1, 1, 1)
    out = ((images - shift) / divide).astype(np.float32)
    if not np.isfinite(out).all():
        raise DatasetError(f"probe: {int((~np.isfinite(out)).sum())} pixel value(s) are NaN or infinite")
    return out


# ------------------------------------------------------------------------------------------------------ images


def _decode_images(sources: list[tuple[Path, bytes | None]], size: tuple[int, int] | None) -> np.ndarray:
    """Decode images (from files, or from bytes named by a label) to float64 ``(N, C, H, W)`` in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    decoded = []
    for name, data in sources:
        try:
            with Image.open(io.BytesIO(data) if data is not None else name) as image:
                image.load()
                decoded.append((name, image.copy()))
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise DatasetError(f"probe.path: cannot read image {name}: {error}") from None
    grey = all(image.mode in _GREY_MODES for _, image in decoded)
    mode = "L" if grey else "RGB"
    if size is None:
        sizes = {image.size for _, image in decoded}
        if len(sizes) > 1:
            (first, a), (other, b) = decoded[0], next(item for item in decoded if item[1].size != decoded[0][1].size)
            raise DatasetError(f"probe.size: images of mixed sizes ({first} is {a.height}×{a.width}, {other} is "
                               f"{b.height}×{b.width}): give probe.size [H, W] to resize and centre-crop them")
    pixels = [np.asarray(_fit(image.convert(mode), size), dtype=np.float64) for _, image in decoded]
    stacked = np.stack(pixels) / 255.0  # (N, H, W) or (N, H, W, 3)
    return stacked[:, np.newaxis] if grey else stacked.transpose(0, 3, 1, 2)


def _fit(image, size: tuple[int, int] | None):
    """Resize (bilinear) to cover ``size`` = (H, W), keeping the aspect ratio, then crop the centre."""
    from PIL import Image

    if size is None:
        return image
    height, width = size
    if image.size != (width, height):
        scale = max(height / image.height, width / image.width)
        covering = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(covering, Image.BILINEAR)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


# ------------------------------------------------------------------------------------------------------ arrays


def _read_array(path: Path, key: str | None, layout: str) -> np.ndarray:
    """An array file as float64 ``(N, C, H, W)``."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"probe.path: cannot read array file {path}: {error}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            if key is None and len(keys) != 1:
                raise DatasetError(f"probe.key: {path} holds {len(keys)} arrays ({', '.join(keys)}): name one")
            chosen = keys[0] if key is None else key
            if chosen not in keys:
                raise DatasetError(f"probe.key: {path} has no array {chosen!r}; it holds {', '.join(keys)}")
            array = loaded[chosen]
    else:
        if key is not None:
            raise DatasetError(f"probe.key: only used with a .npz file; {path} holds one array")
        array = loaded
    if array.dtype.kind not in "biuf":
        raise DatasetError(f"probe.path: {path} holds {array.dtype} values; a probe needs numbers")
    return _to_nchw(np.asarray(array, dtype=np.float64), layout, f"{path}")


def _to_nchw(array: np.ndarray, layout: str, what: str) -> np.ndarray:
    if array.ndim == 3:
        return array[:, np.newaxis]
    if array.ndim != 4:
        raise DatasetError(f"probe.path: {what} has shape {array.shape} (rank {array.ndim}); a probe needs rank 4 "
                           "(N, C, H, W, or N, H, W, C with layout: NHWC) or 3 (N, H, W: one channel)")
    return array if layout == "NCHW" else array.transpose(0, 3, 1, 2)


def _read_table(path: Path, column: str, size: tuple[int, int] | None, layout: str, scale: float) -> np.ndarray:
    """A Parquet column of encoded images (in [0, 1]) or numeric lists (times ``scale``), float64 ``(N, C, H, W)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as error:
        raise DatasetError(f"probe.path: cannot read Parquet file {path}: {error}") from None
    if column not in names:
        raise DatasetError(f"probe.column: {path} has no column {column!r}; it has {', '.join(names)}")
    values = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    if values.null_count:
        raise DatasetError(f"probe.column: {column!r} of {path} has {values.null_count} null value(s)")
    kind = values.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _decode_images([(Path(f"{path}[{column}][{i}]"), item) for i, item in
                               enumerate(values.to_pylist())], size)
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
            pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)):
        raise DatasetError(f"probe.column: {column!r} of {path} is {kind}; expected encoded image bytes or lists "
                           "of numbers")
    lengths = set(values.value_lengths().to_pylist()) if not pa.types.is_fixed_size_list(kind) else {kind.list_size}
    if len(lengths) != 1:
        raise DatasetError(f"probe.column: the lists of {column!r} in {path} differ in length ({sorted(lengths)})")
    (length,) = lengths
    if size is None:
        raise DatasetError(f"probe.size: required with a column of numeric lists ({column!r} of {path}): the "
                           "images' [H, W]")
    height, width = size
    if length % (height * width):
        raise DatasetError(f"probe.size: lists of {length} values are not a whole number of {height}×{width} images")
    flat = values.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(values), length) * scale
    channels = length // (height * width)
    shape = (len(values), channels, height, width) if layout == "NCHW" else (len(values), height, width, channels)
    return _to_nchw(flat.reshape(shape), layout, f"{path}[{column}]")
