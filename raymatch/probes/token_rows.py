"""Which tokens of a text probe become activation rows: real tokens only, sampled identically for every model.

A row is one (sequence, position) of a real token: padding never is, and special tokens (BOS, CLS, SEP, EOS, PAD)
are left out unless ``special=True``; ``pool: last | mean`` makes one row per sequence instead (its last eligible
token, or the mean over its eligible tokens). Sequences are processed longest first (ties in text order), the order
that makes length-bucketed batches consecutive; rows are listed in that order, then by position. Everything here is
a function of the probe's token layout (each sequence's length and special-token mask) only, so every model of a
population gets the same rows in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .spec import POOLS, RowSample

__all__ = ["POOLS", "TokenRows", "batch_ranges", "candidate_rows", "padding_share", "processing_order",
           "sample_token_rows"]


@dataclass(frozen=True)
class TokenRows:
    """How a text probe's tokens become rows (the study's ``tokens`` and ``rows`` sections).

    Attributes
    ----------
    special : bool
        Whether special tokens (BOS, CLS, SEP, EOS, PAD in the text) are rows too.
    pool : {'last', 'mean'} or None
        One row per sequence instead of one per token.
    rows : RowSample or None
        ``rows`` rows drawn ``repeats`` times with ``seed`` from the eligible tokens (or sequences, when pooled);
        None keeps every one of them.
    """

    special: bool = False
    pool: str | None = None
    rows: RowSample | None = None

    def __post_init__(self):
        if not isinstance(self.special, bool):
            raise ValueError(f"tokens.special: must be true or false; got {self.special!r}")
        if self.pool is not None and self.pool not in POOLS:
            raise ValueError(f"tokens.pool: must be one of {', '.join(POOLS)}; got {self.pool!r}")
        if isinstance(self.rows, Mapping):
            object.__setattr__(self, "rows", RowSample.from_dict(dict(self.rows)))
        elif self.rows is not None and not isinstance(self.rows, RowSample):
            raise ValueError(f"rows: must be a row sample {{rows, repeats, seed}}; got {self.rows!r}")

    @property
    def repeats(self) -> int:
        """How many row draws there are (1 without sampling)."""
        return self.rows.repeats if self.rows is not None else 1

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (part of the probe id)."""
        return {"special": self.special, "pool": self.pool,
                "rows": None if self.rows is None else self.rows.to_dict()}


def processing_order(lengths: Sequence[int]) -> np.ndarray:
    """Sequence indices longest first, ties in text order: the order batches and rows follow.

    Parameters
    ----------
    lengths : sequence of int, shape (n_sequences,)

    Returns
    -------
    numpy.ndarray, int64, shape (n_sequences,)
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.lexsort((np.arange(len(lengths)), -lengths)).astype(np.int64)


def candidate_rows(special_masks: Sequence[np.ndarray], tokens: TokenRows) -> np.ndarray:
    """Every row the probe can give, in processing order: ``(sequence, position)`` pairs.

    Parameters
    ----------
    special_masks : sequence of bool arrays, one per sequence, shape (length_i,)
        True where a token is special.
    tokens : TokenRows

    Returns
    -------
    numpy.ndarray, int64, shape (n_candidates, 2)
        Columns sequence (index in the probe's texts) and position (token index in that sequence; for
        ``pool='mean'`` -1, the row being the whole sequence).

    Raises
    ------
    ValueError
        A pooled probe with a sequence holding no eligible token.
    """
    order = processing_order([len(mask) for mask in special_masks])
    parts = []
    for sequence in order:
        eligible = np.ones(len(special_masks[sequence]), bool) if tokens.special else ~special_masks[sequence]
        positions = np.flatnonzero(eligible)
        if tokens.pool is not None:
            if not len(positions):
                raise ValueError(f"probe: text {sequence} has no token that is not special: with tokens.pool every "
                                 "text needs one (or set tokens.special: true)")
            positions = positions[-1:] if tokens.pool == "last" else np.array([-1])
        parts.append(np.stack([np.full(len(positions), sequence), positions], axis=1))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)


def sample_token_rows(candidates: np.ndarray, tokens: TokenRows, repeat: int) -> np.ndarray:
    """The rows one repeat keeps, in processing order: a subset of :func:`candidate_rows`.

    Parameters
    ----------
    candidates : numpy.ndarray, int64, shape (n_candidates, 2)
    tokens : TokenRows
    repeat : int
        In ``[0, tokens.repeats)``.

    Returns
    -------
    numpy.ndarray, int64, shape (n_rows, 2)
        Every candidate without sampling; else ``rows`` of them, drawn without replacement with
        ``numpy.random.default_rng([seed, repeat, n_candidates])`` and kept in candidate order.

    Raises
    ------
    ValueError
        ``repeat`` out of range, or more rows asked for than there are candidates.
    """
    if not 0 <= repeat < tokens.repeats:
        raise ValueError(f"repeat must be in [0, {tokens.repeats}); got {repeat!r}")
    if tokens.rows is None:
        return candidates
    available = len(candidates)
    what = "texts" if tokens.pool else "real tokens" + ("" if tokens.special else " (special tokens excluded)")
    if tokens.rows.rows > available:
        raise ValueError(f"rows.rows: asks for {tokens.rows.rows} rows but the probe has only {available} {what}")
    rng = np.random.default_rng([tokens.rows.seed, int(repeat), available])
    chosen = np.sort(rng.choice(available, size=tokens.rows.rows, replace=False))
    return candidates[chosen]


def batch_ranges(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None
                 ) -> list[tuple[int, int]]:
    """Length-bucketed batches: consecutive ranges of the processing order.

    Sequences sorted longest first are cut into batches of at most ``batch_size`` sequences and, with
    ``max_batch_tokens``, at most that many padded tokens (a batch of one sequence is always allowed); each batch is
    padded to its first (longest) sequence.

    Parameters
    ----------
    lengths : sequence of int, shape (n_sequences,)
    batch_size : int
    max_batch_tokens : int, optional

    Returns
    -------
    list of (start, stop)
        Ranges of positions in :func:`processing_order`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    ordered = np.asarray(lengths, dtype=np.int64)[processing_order(lengths)]
    ranges, start = [], 0
    while start < len(ordered):
        width = max(int(ordered[start]), 1)
        count = batch_size if max_batch_tokens is None else max(1, min(batch_size, max_batch_tokens // width))
        stop = min(start + count, len(ordered))
        ranges.append((start, stop))
        start = stop
    return ranges


def padding_share(lengths: Sequence[int], ranges: Sequence[tuple[int, int]]) -> float:
    """The share of padded tokens in the batches: 1 − real tokens / batch tokens.

    Parameters
    ----------
    lengths : sequence of int
    ranges : sequence of (start, stop)
        From :func:`batch_ranges`.

    Returns
    -------
    float
    """
    ordered = np.asarray(lengths, dtype=np.int64)[processing_order(lengths)]
    padded = sum(int(ordered[start:stop].max()) * (stop - start) for start, stop in ranges)
    return 1.0 - float(ordered.sum()) / padded if padded else 0.0
