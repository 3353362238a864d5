"""Activation matrices in the store: row shards plus a manifest that marks completion.

Layout (every part derived from what determines the content)::

    activations/<probe id>/<model id>/<layer>/r<repeat>/part-00000.<fmt>
                                                        part-00001.<fmt>
                                                        _manifest.json   (written last)

A matrix is *stored* exactly when its manifest exists; readers never look at parts without one,
so an interrupted write is invisible. Each part carries the model id, layer, probe id, shape, dtype
and row policy in its Arrow schema metadata as well.
"""

from __future__ import annotations

import json
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from .arrays import FORMATS, decode, encode, matrix_to_table, table_to_matrix
from .layout import activation_prefix, layer_key, manifest_key
from .store import Store, check_name

#: Default encoding of activation shards (see docs/benchmarks.md, "Activation store").
DEFAULT_FORMAT = "arrow"
#: Rows per shard by default (a 512-neuron float32 shard is then 128 MiB at most).
DEFAULT_SHARD_ROWS = 65_536


@dataclass(frozen=True)
class ActivationKey:
    """Where one activation matrix lives: probe, model, layer and sampling repeat."""

    probe_id: str
    model_id: str
    layer: str
    repeat: int = 0

    def __post_init__(self):
        check_name(self.probe_id, "probe id")
        check_name(self.model_id, "model id")
        check_name(layer_key(self.layer), "layer name")
        if not isinstance(self.repeat, int) or self.repeat < 0:
            raise ValueError(f"repeat must be a non-negative integer; got {self.repeat!r}")

    @property
    def prefix(self) -> str:
        """Where the matrix's shards and manifest live."""
        return activation_prefix(self.probe_id, self.model_id, self.layer, self.repeat)

    @property
    def manifest(self) -> str:
        """The matrix's manifest: it is stored exactly when this exists."""
        return manifest_key(self.prefix)


