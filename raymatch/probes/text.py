"""Text probes: texts read from a file or URI, a seeded subset of them, tokenised with the population's tokenizer.

``probe: {text, format, field, n_examples, seed, max_length, tokenizer}`` of a language-model study. The text is read
through the store's filesystem layer (a local path, ``file://`` or ``s3://``: :class:`raymatch.store.Store`) in one
of the :data:`TEXT_FORMATS`:

- ``lines``: one text per line;
- ``jsonl``: one JSON object per line, the text under ``field``;
- ``parquet``: the string column ``field``;
- ``fortune``: texts separated by lines holding only ``%`` (the strfile format of Debian's ``fortunes``).

``n_examples`` non-empty texts are chosen with ``seed`` (kept in their order in the file), tokenised (special tokens
as the tokenizer adds them) and truncated at ``max_length`` tokens. The probe id digests the chosen texts, the
tokenizer's fingerprint (:func:`~raymatch.probes.tokenizer.tokenizer_fingerprint`), ``max_length`` and the
token-row settings (:class:`~raymatch.probes.token_rows.TokenRows`): the same texts anywhere are the same probe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..store.layout import canonical_json, digest
from .datasets import DatasetError
from .spec import TEXT_FORMATS
from .token_rows import TokenRows, candidate_rows, processing_order, sample_token_rows

__all__ = ["TEXT_FORMATS", "TextProbe", "TextProbeError", "check_max_length", "choose_texts", "make_text_probe",
           "parse_texts", "read_text_bytes", "read_texts"]


class TextProbeError(DatasetError):
    """A text probe that cannot be read or built as asked; the message names the field and the file."""


def read_text_bytes(uri: str, *, store_options: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of a text file: a local path, ``file://…`` or ``s3://bucket/key``, through the store's filesystem.

    Parameters
    ----------
    uri : str
    store_options : mapping, optional
        :class:`~raymatch.store.Store` keyword arguments (``endpoint_url``, ``key``, ``secret``, ``storage_options``)
        for an ``s3://`` URI.

    Raises
    ------
    TextProbeError
        The file does not exist or cannot be read.
    """
    from ..store import Store

    if not isinstance(uri, str) or not uri or uri.endswith("/"):
        raise TextProbeError(f"probe.text: {uri!r} names no file")
    if "://" in uri and not uri.startswith("file://"):
        parent, _, name = uri.rpartition("/")
    else:  # a local file: its folder is the store
        parent, name = os.path.split(os.path.abspath(os.path.expanduser(uri.removeprefix("file://"))))
    try:
        store = Store(parent, **dict(store_options or {}))
        return store.fs.cat_file(f"{store.root}/{name}")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise TextProbeError(f"probe.text: {uri} does not exist (or is a folder)") from None
    except (OSError, ValueError) as error:
        raise TextProbeError(f"probe.text: cannot read {uri}: {error}") from None


def _jsonl(data: bytes, field_name: str, source: str) -> list[str]:
    texts = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            texts.append("")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TextProbeError(f"probe.text: line {number} of {source} is not JSON: {error.msg}") from None
        if not isinstance(record, dict) or field_name not in record:
            raise TextProbeError(f"probe.field: line {number} of {source} has no field {field_name!r}")
        value = record[field_name]
        if value is not None and not isinstance(value, str):
            raise TextProbeError(f"probe.field: {field_name!r} on line {number} of {source} is a "
                                 f"{type(value).__name__}, not a string")
        texts.append(value or "")
    return texts


