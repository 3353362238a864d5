"""Every store key, built in one place, and the one digest that names content.

A key is derived from what determines the object's content (DESIGN.md §3), so a rerun finds what an earlier run
wrote and never duplicates it. The layout of a store::

    studies/<study>.json                                          a study's configuration (status, report)
    heartbeats/<run id>.json                                      a running driver's heartbeat
    leases/<stage>/<…>.json                                       a running driver's claim on a task (extraction)
    checkpoints/<arch>/trained-<digest>/seed<k>.safetensors       a trained population's weights …
    checkpoints/<arch>/trained-<digest>/seed<k>.json              … and each seed's record, written last
    checkpoints/<arch>/untrained-<digest>/seed<k>.safetensors     the null baseline's initialisations
    activations/<probe id>/<model id>/<layer>/r<repeat>/          row shards + _manifest.json (written last)
    factors/<version>/<probe id>/<model id>/<layer>/r<repeat>/<raw|centered>/   factor parts + _manifest.json
    results/<table>/                                              a Delta Lake table (_delta_log + Parquet files)

A new kind of object gets a function here; no other module spells a key.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from typing import Any

import numpy as np

__all__ = [
    "DIGEST_CHARS",
    "FACTOR_VERSION",
    "MANIFEST",
    "POOLED_SUFFIX",
    "activation_prefix",
    "canonical_json",
    "checkpoint_key",
    "digest",
    "factor_part_key",
    "factor_prefix",
    "factor_root",
    "heartbeat_key",
    "heartbeats_prefix",
    "layer_key",
    "lease_key",
    "leases_prefix",
    "lm_prefix",
    "manifest_key",
    "pooled_layer",
    "study_record_key",
    "study_records_prefix",
    "table_prefix",
    "task_id",
    "trained_prefix",
    "training_record_key",
    "trajectory_checkpoint_key",
    "trajectory_record_key",
    "untrained_prefix",
]

#: Hex characters of every content digest (64 bits: no collision in any store this tool will see).
DIGEST_CHARS = 16
#: The completion marker of a multi-part object: the object exists exactly when its manifest does.
MANIFEST = "_manifest.json"
#: Bumped whenever the factorisation changes what it stores: part of every factor key.
FACTOR_VERSION = "v2"


def _plain(value: Any) -> Any:
    """JSON's view of numpy scalars and arrays (``np.int64(3)`` digests as ``3``, never as its ``repr``)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"cannot digest a value of type {type(value).__name__}: {value!r}")


def canonical_json(content: Any) -> str:
    """The canonical JSON text of ``content``: sorted keys, no spaces, ASCII only, no NaN or infinity.

    Tuples are lists and numpy scalars are plain numbers, so equal content always gives equal text.

    Examples
    --------
    >>> canonical_json({"b": (1, 2), "a": np.float64(0.5)})
    '{"a":0.5,"b":[1,2]}'
    """
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                      default=_plain)


def digest(content: Any) -> str:
    """The first :data:`DIGEST_CHARS` hex digits of the SHA-256 of :func:`canonical_json` of ``content``.

    Stable across processes, machines and Python versions: study config hashes, probe ids, training spec ids,
    population prefixes and task ids are all this digest of what determines them.

    Examples
    --------
    >>> digest({"a": 1}) == digest({"a": np.int64(1)})
    True
    >>> len(digest([1, 2, 3]))
    16
    """
    return hashlib.sha256(canonical_json(content).encode("ascii")).hexdigest()[:DIGEST_CHARS]


# ------------------------------------------------------------------------------------------------ studies


def study_records_prefix() -> str:
    """The prefix under which every study's record lives."""
    return "studies"


def heartbeats_prefix() -> str:
    """The prefix of the running drivers' heartbeat objects."""
    return "heartbeats"


def heartbeat_key(run_id: str) -> str:
    """``heartbeats/<run id>.json``: a running driver's latest heartbeat, overwritten every interval."""
    return f"{heartbeats_prefix()}/{run_id}.json"


def leases_prefix() -> str:
    """The prefix of the running drivers' claims on tasks (:mod:`raymatch.engine.leases`)."""
    return "leases"


def lease_key(stage: str, *parts: str) -> str:
    """``leases/<stage>/<part>/…/<last part>.json``: one driver's claim on one task of a stage, renewed while it runs.

    Examples
    --------
    >>> lease_key("extract", "78ce100eaafcbec0", "0123456789abcdef")
    'leases/extract/78ce100eaafcbec0/0123456789abcdef.json'
    """
    return f"{leases_prefix()}/{stage}/{'/'.join(parts)}.json"


def study_record_key(name: str) -> str:
    """``studies/<name>.json``: a study's configuration and its layers in network order."""
    return f"{study_records_prefix()}/{name}.json"


def evaluations_prefix() -> str:
    """The prefix of the stored evaluations of the measures (``raymatch evaluate-measures``)."""
    return "evaluations"


def evaluation_key(study: str, config_hash: str) -> str:
    """``evaluations/<study>/<config hash>.json``: what each measure sees on a study's population, per configuration.

    Examples
    --------
    >>> from raymatch.store.layout import evaluation_key
    >>> evaluation_key("quickstart", "6ce477ac6404d03f")
    'evaluations/quickstart/6ce477ac6404d03f.json'
    """
    return f"{evaluations_prefix()}/{study}/{config_hash}.json"


