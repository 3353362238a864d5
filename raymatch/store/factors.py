"""Per-(model, layer, repeat) factors in the store, computed once and reused by every pair."""

from __future__ import annotations

import numpy as np

from ..match import Factor, factor
from .activations import ActivationKey, read_activations
from .arrays import decode, encode, matrix_to_table, table_to_matrix
from .store import Store

#: Bumped whenever the factorisation changes what it stores: part of every factor key.
FACTOR_VERSION = "v1"


def factor_prefix(key: ActivationKey, center: bool) -> str:
    kind = "centered" if center else "raw"
    return f"factors/{FACTOR_VERSION}/{key.probe_id}/{key.model_id}/{key.layer}/r{key.repeat}/{kind}"


def write_factor(store: Store, prefix: str, value: Factor) -> None:
    """Store ``value`` as two Arrow IPC matrices (float64, exact) and a manifest written last."""
    store.write_bytes(f"{prefix}/basis.arrow", encode(matrix_to_table(value.basis), "arrow"))
    store.write_bytes(f"{prefix}/coords.arrow", encode(matrix_to_table(value.coords), "arrow"))
    store.write_json(f"{prefix}/_manifest.json", {
        "live": value.live.tolist(), "n_samples": value.n_samples, "n_neurons": value.n_neurons,
        "centered": value.centered, "rank": value.rank, "version": FACTOR_VERSION,
    })


def read_factor(store: Store, prefix: str) -> Factor:
    manifest = store.read_json(f"{prefix}/_manifest.json")
    rank, n_live = manifest["rank"], len(manifest["live"])
    basis = table_to_matrix(decode(store.read_bytes(f"{prefix}/basis.arrow"), "arrow"), np.float64)
    coords = table_to_matrix(decode(store.read_bytes(f"{prefix}/coords.arrow"), "arrow"), np.float64)
    basis = basis.reshape(manifest["n_samples"], rank)
    coords = coords.reshape(rank, n_live)
    return Factor(basis, coords, np.asarray(manifest["live"], dtype=np.int64), manifest["n_samples"],
                  manifest["n_neurons"], manifest["centered"])


def cached_factor(store: Store, key: ActivationKey, *, center: bool = False) -> Factor:
    """The factor of a stored activation matrix: read it if stored, else compute, store and return it."""
    prefix = factor_prefix(key, center)
    if store.exists(f"{prefix}/_manifest.json"):
        return read_factor(store, prefix)
    value = factor(read_activations(store, key), center=center, name=f"activations of {key.model_id}/{key.layer}")
    write_factor(store, prefix, value)
    return value
