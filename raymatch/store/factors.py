"""Per-(model, layer, repeat) factors in the store: computed once, reused by every pair.

A stored factor is a :class:`~raymatch.match.CompactFactor`: the small triangular (or coordinate)
factor, the live neurons, their norms and the column means, never the basis. The basis is rebuilt
where it is used, from the stored float32 activations (:meth:`CompactFactor.rebuild`), so a
factor takes about ``n_live² × 8`` bytes instead of twice the bytes of its activations. Layout::

    factors/<version>/<probe id>/<model id>/<layer>/r<repeat>/<raw|centered>/coords.arrow    p × n_live
                                                                             columns.arrow   mean and norm
                                                                             singular.arrow  (SVD form only)
                                                                             _manifest.json  (written last)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..match import CompactFactor, Factor, compact_factor
from . import layout
from .activations import ActivationKey, read_activations, read_manifest
from .arrays import decode, encode, matrix_to_table, table_to_matrix
from .layout import FACTOR_VERSION
from .store import Store


def factor_prefix(key: ActivationKey, center: bool) -> str:
    """Where the factor of one stored activation matrix lives (see :func:`raymatch.store.layout.factor_prefix`)."""
    return layout.factor_prefix(key.probe_id, key.model_id, key.layer, key.repeat, center)


def _label(key: ActivationKey) -> str:
    return f"activations of {key.model_id}/{key.layer}/r{key.repeat}"


def write_factor(store: Store, prefix: str, value: CompactFactor) -> dict:
    """Store ``value`` as Arrow IPC parts (float64, exact) and a manifest written last; return the manifest.

    ``columns`` holds each neuron's column mean and, for live neurons, its norm (0 for dead ones).
    """
    norms = np.zeros(value.n_neurons)
    norms[value.live] = value.norms
    parts = {
        "coords": matrix_to_table(value.coords),
        "columns": pa.table({"mean": value.means, "norm": norms}),
    }
    if value.singular is not None:
        parts["singular"] = pa.table({"singular": value.singular})
    for part, table in parts.items():
        store.write_bytes(layout.factor_part_key(prefix, part), encode(table, "arrow"))
    manifest = {
        "live": value.live.tolist(), "n_samples": value.n_samples, "n_neurons": value.n_neurons,
        "centered": value.centered, "rank": value.rank, "form": "triangle" if value.singular is None else "svd",
        "coords_shape": list(value.coords.shape), "parts": sorted(parts), "version": FACTOR_VERSION,
    }
    store.write_json(layout.manifest_key(prefix), manifest)
    return manifest


def read_compact_factor(store: Store, prefix: str) -> CompactFactor:
    """The compact factor stored at ``prefix`` by :func:`write_factor`."""
    manifest = store.read_json(layout.manifest_key(prefix))

    def part(name: str) -> pa.Table:
        return decode(store.read_bytes(layout.factor_part_key(prefix, name)), "arrow")

    rows, cols = manifest["coords_shape"]
    coords = table_to_matrix(part("coords"), np.float64).reshape(rows, cols)  # (0, 0) tables have no rows
    columns = part("columns")
    live = np.asarray(manifest["live"], dtype=np.int64)
    singular = part("singular").column("singular").to_numpy() if manifest["form"] == "svd" else None
    return CompactFactor(coords, singular, live, manifest["n_samples"], manifest["n_neurons"], manifest["centered"],
                         columns.column("norm").to_numpy()[live], columns.column("mean").to_numpy().copy())


def read_factor(store: Store, key: ActivationKey, *, center: bool = False) -> Factor:
    """The stored factor of the matrix at ``key``, its basis rebuilt from the stored activations.

    Raises ``FileNotFoundError`` when the factor or the activations are not stored.
    """
    compact = read_compact_factor(store, factor_prefix(key, center))
    return compact.rebuild(read_activations(store, key), name=_label(key))


def store_factor(store: Store, key: ActivationKey, *, center: bool = False) -> dict:
    """Compute and store the factor of the matrix at ``key`` unless it is stored; return its manifest."""
    prefix = factor_prefix(key, center)
    manifest = layout.manifest_key(prefix)
    if store.exists(manifest):
        return store.read_json(manifest)
    value = compact_factor(read_activations(store, key), center=center, name=_label(key))
    return write_factor(store, prefix, value)


def read_factor_inputs(store: Store, key: ActivationKey, *, center: bool = False
                       ) -> tuple[np.ndarray, str, CompactFactor | None]:
    """What one matrix's factor is built from: its activations, their stored dtype, its stored compact factor.

    Returns
    -------
    activations : ndarray, shape (n_rows, n_neurons), float32
    dtype : str
        The dtype the activations' manifest records (what their exact tolerance follows).
    compact : CompactFactor or None
        None when no factor is stored yet (one read answers both, no separate existence check).

    Raises ``FileNotFoundError`` when the activations are not stored.
    """
    manifest = read_manifest(store, key)
    activations = read_activations(store, key, manifest=manifest)
    try:
        compact = read_compact_factor(store, factor_prefix(key, center))
    except FileNotFoundError:
        compact = None
    return activations, manifest.get("dtype", "float32"), compact


def factor_from_inputs(key: ActivationKey, activations: np.ndarray, compact: CompactFactor | None, *,
                       center: bool = False) -> tuple[Factor, CompactFactor | None]:
    """The factor of ``activations`` (n_rows, n_neurons), and the compact factor to store when none was stored.

    The basis is always rebuilt from the activations, so the same stored state always gives the same factor.
    """
    new = compact_factor(activations, center=center, name=_label(key)) if compact is None else None
    return (compact if compact is not None else new).rebuild(activations, name=_label(key)), new


def cached_factor(store: Store, key: ActivationKey, *, center: bool = False) -> Factor:
    """The factor of a stored activation matrix: rebuilt from its stored compact factor, else computed and stored.

    Either way the activations are read once (see :func:`read_factor_inputs` and :func:`factor_from_inputs`).
    """
    activations, _, compact = read_factor_inputs(store, key, center=center)
    factor, new = factor_from_inputs(key, activations, compact, center=center)
    if new is not None:
        write_factor(store, factor_prefix(key, center), new)
    return factor