# ------------------------------------------------------------------------------------------------ checkpoints


def trained_prefix(arch_name: str, architecture: Any, training_id: str) -> str:
    """``checkpoints/<arch>/trained-<digest>``: a population trained with one spec (any seeds)."""
    return f"checkpoints/{arch_name}/trained-{digest({'architecture': architecture, 'training': training_id})}"


def untrained_prefix(arch_name: str, architecture: Any) -> str:
    """``checkpoints/<arch>/untrained-<digest>``: the null baseline's initialisation-only checkpoints."""
    return f"checkpoints/{arch_name}/untrained-{digest(architecture)}"


def lm_prefix(kind: str, training_id: str) -> str:
    """``checkpoints/lm/<trained|untrained>-<training id>``: a language-model population's ``save_pretrained`` folders.

    Under it: ``tokenizer/`` (trained once, shared by every seed) and ``seed<k>/`` (one folder per seed, with its
    ``training.json`` record; the folder appears whole).
    """
    if kind not in ("trained", "untrained"):
        raise ValueError(f"kind must be trained or untrained; got {kind!r}")
    return f"checkpoints/lm/{kind}-{training_id}"


def checkpoint_key(prefix: str, seed: int) -> str:
    """``<prefix>/seed<k>.safetensors``: one seed's weights."""
    return f"{prefix}/seed{seed}.safetensors"


def training_record_key(prefix: str, seed: int) -> str:
    """``<prefix>/seed<k>.json``: one seed's training record, its completion marker."""
    return f"{prefix}/seed{seed}.json"


def trajectory_checkpoint_key(prefix: str, seed: int, epoch: int) -> str:
    """``<prefix>/seed<k>/epoch<e>.safetensors``: one seed's weights after epoch ``e`` (``save_every``)."""
    return f"{prefix}/seed{seed}/epoch{epoch}.safetensors"


def trajectory_record_key(prefix: str, seed: int, epoch: int) -> str:
    """``<prefix>/seed<k>/epoch<e>.json``: the record of one saved epoch of a seed's training trajectory."""
    return f"{prefix}/seed{seed}/epoch{epoch}.json"


# ------------------------------------------------------------------------------------------------ matrices


def layer_key(layer: str) -> str:
    """A layer name as a store key part: one call of a reused module, ``relu#1``, is stored as ``relu=1``.

    Examples
    --------
    >>> layer_key("layer1.0.relu#1"), layer_key("features.3")
    ('layer1.0.relu=1', 'features.3')
    """
    return layer.replace("#", "=")


#: How a layer's per-example pooled matrix is named among the layers: ``<layer>+mean`` (``@`` is no key character).
POOLED_SUFFIX = "+mean"


def pooled_layer(layer: str) -> str:
    """``<layer>+mean``: where a conv layer's per-example average over positions is stored, as a layer of its own.

    Extracted beside the layer when a study's ``cross_layers.pool`` is ``mean``: one row per example.
    """
    return f"{layer}{POOLED_SUFFIX}"


def activation_prefix(probe_id: str, model_id: str, layer: str, repeat: int) -> str:
    """``activations/<probe id>/<model id>/<layer>/r<repeat>``: one activation matrix's shards and manifest."""
    return f"activations/{probe_id}/{model_id}/{layer_key(layer)}/r{repeat}"


def factor_root(probe_id: str) -> str:
    """``factors/<version>/<probe id>``: every factor of one probe (listed once when planning)."""
    return f"factors/{FACTOR_VERSION}/{probe_id}"


def factor_prefix(probe_id: str, model_id: str, layer: str, repeat: int, center: bool) -> str:
    """``factors/<version>/<probe id>/<model id>/<layer>/r<repeat>/<raw|centered>``: one matrix's factor."""
    return f"{factor_root(probe_id)}/{model_id}/{layer_key(layer)}/r{repeat}/{'centered' if center else 'raw'}"


def factor_part_key(prefix: str, part: str) -> str:
    """``<factor prefix>/<part>.arrow``: one stored matrix of a factor."""
    return f"{prefix}/{part}.arrow"


def manifest_key(prefix: str) -> str:
    """``<prefix>/_manifest.json``: the completion marker of the multi-part object at ``prefix``."""
    return f"{prefix}/{MANIFEST}"


# ------------------------------------------------------------------------------------------------ results


def table_prefix(table: str) -> str:
    """``results/<table>``: where one results table (a Delta Lake table) lives."""
    return f"results/{table}"


def task_id(layer: str, repeat: int, content: Any) -> str:
    """``<layer>.r<repeat>.<digest of content>``: the same work always has the same id (and result object).

    Examples
    --------
    >>> task_id("relu1", 0, {"pairs": [["a", "b"]]}) == task_id("relu1", np.int64(0), {"pairs": (("a", "b"),)})
    True
    """
    return f"{layer_key(layer)}.r{int(repeat)}.{digest(content)}"


# ------------------------------------------------------------------------------------------------ token rows


def token_rows_key(probe_id: str, repeat: int) -> str:
    """``token-rows/<probe id>/r<repeat>.parquet``: the (sequence, position, token) of every row of a text probe.

    One object per probe and repeat, shared by every model and layer (the rows depend on the probe only); each
    activation manifest of the probe records its ``rows_sha256``.
    """
    return f"token-rows/{probe_id}/r{int(repeat)}.parquet"


__all__ += ["token_rows_key"]