class ActivationWriter:
    """Stream rows of one activation matrix into shards; :meth:`close` writes the manifest.

    Parameters
    ----------
    store : Store
    key : ActivationKey
    n_neurons : int
    metadata : dict
        Provenance recorded in the manifest and in every shard (row policy, shape of the layer…).
    shard_rows : int
    fmt : {"arrow", "parquet"}
    executor : concurrent.futures.Executor, optional
        Where shard writes run (a writer thread lets the next forward pass overlap the IO);
        :meth:`close` waits for them before the manifest is written.
    """

    def __init__(self, store: Store, key: ActivationKey, n_neurons: int, *, metadata: dict | None = None,
                 shard_rows: int = DEFAULT_SHARD_ROWS, fmt: str = DEFAULT_FORMAT,
                 executor: Executor | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown activation format {fmt!r}; use one of {FORMATS}")
        self.store, self.key, self.n_neurons, self.fmt = store, key, n_neurons, fmt
        self.shard_rows = shard_rows
        self.metadata = {"probe_id": key.probe_id, "model_id": key.model_id, "layer": key.layer,
                         "repeat": key.repeat, "dtype": "float32", **(metadata or {})}
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._parts: list[dict] = []
        self._executor = executor
        self._pending: list[Future] = []

    def append(self, rows: np.ndarray) -> None:
        """Add rows, shape (n_rows, n_neurons); any float dtype is stored as float32.

        Column-major rows (a transposed (n_neurons, n_rows) block) are taken without a copy.
        """
        if rows.ndim != 2 or rows.shape[1] != self.n_neurons:
            raise ValueError(f"expected rows of {self.n_neurons} neurons; got shape {rows.shape}")
        self._buffer.append(np.ascontiguousarray(rows.T, dtype=np.float32))  # (n_neurons, n_rows)
        self._buffered += rows.shape[0]
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def _flush(self, n_rows: int) -> None:
        block = np.concatenate(self._buffer, axis=1) if len(self._buffer) > 1 else self._buffer[0]
        shard, rest = block[:, :n_rows], block[:, n_rows:]
        self._buffer = [rest] if rest.shape[1] else []
        self._buffered = rest.shape[1]
        name = f"part-{len(self._parts):05d}.{self.fmt}"
        meta = {**self.metadata, "part": len(self._parts), "rows": int(shard.shape[1]),
                "shape": [int(shard.shape[1]), self.n_neurons]}
        data = encode(matrix_to_table(shard.T, meta), self.fmt)
        self._parts.append({"name": name, "rows": int(shard.shape[1])})
        if self._executor is None:
            self.store.write_bytes(f"{self.key.prefix}/{name}", data)
        else:
            self._pending.append(self._executor.submit(self.store.write_bytes, f"{self.key.prefix}/{name}", data))

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        errors = [future.exception() for future in pending]
        errors = [error for error in errors if error is not None]
        if errors:
            raise errors[0]

    def close(self) -> dict:
        """Write what is left, then the manifest (only once every part is written); return the manifest.

        With an executor the manifest is queued behind the parts and :meth:`result` waits for it.
        """
        if self._buffered or not self._parts:
            if not self._buffered:  # an empty matrix still gets one (empty) part
                self._buffer = [np.zeros((self.n_neurons, 0), np.float32)]
            self._flush(self._buffered)
        n_rows = sum(part["rows"] for part in self._parts)
        manifest = {**self.metadata, "format": self.fmt, "shape": [n_rows, self.n_neurons], "parts": self._parts}
        if self._executor is None:
            self.store.write_json(self.key.manifest, manifest)
        else:  # a single writer thread runs this after the parts queued before it
            self._pending.append(self._executor.submit(self._finish, list(self._pending), manifest))
        return manifest

    def _finish(self, parts: list[Future], manifest: dict) -> None:
        for future in parts:
            future.result()  # a failed part means no manifest: the matrix stays invisible
        self.store.write_json(self.key.manifest, manifest)

    def result(self) -> None:
        """Wait for queued writes; raise the first error."""
        self._wait()

    def abort(self) -> None:
        """Remove what was written (best effort), manifest first, so nothing half-done stays visible."""
        for future in self._pending:
            future.exception()  # wait; the error, if any, is the caller's to report
        self._pending = []
        for key in [self.key.manifest] + [f"{self.key.prefix}/{part['name']}" for part in self._parts]:
            try:  # the manifest goes first: the matrix stops being visible before its parts go
                self.store.delete(key)
            except OSError:
                pass
        self._parts = []


def write_activations(store: Store, key: ActivationKey, matrix: np.ndarray, *, metadata: dict | None = None,
                      shard_rows: int = DEFAULT_SHARD_ROWS, fmt: str = DEFAULT_FORMAT) -> dict:
    """Store one whole matrix (n_rows, n_neurons); returns the manifest."""
    writer = ActivationWriter(store, key, matrix.shape[1], metadata=metadata, shard_rows=shard_rows, fmt=fmt)
    writer.append(matrix)
    return writer.close()


def is_stored(store: Store, key: ActivationKey) -> bool:
    """Whether the matrix at ``key`` is stored (its manifest exists)."""
    return store.exists(key.manifest)


def read_manifest(store: Store, key: ActivationKey) -> dict:
    """The manifest of the stored matrix at ``key``: shape, dtype, parts and provenance."""
    return store.read_json(key.manifest)


def iter_shards(store: Store, key: ActivationKey):
    """Yield the stored matrix shard by shard, each (rows_i, n_neurons) float32, column-major."""
    manifest = read_manifest(store, key)
    for part in manifest["parts"]:
        table = decode(store.read_bytes(f"{key.prefix}/{part['name']}"), manifest["format"])
        yield table_to_matrix(table, np.float32)


def read_activations(store: Store, key: ActivationKey, *, manifest: dict | None = None) -> np.ndarray:
    """The whole stored matrix, (n_rows, n_neurons) float32, column-major, read shard by shard.

    ``manifest`` is the matrix's manifest when the caller has read it already (it is read otherwise).
    """
    if manifest is None:
        manifest = read_manifest(store, key)
    n_rows, n_neurons = manifest["shape"]
    out = np.empty((n_rows, n_neurons), dtype=np.float32, order="F")
    start = 0
    for part in manifest["parts"]:
        table = decode(store.read_bytes(f"{key.prefix}/{part['name']}"), manifest["format"])
        table_to_matrix(table, np.float32, out=out[start : start + table.num_rows])
        start += table.num_rows
    return out


def stored_repeats(store: Store, probe_id: str, model_id: str, layer: str) -> int | None:
    """How many row-sampling repeats of a layer are stored, or None unless all of them are."""
    return stored_repeats_of(store, probe_id, [(model_id, layer)])[model_id, layer]


def stored_repeats_of(store: Store, probe_id: str, matrices) -> dict[tuple[str, str], int | None]:
    """:func:`stored_repeats` of many ``(model id, layer)`` at once: two batched reads of manifests, not 2 per matrix.

    The first repeat's manifest says how many repeats there are (its row policy); the others' manifests must exist.
    """
    matrices = list(dict.fromkeys(matrices))
    firsts = store.read_many([ActivationKey(probe_id, model, layer, 0).manifest for model, layer in matrices])
    counts = {}
    for matrix, data in zip(matrices, firsts, strict=True):
        policy = json.loads(data).get("row_policy", "all") if data is not None else None
        counts[matrix] = None if policy is None else policy["repeats"] if isinstance(policy, dict) else 1
    others = [(matrix, ActivationKey(probe_id, *matrix, repeat).manifest)
              for matrix, count in counts.items() for repeat in range(1, count or 0)]
    for (matrix, _), data in zip(others, store.read_many([key for _, key in others]), strict=True):
        if data is None:
            counts[matrix] = None
    return counts