def _parquet(data: bytes, field_name: str, source: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as error:
        raise TextProbeError(f"probe.text: {source} is not a Parquet file: {error}") from None
    if field_name not in schema.names:
        raise TextProbeError(f"probe.field: {source} has no column {field_name!r} (columns: {', '.join(schema.names)})")
    column = pq.read_table(pa.BufferReader(data), columns=[field_name]).column(0)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise TextProbeError(f"probe.field: column {field_name!r} of {source} holds {column.type}, not strings")
    return [value or "" for value in column.to_pylist()]


def parse_texts(data: bytes, fmt: str = "lines", field_name: str | None = None, *, source: str = "the text"
                ) -> list[str]:
    """Every text a file holds, empty ones included, in file order.

    Parameters
    ----------
    data : bytes
    fmt : str
        One of :data:`TEXT_FORMATS`.
    field_name : str, optional
        The JSON key (``jsonl``) or column (``parquet``); required by those formats and by no other.
    source : str
        What to call the file in messages.

    Returns
    -------
    list of str

    Raises
    ------
    TextProbeError
    """
    if fmt not in TEXT_FORMATS:
        raise TextProbeError(f"probe.format: must be one of {', '.join(TEXT_FORMATS)}; got {fmt!r}")
    if fmt in ("jsonl", "parquet") and not field_name:
        raise TextProbeError(f"probe.field: required by format {fmt}")
    if fmt not in ("jsonl", "parquet") and field_name:
        raise TextProbeError(f"probe.field: not used by format {fmt}")
    if fmt == "parquet":
        return _parquet(data, field_name, source)
    if fmt == "jsonl":
        return _jsonl(data, field_name, source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TextProbeError(f"probe.text: {source} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if fmt == "lines":
        return text.splitlines()
    records, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            records.append("\n".join(current))
            current = []
        else:
            current.append(line)
    return [*records, "\n".join(current)]


def read_texts(text: str, fmt: str = "lines", field_name: str | None = None, *,
               store_options: Mapping[str, Any] | None = None) -> list[str]:
    """Every text of a file or URI, empty ones included (:func:`read_text_bytes`, then :func:`parse_texts`)."""
    if fmt not in TEXT_FORMATS:  # before reading anything
        raise TextProbeError(f"probe.format: must be one of {', '.join(TEXT_FORMATS)}; got {fmt!r}")
    return parse_texts(read_text_bytes(text, store_options=store_options), fmt, field_name, source=text)


def choose_texts(texts: Sequence[str], n_examples: int | None, seed: int = 0, *, source: str = "the text"
                 ) -> tuple[list[str], np.ndarray]:
    """``n_examples`` of the non-empty texts, chosen with ``seed`` and kept in their order.

    Parameters
    ----------
    texts : sequence of str
    n_examples : int or None
        None keeps every non-empty text.
    seed : int
    source : str
        What to call the file in messages.

    Returns
    -------
    chosen : list of str
    indices : numpy.ndarray, int64
        Each chosen text's index in ``texts`` (its line, record or row).

    Raises
    ------
    TextProbeError
        Fewer non-empty texts than ``n_examples``.
    """
    nonempty = np.array([i for i, value in enumerate(texts) if value.strip()], dtype=np.int64)
    if n_examples is None:
        chosen = nonempty
    else:
        if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
            raise TextProbeError(f"probe.n_examples: must be a positive integer; got {n_examples!r}")
        if n_examples > len(nonempty):
            raise TextProbeError(f"probe.n_examples: asks for {n_examples} texts but {source} has only "
                                 f"{len(nonempty)} non-empty texts")
        chosen = np.sort(nonempty[np.random.default_rng(seed).permutation(len(nonempty))[:n_examples]])
    return [texts[i] for i in chosen], chosen


def check_max_length(max_length: int, positions: int | None, model: str) -> int:
    """Refuse a ``max_length`` beyond a model's positions (``config.n_positions`` / ``max_position_embeddings``).

    Returns
    -------
    int
        ``max_length``.

    Raises
    ------
    TextProbeError
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise TextProbeError(f"probe.max_length: must be a positive integer; got {max_length!r}")
    if positions is not None and max_length > positions:
        raise TextProbeError(f"probe.max_length: {max_length} is beyond the {positions} positions of model {model}")
    return max_length


@dataclass(frozen=True, eq=False)
class TextProbe:
    """A tokenised text probe: what every model of a language-model population is run on.

    Attributes
    ----------
    texts : tuple of str
        The chosen texts; a row's ``sequence`` indexes them.
    source_index : numpy.ndarray, int64, shape (n_texts,)
        Each text's index in the source file (line, record or row).
    input_ids : tuple of numpy.ndarray, int64, shape (length_i,)
    special : tuple of numpy.ndarray, bool, shape (length_i,)
        True where a token is special (added by the tokenizer, or one of its special tokens in the text).
    pieces : tuple of tuple of str
        Each token as the tokenizer spells it.
    tokens : TokenRows
        Which tokens become rows.
    fingerprint : str
        The tokenizer's :func:`~raymatch.probes.tokenizer.tokenizer_fingerprint`.
    max_length : int
    padding_side : {'right', 'left'}
        The tokenizer's side: batches are padded there.
    pad_token_id : int
        Fills padded positions (masked out; the tokenizer's pad token, else its EOS, else 0).
    source : str
        Where the texts came from (not part of :attr:`id`).
    """

    texts: tuple[str, ...]
    source_index: np.ndarray
    input_ids: tuple[np.ndarray, ...]
    special: tuple[np.ndarray, ...]
    pieces: tuple[tuple[str, ...], ...]
    tokens: TokenRows
    fingerprint: str
    max_length: int
    padding_side: str = "right"
    pad_token_id: int = 0
    source: str = field(default="", compare=False)

    @functools.cached_property
    def id(self) -> str:
        """16 hex characters: the digest of the texts, the tokenizer fingerprint, max_length and token settings."""
        texts = hashlib.sha256(canonical_json(list(self.texts)).encode("ascii")).hexdigest()
        return digest({"kind": "text", "texts": texts, "tokenizer": self.fingerprint, "max_length": self.max_length,
                       "tokens": self.tokens.to_dict()})

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each sequence, shape (n_texts,)."""
        return np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    @functools.cached_property
    def order(self) -> np.ndarray:
        """Sequences longest first (:func:`~raymatch.probes.token_rows.processing_order`)."""
        return processing_order(self.lengths)

    @functools.cached_property
    def candidates(self) -> np.ndarray:
        """Every eligible ``(sequence, position)`` in processing order (:func:`~.token_rows.candidate_rows`)."""
        return candidate_rows(self.special, self.tokens)

    def rows(self, repeat: int = 0) -> np.ndarray:
        """The ``(sequence, position)`` rows of one repeat, shape (n_rows, 2), identical for every model."""
        return sample_token_rows(self.candidates, self.tokens, repeat)


def _special_masks(tokenizer: Any, encoded: Mapping[str, list]) -> list[np.ndarray]:
    special_ids = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    return [np.asarray(mask, bool) | np.isin(np.asarray(ids, np.int64), special_ids)
            for ids, mask in zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True)]


def make_text_probe(text: str, *, tokenizer: Any, fmt: str = "lines", field_name: str | None = None,
                    n_examples: int | None = None, seed: int = 0, max_length: int = 128,
                    tokens: TokenRows | None = None, positions: int | None = None, model: str = "the model",
                    store_options: Mapping[str, Any] | None = None, texts: Sequence[str] | None = None) -> TextProbe:
    """Read, choose and tokenise a text probe.

    Parameters
    ----------
    text : str
        A file or URI (``probe.text``).
    tokenizer : transformers tokenizer or str
        The population's tokenizer, or a folder holding one (``probe.tokenizer``).
    fmt, field_name : str
        ``probe.format`` and ``probe.field`` (:func:`parse_texts`).
    n_examples, seed : int
        ``probe.n_examples`` non-empty texts chosen with ``probe.seed`` (:func:`choose_texts`).
    max_length : int
        Tokens kept of each text.
    tokens : TokenRows, optional
        Which tokens become rows (default: every real, non-special token).
    positions : int, optional
        The models' positions (:func:`~raymatch.models.transformers_source.max_positions`): a ``max_length``
        beyond them is refused, naming ``model``.
    model : str
        The model named in that message.
    store_options : mapping, optional
        For an ``s3://`` text (:func:`read_text_bytes`).
    texts : sequence of str, optional
        The file's texts when the caller has read them already (``text`` then only names them).

    Returns
    -------
    TextProbe

    Raises
    ------
    TextProbeError
        A file that cannot be read or parsed, too few non-empty texts, a bad ``max_length``.
    """
    from .tokenizer import load_tokenizer, tokenizer_fingerprint

    check_max_length(max_length, positions, model)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    if texts is None:
        texts = read_texts(text, fmt, field_name, store_options=store_options)
    chosen, indices = choose_texts(texts, n_examples, seed, source=text)
    encoded = tokenizer(chosen, truncation=True, max_length=max_length, add_special_tokens=True,
                        return_special_tokens_mask=True, return_attention_mask=False)
    input_ids = tuple(np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"])
    pad = next((value for value in (tokenizer.pad_token_id, tokenizer.eos_token_id) if value is not None), 0)
    return TextProbe(texts=tuple(chosen), source_index=indices, input_ids=input_ids,
                     special=tuple(_special_masks(tokenizer, encoded)),
                     pieces=tuple(tuple(tokenizer.convert_ids_to_tokens(ids.tolist())) for ids in input_ids),
                     tokens=tokens or TokenRows(), fingerprint=tokenizer_fingerprint(tokenizer),
                     max_length=max_length, padding_side=tokenizer.padding_side, pad_token_id=int(pad), source=text)

