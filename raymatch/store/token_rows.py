"""The tokens a text probe's activation rows are: one small Parquet table per probe and repeat.

Columns: ``row`` (the activation matrix's row), ``sequence`` (the text's index in the probe), ``position`` (the
token's index in its tokenised text; -1 for a mean-pooled row, which is the whole text), ``token_id`` and ``token``
(the tokenizer's spelling; for a mean-pooled row, empty). Written whole before any activation matrix of the probe, so
a matrix's rows can always be looked up: ``read_token_rows(store, probe_id)``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa

from .layout import token_rows_key
from .store import Store, check_name

__all__ = ["read_token_rows", "rows_sha256", "token_rows_table", "write_token_rows"]


def rows_sha256(rows: np.ndarray) -> str:
    """SHA-256 (hex) of ``(n_rows, 2)`` (sequence, position) rows as little-endian int64: recorded in manifests."""
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes()).hexdigest()


def token_rows_table(rows: np.ndarray, token_ids: np.ndarray, tokens: list[str]) -> pa.Table:
    """The table of one repeat's rows.

    Parameters
    ----------
    rows : numpy.ndarray, int64, shape (n_rows, 2)
        (sequence, position) of each row.
    token_ids : numpy.ndarray, int64, shape (n_rows,)
        -1 where a row is no single token.
    tokens : list of str, length n_rows

    Returns
    -------
    pyarrow.Table
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    return pa.table({"row": np.arange(len(rows), dtype=np.int64), "sequence": rows[:, 0], "position": rows[:, 1],
                     "token_id": np.asarray(token_ids, dtype=np.int64), "token": pa.array(tokens, pa.string())})


def write_token_rows(store: Store, probe_id: str, repeat: int, table: pa.Table) -> str:
    """Store one repeat's rows table (whole, never half-written) unless it is there; returns its key."""
    key = token_rows_key(check_name(probe_id, "probe id"), repeat)
    if not store.exists(key):
        store.write_table(key, table)
    return key


def read_token_rows(store: Store, probe_id: str, repeat: int = 0) -> pd.DataFrame:
    """Which token each row of a text probe's activation matrices is.

    Parameters
    ----------
    store : Store
    probe_id : str
        :attr:`TextProbe.id <raymatch.probes.text.TextProbe.id>`.
    repeat : int

    Returns
    -------
    pandas.DataFrame
        Columns row, sequence, position, token_id, token; one line per activation row, in row order.

    Raises
    ------
    FileNotFoundError
        No rows are stored for that probe and repeat.
    """
    key = token_rows_key(check_name(probe_id, "probe id"), repeat)
    return store.read_table(key).to_pandas()
