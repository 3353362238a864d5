"""The schemas of the tables and views of the standard measures: ``measures``, ``neurons``, ``universal_neurons``.

Registered with the other tables and views in :mod:`raymatch.results.schema` (``TABLES``, ``KEYS``,
``VIEW_COLUMNS``); the views and the macro are :mod:`raymatch.results.measure_views`.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["MEASURE_ROWS", "NEURONS", "NEURON_ROWS", "UNIVERSAL_NEURONS"]

_INT32 = pa.int32()
_LIST_INT32 = pa.list_(pa.int32())
_LIST_FLOAT64 = pa.list_(pa.float64())
_TIMESTAMP = pa.timestamp("us", tz="UTC")


def _field(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


def _pair_provenance() -> list[pa.Field]:
    """The identity and provenance columns a row of a pair's ``measures`` and ``neurons`` starts with."""
    return [_field("study", pa.string()), _field("population", pa.string()), _field("layer", pa.string()),
            _field("repeat", _INT32), _field("model_a", pa.string()), _field("model_b", pa.string()),
            _field("probe_id", pa.string()), _field("config_hash", pa.string()), _field("code_version", pa.string())]


_STATUS = [_field("status", pa.string()), _field("error", pa.string(), True), _field("created_at", _TIMESTAMP)]

#: ``measures``: one row per (pair, layer, repeat, measure) of the standard measures a study lists beside the
#: match (``cca``, ``svcca``, ``pwcca``, ``procrustes``, ``neuron_corr``; ``cka`` stays in ``curves``): its
#: value (a similarity, or the Procrustes distance), SVCCA's share of variance (``svcca`` rows only), and what the
#: measures saw (``raymatch.match.measure_counts``: samples, neurons, kept neurons, centred ranks).
MEASURE_ROWS = pa.schema([
    *_pair_provenance(),
    _field("measure", pa.string()),
    _field("svcca_keep", pa.float64(), True),
    _field("value", pa.float64(), True),
    _field("n_samples", pa.int64(), True),
    *(_field(name, _INT32, True) for name in ("n_a", "n_b", "kept_a", "kept_b", "rank_a", "rank_b")),
    _field("seconds", pa.float64(), True),
    *_STATUS,
])

#: ``neurons``: one row per (pair, layer, repeat) of ``neuron_corr``: for each neuron of model a (``*_a``, in
#: neuron order) and of model b (``*_b``), its best absolute Pearson correlation with a neuron of the other model
#: (NaN for a dead or constant neuron) and that neuron (-1 for none). The ``neurons`` view has one row per neuron.
NEURON_ROWS = pa.schema([
    *_pair_provenance(),
    _field("n_samples", pa.int64(), True),
    _field("n_a", _INT32, True),
    _field("n_b", _INT32, True),
    _field("correlation_a", _LIST_FLOAT64, True),
    _field("partner_a", _LIST_INT32, True),
    _field("correlation_b", _LIST_FLOAT64, True),
    _field("partner_b", _LIST_INT32, True),
    *_STATUS,
])

#: Columns of the ``neurons`` view: one row per neuron of each side of an ``"ok"`` ``neurons`` row: its best
#: absolute Pearson correlation with a neuron of the partner model, and that neuron (both null for a dead or
#: constant neuron).
NEURONS = pa.schema([
    _field("study", pa.string()),
    _field("config_hash", pa.string()),
    _field("population", pa.string()),
    _field("layer", pa.string()),
    _field("repeat", _INT32),
    _field("model", pa.string()),
    _field("neuron", _INT32),
    _field("partner_model", pa.string()),
    _field("partner_neuron", _INT32, True),
    _field("correlation", pa.float64(), True),
    _field("n_samples", pa.int64(), True),
    _field("model_a", pa.string()),
    _field("model_b", pa.string()),
    _field("probe_id", pa.string()),
    _field("code_version", pa.string()),
    _field("created_at", _TIMESTAMP),
])

#: Columns of the ``universal_neurons(margin, most)`` table macro: one row per (study, layer, repeat, trained model,
#: neuron): against how many other trained models it has a best correlation (``others``), in how many of them that
#: correlation beats both nulls by ``margin`` (``beats``; ``share`` = beats / others), its mean best correlation,
#: the nulls (``permuted``: the same neuron against the same models with rows permuted, averaged; ``untrained``:
#: the layer's mean best correlation among the untrained models), and ``universal``: ``share > most``.
UNIVERSAL_NEURONS = pa.schema([
    _field("study", pa.string()),
    _field("layer", pa.string()),
    _field("repeat", _INT32),
    _field("model", pa.string()),
    _field("neuron", _INT32),
    _field("others", _INT32),
    _field("beats", _INT32),
    _field("share", pa.float64()),
    _field("correlation", pa.float64(), True),
    _field("permuted", pa.float64(), True),
    _field("untrained", pa.float64(), True),
    _field("margin", pa.float64()),
    _field("most", pa.float64()),
    _field("universal", pa.bool_()),
])
