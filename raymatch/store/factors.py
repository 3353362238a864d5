"""Per-(model, layer, repeat) factors in the store, computed once and reused by every pair."""

from __future__ import annotations

import numpy as np

from ..match import Factor, factor
from . import layout
from .activations import ActivationKey, read_activations
from .arrays import decode, encode, matrix_to_table, table_to_matrix
from .layout import FACTOR_VERSION
from .store import Store


def factor_prefix(key: ActivationKey, center: bool) -> str:
    """Where the factor of one stored activation matrix lives (see :func:`raymatch.store.layout.factor_prefix`)."""
    return layout.factor_prefix(key.probe_id, key.model_id, key.layer, key.repeat, center)


def write_factor(store: Store, prefix: str, value: Factor) -> None:
    """Store ``value`` as two Arrow IPC matrices (float64, exact) and a manifest written last."""
    store.write_bytes(layout.factor_part_key(prefix, "basis"), encode(matrix_to_table(value.basis), "arrow"))
    store.write_bytes(layout.factor_part_key(prefix, "coords"), encode(matrix_to_table(value.coords), "arrow"))
    store.write_json(layout.manifest_key(prefix), {
        "live": value.live.tolist(), "n_samples": value.n_samples, "n_neurons": value.n_neurons,
        "centered": value.centered, "rank": value.rank, "version": FACTOR_VERSION,
    })


def read_factor(store: Store, prefix: str) -> Factor:
    """The factor stored at ``prefix`` by :func:`write_factor`."""
    manifest = store.read_json(layout.manifest_key(prefix))
    rank, n_live = manifest["rank"], len(manifest["live"])
    basis = table_to_matrix(decode(store.read_bytes(layout.factor_part_key(prefix, "basis")), "arrow"), np.float64)
    coords = table_to_matrix(decode(store.read_bytes(layout.factor_part_key(prefix, "coords")), "arrow"), np.float64)
    basis = basis.reshape(manifest["n_samples"], rank)
    coords = coords.reshape(rank, n_live)
    return Factor(basis, coords, np.asarray(manifest["live"], dtype=np.int64), manifest["n_samples"],
                  manifest["n_neurons"], manifest["centered"])


def cached_factor(store: Store, key: ActivationKey, *, center: bool = False) -> Factor:
    """The factor of a stored activation matrix: read it if stored, else compute, store and return it."""
    prefix = factor_prefix(key, center)
    if store.exists(layout.manifest_key(prefix)):
        return read_factor(store, prefix)
    value = factor(read_activations(store, key), center=center, name=f"activations of {key.model_id}/{key.layer}")
    write_factor(store, prefix, value)
    return value
