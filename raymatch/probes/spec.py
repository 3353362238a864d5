"""Probe specifications: which inputs a study feeds its models, and which activation rows it keeps.

A :class:`ProbeSpec` names a dataset split, an optional seeded subset of it and, for conv layers, the row
sampling protocol of Wang et al. (2018): a conv channel's activation vector runs over (image, position) pairs,
and the paper keeps 10,000 of those rows, drawn 16 times. The rows drawn depend only on the spec and on the
layer's spatial shape, never on the model, so every model of a population is compared on the same rows.

A language-model study's probe is a text (``probe: {text: …}``, dataset ``text``): its texts are tokenised with the
population's tokenizer (:mod:`raymatch.probes.text`), so its id is that of the tokenised probe
(:attr:`TextProbe.id <raymatch.probes.text.TextProbe.id>`), not the spec's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, TypeAdapter, WrapValidator

from ..config import (
    Boolean,
    Config,
    Loc,
    NonNegativeInt,
    Number,
    OptionalLocalPath,
    OptionalPath,
    OptionalPositiveInt,
    OptionalString,
    PositiveInt,
    PositiveNumber,
    String,
    is_integer,
    is_list,
    is_number,
    one_of,
    optional,
    worded,
)
from ..store.layout import digest
from .datasets import SPLITS, DatasetError, load_dataset
from .files import USER_DATASETS, content_digest, load_user_probe

if TYPE_CHECKING:
    import torch

__all__ = ["IMPORTED", "POOLS", "TEXT", "TEXT_FORMATS", "ProbeSpec", "RowSample", "TokenOptions", "load_probe",
           "probe_size", "row_positions", "sample_rows"]

#: The probe of a study that imports its activations (``population.activations``): nothing to run.
IMPORTED = "imported"
#: The probe of a language-model study: texts from a file or URI (``probe.text``).
TEXT = "text"
#: ``probe.format``: how a text file holds its texts (:func:`raymatch.probes.text.parse_texts`).
TEXT_FORMATS = ("lines", "jsonl", "parquet", "fortune")
#: ``probe.tokens.pool``: one row per sequence, its last eligible token or the mean over its eligible tokens.
POOLS = ("last", "mean")
#: Every probe dataset: the built-in ones, those read from the user's files, ``imported`` and ``text``.
DATASETS = (*SPLITS, *USER_DATASETS, IMPORTED, TEXT)
#: The keys each dataset uses besides ``dataset`` and ``rows``; any other key set (not null, not its default) is a
#: problem.
USED_KEYS: dict[str, tuple[str, ...]] = {
    "digits": ("split", "n_examples", "seed"),
    "fashion-mnist": ("split", "n_examples", "seed", "data_dir"),
    "cifar10": ("split", "n_examples", "seed", "data_dir"),
    "images": ("path", "size", "mean", "std", "n_examples", "seed"),
    "array": ("path", "key", "layout", "scale", "mean", "std", "n_examples", "seed"),
    "table": ("path", "column", "size", "layout", "scale", "mean", "std", "n_examples", "seed"),
    IMPORTED: (),
    TEXT: ("text", "format", "field", "n_examples", "seed", "max_length", "tokenizer", "tokens"),
}
#: The keys added for the user's own files: left out of :meth:`ProbeSpec.to_dict` while null, so the ids and
#: config hashes of built-in probes are those of before.
FILE_KEYS = ("path", "size", "mean", "std", "key", "layout", "scale", "column")
#: The keys of a text probe, left out of :meth:`ProbeSpec.to_dict` while null (as :data:`FILE_KEYS`).
TEXT_KEYS = ("text", "format", "field", "max_length", "tokenizer", "tokens")
_REQUIRED_KEYS = {"images": ("path",), "array": ("path",), "table": ("path", "column"), TEXT: ("text",)}
#: Tokens kept of each text when ``probe.max_length`` is not given.
DEFAULT_MAX_LENGTH = 128


def _positive_int(value: Any, name: str) -> int:
    """An argument (not a config field) that must be a positive integer."""
    if not is_integer(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


#: ``[height, width]``: two positive integers.
Size = Annotated[tuple[PositiveInt, PositiveInt], worded("[height, width], two positive integers", accept=is_list)]
#: Per-channel values: one number, or one per channel.
ChannelValues = Annotated[tuple[Number, ...], Field(min_length=1),
                          worded("a list of numbers (one, or one per channel)", accept=is_list)]
ChannelScales = Annotated[tuple[PositiveNumber, ...], Field(min_length=1),
                          worded("a list of positive numbers (one, or one per channel)", accept=is_list)]
#: A factor for an array's values: any finite number but 0.
Scale = Annotated[float, Field(allow_inf_nan=False),
                  worded("a non-zero number", accept=lambda value: is_number(value) and value != 0, convert=float)]


class RowSample(Config):
    """Row sampling for conv layers: ``rows`` distinct (image, position) pairs, drawn ``repeats`` times.

    Parameters
    ----------
    rows : int
        Rows per draw, sampled without replacement from the ``n_images × height × width`` grid (the paper: 10,000).
    repeats : int, default 1
        Independent draws (the paper: 16); results are averaged over them.
    seed : int, default 0
        Seeds every draw, together with the repeat index and the layer's spatial shape.

    Raises
    ------
    raymatch.config.ConfigError
        Naming every bad field (``probe.rows.repeats: must be a positive integer; got 0``).
    """

    rows: PositiveInt
    repeats: PositiveInt = 1
    seed: NonNegativeInt = 0

    _path: ClassVar[str] = "probe.rows"


class TokenOptions(Config):
    """Which tokens of a text probe become activation rows (``probe.tokens``).

    Parameters
    ----------
    special : bool, default False
        Whether special tokens (BOS, CLS, SEP, EOS, PAD in the text) are rows too; padding never is.
    pool : {'last', 'mean'}, optional
        One row per text instead of one per token: its last eligible token, or the mean over its eligible tokens.
    """

    special: Boolean = False
    pool: optional(one_of(*POOLS)) = None

    _path: ClassVar[str] = "probe.tokens"


_All = Annotated[Literal["all"], worded("'all' or a row sample {rows, repeats, seed}")]
_all = TypeAdapter(_All).validate_python


def _rows(value: Any, _handler: Any) -> str | RowSample:
    if isinstance(value, (RowSample, Mapping)):
        return RowSample.model_validate(value)  # its problems, under rows
    return _all(value)


class ProbeSpec(Config):
    """What a study feeds its models and which activation rows it compares.

    Parameters
    ----------
    dataset : str
        One of :func:`~raymatch.probes.available_datasets`.
    split : str, default 'test'
        A split of that dataset (``'train'``, ``'test'``; ``digits`` also ``'all'``).
    n_examples : int, optional
        Keep a seeded subset of this many examples (in their split order); ``None`` keeps the whole split.
    seed : int, default 0
        Seeds the subset.
    rows : ``'all'`` or RowSample, default 'all'
        ``'all'`` uses every (image, position) row of a conv layer; a :class:`RowSample` (or a mapping with its
        fields) samples rows as in the paper.
    data_dir : str, optional
        Where the dataset's files live (``fashion-mnist``, ``cifar10``). Not part of :attr:`id`: the same files
        anywhere give the same probe.
    path : str, optional
        The user's data (datasets ``images``: a folder; ``array``: a ``.npy``/``.npz`` file; ``table``: a
        ``.parquet`` file); see :mod:`raymatch.probes.files`. Part of :attr:`id` through the files' bytes only.
    size : (int, int), optional
        ``[H, W]``: ``images`` (and encoded images of a ``table``) are resized and centre-cropped to it; a table of
        numeric lists is reshaped to it.
    mean, std : tuple of float, optional
        Normalisation ``(x - mean_c) / std_c``, one value or one per channel (after ``/255`` for image files,
        after ``scale`` for arrays).
    key : str, optional
        The array of a ``.npz`` file (needed when it holds more than one).
    layout : {'NCHW', 'NHWC'}, optional
        Axis order of an array (or of a table's flattened lists); default NCHW.
    scale : float, optional
        Multiplies an array's values (or a table's numeric lists) first (``1/255`` for bytes).
    column : str, optional
        The Parquet column of a ``table`` probe.
    text : str, optional
        A language-model study's texts: a file or URI (local, ``file://``, ``s3://``); giving it makes the dataset
        ``text``. ``n_examples`` non-empty texts are chosen with ``seed`` (:mod:`raymatch.probes.text`).
    format : {'lines', 'jsonl', 'parquet', 'fortune'}, optional
        How the file holds its texts (default ``lines``; ``fortune``: texts separated by ``%`` lines).
    field : str, optional
        The JSON key (``jsonl``) or Parquet column (``parquet``) of the texts.
    max_length : int, optional
        Tokens kept of each text (default 128; special tokens included), at most the models' positions.
    tokenizer : str, optional
        A folder holding the tokenizer to tokenise with (default: the population's own, which every model must
        share).
    tokens : TokenOptions, optional
        Which tokens become rows: ``{special: false, pool: null}`` by default (every real, non-special token).
        With ``rows`` (a row sample), that many rows are drawn from them, the same for every model.

    A key the dataset does not use (``data_dir`` with ``digits``, ``split`` with ``images``) is a problem; the
    ``imported`` dataset is the probe of a study that imports its activations (only ``rows`` applies).

    Raises
    ------
    raymatch.config.ConfigError
        Naming every unknown or missing field, wrong type and out-of-range value at once, each under its path
        (``probe.n_examples: must be a positive integer; got 0``).
    """

    dataset: one_of(*DATASETS)
    split: String = Field("test", json_schema_extra={"enum": list(dict.fromkeys(split for splits in SPLITS.values()
                                                                                for split in splits))})
    n_examples: OptionalPositiveInt = None
    seed: NonNegativeInt = 0
    rows: Annotated[_All | RowSample, WrapValidator(_rows)] = "all"
    data_dir: OptionalLocalPath = None
    path: OptionalLocalPath = None
    size: optional(Size) = None
    mean: optional(ChannelValues) = None
    std: optional(ChannelScales) = None
    key: OptionalString = None
    layout: optional(one_of("NCHW", "NHWC")) = None
    scale: optional(Scale) = None
    column: OptionalString = None
    text: OptionalString = None
    format: optional(one_of(*TEXT_FORMATS)) = None
    field: OptionalString = None
    max_length: OptionalPositiveInt = None
    tokenizer: OptionalPath = None
    tokens: TokenOptions | None = None

    _path: ClassVar[str] = "probe"

    @classmethod
    def _collect(cls, data: Any):
        if isinstance(data, Mapping) and "dataset" not in data and data.get("text") is not None:
            data = {"dataset": TEXT, **data}  # a text makes the probe a text probe
        return super()._collect(data)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema["required"] = [name for name in schema.get("required", []) if name != "dataset"]
        schema["anyOf"] = [{"required": ["dataset"]}, {"required": ["text"]}]  # a text implies dataset text
        return schema

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        dataset, split = values.get("dataset"), values.get("split")
        if dataset is None:
            return []
        used = USED_KEYS[dataset]
        problems: list[tuple[Loc, str]] = [
            ((key,), f"not used by dataset {dataset} (it uses {', '.join(('rows', *used))})")
            for key, info in cls.model_fields.items() if key not in ("dataset", "rows", *used)
            and values.get(key) not in (None, info.default)]  # (a value that failed its check: reported as such)
        problems += [((key,), f"required by dataset {dataset}") for key in _REQUIRED_KEYS.get(dataset, ())
                     if key not in data or data[key] is None]
        if dataset in SPLITS and split is not None and split not in SPLITS[dataset]:
            problems.append((("split",), f"must be one of {', '.join(SPLITS[dataset])} for {dataset}; got {split!r}"))
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values; the keys of the user's files only when set, ``split`` only where used.

        Returns
        -------
        dict
        """
        content = super().to_dict()
        for key in (*FILE_KEYS, *TEXT_KEYS):
            if content[key] is None:
                del content[key]
        if self.dataset not in SPLITS:
            del content["split"]
        return content

    def replace(self, **changes: Any) -> ProbeSpec:
        """A copy with some fields changed, checked like a new probe (the keys its dataset uses, and ``changes``).

        Returns
        -------
        ProbeSpec
        """
        return type(self).from_dict({**self.to_dict(), **changes})

    @property
    def is_text(self) -> bool:
        """Whether the probe is a language-model study's texts (dataset ``text``)."""
        return self.dataset == TEXT

    @property
    def text_max_length(self) -> int:
        """``max_length``, or its default (:data:`DEFAULT_MAX_LENGTH`)."""
        return self.max_length or DEFAULT_MAX_LENGTH

    @property
    def from_files(self) -> bool:
        """Whether the probe is read from the user's files (``images``, ``array``, ``table``)."""
        return self.dataset in USER_DATASETS

    @property
    def id(self) -> str:
        """16 hex characters identifying the probe's content (everything but ``data_dir``).

        The first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys, no spaces) of
        ``dataset, split, n_examples, seed, rows`` (:func:`raymatch.store.layout.digest`): stable across
        processes, machines and Python versions. A probe read from the user's files has its ``path`` replaced by
        the SHA-256 of the files' bytes (:func:`~raymatch.probes.files.content_digest`): a different file gives a
        different id, the same file anywhere the same one.

        Raises
        ------
        ValueError
            For a text probe, whose id is its tokenised texts' (:attr:`TextProbe.id
            <raymatch.probes.text.TextProbe.id>`; a study's :attr:`~raymatch.study.Study.probe_id`): the spec alone
            does not know the population's tokenizer.
        """
        if self.is_text:
            raise ValueError("a text probe's id is that of its tokenised texts (TextProbe.id; a study's probe_id): "
                             "the spec alone does not know the population's tokenizer")
        return self._id

    @functools.cached_property
    def _id(self) -> str:
        content = self.to_dict()
        del content["data_dir"]
        if self.from_files:
            content["path"] = content_digest(self)
        return digest(content)


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
    import torch

    if spec.dataset == IMPORTED:
        raise DatasetError("an imported probe has no images: its activations come from population.activations")
    if spec.is_text:
        raise DatasetError("a text probe has no images: its texts are tokenised (raymatch.probes.text)")
    images = load_user_probe(spec).copy() if spec.from_files else \
        load_dataset(spec.dataset, spec.split, spec.data_dir)[0]
    if spec.n_examples is not None:
        if spec.n_examples > len(images):
            raise DatasetError(
                f"probe asks for {spec.n_examples} examples but {_source(spec)} has {len(images)}"
            )
        chosen = np.sort(np.random.default_rng(spec.seed).permutation(len(images))[: spec.n_examples])
        images = images[chosen]
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


def _source(spec: ProbeSpec) -> str:
    return spec.path if spec.from_files else f"{spec.dataset}/{spec.split}"


def probe_size(spec: ProbeSpec) -> tuple[int, tuple[int, int, int]]:
    """How many images the probe's source holds and their shape, before any ``n_examples`` subset.

    Built-in datasets: their published sizes (nothing is read). The user's files: read (and checked) once, then
    cached while the files are unchanged.

    Parameters
    ----------
    spec : ProbeSpec

    Returns
    -------
    n_images : int
    shape : tuple of int
        ``(channels, height, width)``.

    Raises
    ------
    DatasetError
        The user's files cannot be read (one line naming the field or file).
    """
    from .datasets import IMAGE_SHAPES, SPLIT_SIZES

    if spec.from_files:
        images = load_user_probe(spec)
        return len(images), tuple(images.shape[1:])
    return SPLIT_SIZES[spec.dataset][spec.split], IMAGE_SHAPES[spec.dataset]


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
    if not is_integer(repeat) or not 0 <= repeat < sample.repeats:
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
