"""Hugging Face language models as a population: folders, Hub ids resolved offline, their tokenizers and model ids.

A model is a folder in the ``save_pretrained`` layout (``config.json`` and weights) or a Hub id (+ revision) that is
resolved through the local Hugging Face cache only (``HF_HUB_CACHE``, else ``HF_HOME/hub``, laid out as the Hub's:
``models--org--name/{refs,snapshots,blobs}``); nothing is ever downloaded. A population is

- ``models: [folder-or-id, …]``: the models listed;
- ``glob: "lm-seeds/*"``: the folders a pattern matches, in sorted order;
- ``hub: "org/name-seed{seed}", seeds: […], revisions: […]``: every seed × revision (a revision is a checkpoint of
  the training trajectory: ``step1000`` is step 1000).

A model's id is a digest of its weights and ``config.json`` (a folder) or of the Hub commit its revision resolves to,
with the model class and dtype it runs in: a changed folder is another model. Models whose tokenizers differ cannot
be compared token by token: :func:`same_tokenizer` names two that differ.
"""

from __future__ import annotations

import functools
import glob as globbing
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..store.layout import digest
from .checkpoint import CheckpointError

__all__ = [
    "HF_CLASSES",
    "TOKENIZER_FILES",
    "TORCH_DTYPES",
    "LMModel",
    "ModelSourceError",
    "ResolvedModel",
    "expand_population",
    "has_tokenizer",
    "hub_cache_dir",
    "lm_model_id",
    "load_lm",
    "load_tokenizer",
    "max_positions",
    "resolve_model",
    "same_tokenizer",
    "tokenizer_fingerprint",
]

#: ``architecture.class``: which ``transformers`` auto class builds the model.
HF_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM")
#: ``architecture.torch_dtype``: the dtype the model runs in (activations are stored as float32 whatever it is).
TORCH_DTYPES = ("float32", "bfloat16", "float16")
#: Weights files of a ``save_pretrained`` folder (sharded weights come with an index).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")

#: Files that hold a tokenizer (transformers would otherwise make an empty one from the model type alone).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")

_SEED = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)
_STEP = re.compile(r"^(?:step|ckpt|checkpoint)[_-]?(\d+)(k?)$", re.IGNORECASE)
#: Config entries that say which library wrote a folder, not what the model computes.
_CONFIG_NOISE = ("transformers_version", "_name_or_path")


class ModelSourceError(CheckpointError):
    """A model (folder or Hub id) that cannot be found, resolved offline or loaded; the message names it."""


@dataclass(frozen=True)
class LMModel:
    """One model of a population, as the study names it.

    Attributes
    ----------
    name : str
        A folder or a Hub id (``org/name``), as written.
    revision : str, optional
        A Hub revision (branch, tag or commit); None: the Hub's ``main``. Folders have none.
    seed : int, optional
        The seed: the ``{seed}`` of a ``hub`` pattern, else the number after ``seed`` in the folder's or id's name.
    step : int, optional
        The training step of the revision (``step1000`` → 1000, ``step_20k`` → 20000); None when it names none.
    """

    name: str
    revision: str | None = None
    seed: int | None = None
    step: int | None = None

    @property
    def label(self) -> str:
        """``name`` or ``name@revision``: how messages and the ``models`` table name the model."""
        return f"{self.name}@{self.revision}" if self.revision else self.name

    def to_dict(self) -> dict[str, Any]:
        """name, revision, seed and step (the ``models`` table's columns)."""
        return {"name": self.name, "revision": self.revision, "seed": self.seed, "step": self.step}


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on this machine: the folder its files are in.

    Attributes
    ----------
    model : LMModel
    path : str
        The ``save_pretrained`` folder (for a Hub id, the cache's snapshot folder of the resolved revision).
    commit : str, optional
        The Hub commit hash the revision resolves to; None for a folder.
    """

    model: LMModel
    path: str
    commit: str | None = None


def _seed_of(name: str) -> int | None:
    found = _SEED.findall(os.path.basename(os.path.normpath(name)))
    return int(found[-1]) if found else None


def _step_of(revision: str | None) -> int | None:
    match = _STEP.match(revision or "")
    if not match:
        return None
    return int(match.group(1)) * (1000 if match.group(2) else 1)


def _hub_models(pattern: str, seeds: Sequence[int] | None, revisions: Sequence[str] | None) -> list[LMModel]:
    if not isinstance(pattern, str) or not pattern:
        raise ModelSourceError(f"population.hub: must be a Hub id pattern like 'org/name-seed{{seed}}'; "
                               f"got {pattern!r}")
    rest = pattern.replace("{seed}", "")
    if "{" in rest or "}" in rest:
        raise ModelSourceError(f"population.hub: {pattern!r}: the only placeholder is {{seed}}")
    if "{seed}" in pattern and not seeds:
        raise ModelSourceError(f"population.seeds: required by the pattern {pattern!r}")
    if seeds and "{seed}" not in pattern:
        raise ModelSourceError(f"population.hub: {pattern!r} has no {{seed}} for population.seeds")
    for i, seed in enumerate(seeds or ()):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ModelSourceError(f"population.seeds[{i}]: must be a non-negative integer; got {seed!r}")
    for i, revision in enumerate(revisions or ()):
        if not isinstance(revision, str) or not revision:
            raise ModelSourceError(f"population.revisions[{i}]: must be a non-empty string; got {revision!r}")
    models = []
    for seed in seeds or [None]:
        name = pattern if seed is None else pattern.replace("{seed}", str(seed))
        for revision in revisions or [None]:
            models.append(LMModel(name, revision, seed if seed is not None else _seed_of(name), _step_of(revision)))
    return models


def expand_population(models: Sequence[str] | None = None, glob: str | None = None, hub: str | None = None,
                      seeds: Sequence[int] | None = None, revisions: Sequence[str] | None = None) -> list[LMModel]:
    """The models of a population section, in order; nothing is resolved or loaded yet.

    Parameters
    ----------
    models : list of str, optional
        Folders or Hub ids.
    glob : str, optional
        A pattern over local folders (relative to the working directory); the folders it matches, sorted.
    hub : str, optional
        A Hub id pattern with ``{seed}``, expanded for every seed in ``seeds`` and every revision in ``revisions``.
    seeds : list of int, optional
    revisions : list of str, optional
        Hub revisions (None: ``main``); ``step<N>`` names step N.

    Returns
    -------
    list of LMModel

    Raises
    ------
    ModelSourceError
        Not exactly one of ``models``, ``glob``, ``hub``; seeds or revisions without ``hub``; an empty list, a glob
        matching no folder, a duplicated model; one line naming the field.
    """
    given = [key for key, value in (("models", models), ("glob", glob), ("hub", hub)) if value is not None]
    if len(given) != 1:
        raise ModelSourceError("population: give exactly one of models, glob or hub"
                               + (f" (got {', '.join(given)})" if given else ""))
    if hub is None and (seeds is not None or revisions is not None):
        raise ModelSourceError("population: seeds and revisions go with hub: 'org/name-seed{seed}'")
    if models is not None:
        if isinstance(models, str) or not models:
            raise ModelSourceError("population.models: must be a non-empty list of folders or Hub ids")
        for i, name in enumerate(models):
            if not isinstance(name, str) or not name:
                raise ModelSourceError(f"population.models[{i}]: must be a folder or a Hub id; got {name!r}")
        found = [LMModel(name, None, _seed_of(name)) for name in models]
    elif glob is not None:
        folders = sorted(path for path in globbing.glob(os.path.expanduser(glob)) if os.path.isdir(path))
        if not folders:
            raise ModelSourceError(f"population.glob: {glob!r} matches no folder")
        found = [LMModel(path, None, _seed_of(path)) for path in folders]
    else:
        found = _hub_models(hub, seeds, revisions)
    labels = [model.label for model in found]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ModelSourceError(f"population: {label} is listed twice")
    return found


# ------------------------------------------------------------------------------------------------ resolving


def hub_cache_dir() -> str:
    """The Hugging Face cache read for Hub ids: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the default.

    The default is ``~/.cache/huggingface/hub`` (under ``XDG_CACHE_HOME`` when set). Read from the environment at
    each call (a worker's environment may differ from the driver's).
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _weights(folder: str) -> list[str]:
    return sorted({os.path.basename(path) for pattern in WEIGHT_PATTERNS
                   for path in globbing.glob(os.path.join(globbing.escape(folder), pattern))})


def _check_folder(folder: str, label: str) -> None:
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelSourceError(f"model {label}: {folder} has no config.json (not a save_pretrained folder)")
    if not _weights(folder):
        raise ModelSourceError(f"model {label}: {folder} has no weights (no *.safetensors or pytorch_model*.bin)")


def _resolve_hub(model: LMModel, cache_dir: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model.name)
    except HFValidationError:
        raise ModelSourceError(f"model {model.label}: no such folder, and not a Hub id (org/name)") from None
    repo = os.path.join(cache_dir, "models--" + model.name.replace("/", "--"))
    if not os.path.isdir(repo):
        raise ModelSourceError(f"model {model.label}: Hub id {model.name} is not in the offline cache {cache_dir} "
                               "(nothing is downloaded: fill the cache first, or set HF_HOME)")
    try:
        path = snapshot_download(model.name, revision=model.revision, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        refs = os.path.join(repo, "refs")
        known = sorted(os.listdir(refs)) if os.path.isdir(refs) else []
        raise ModelSourceError(f"model {model.label}: revision {model.revision or 'main'} of {model.name} does not "
                               f"exist in the offline cache {cache_dir} (cached revisions: "
                               f"{', '.join(known) or 'none'})") from None
    return ResolvedModel(model, path, os.path.basename(os.path.normpath(path)))


def resolve_model(model: LMModel | str, *, cache_dir: str | None = None) -> ResolvedModel:
    """Find a model's folder: a local folder, or the cached snapshot of a Hub id's revision.

    Parameters
    ----------
    model : LMModel or str
        A folder or a Hub id.
    cache_dir : str, optional
        The Hub cache (default :func:`hub_cache_dir`).

    Returns
    -------
    ResolvedModel

    Raises
    ------
    ModelSourceError
        A folder without config.json or weights, a revision given for a folder, a name that is neither a folder nor
        a Hub id, a Hub id not in the cache, a revision the cache does not hold.
    """
    if isinstance(model, str):
        model = LMModel(model, None, _seed_of(model))
    folder = os.path.expanduser(model.name)
    if os.path.isdir(folder):
        if model.revision is not None:
            raise ModelSourceError(f"model {model.label}: a revision applies to a Hub id, but {model.name} is a folder")
        _check_folder(folder, model.label)
        return ResolvedModel(model, os.path.abspath(folder))
    if model.name.startswith(("/", ".", "~")) or model.name.count("/") > 1:
        raise ModelSourceError(f"model {model.label}: folder {model.name} does not exist")
    resolved = _resolve_hub(model, cache_dir or hub_cache_dir())
    _check_folder(resolved.path, model.label)
    return resolved


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def _folder_content(folder: str) -> dict[str, Any]:
    """The sha256 of each weights file and the config (without which library version wrote it)."""
    hashes = {}
    for name in _weights(folder):
        path = os.path.realpath(os.path.join(folder, name))  # a Hub snapshot links to its blobs
        stat = os.stat(path)
        hashes[name] = _file_sha256(path, stat.st_size, stat.st_mtime_ns)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        config = {key: value for key, value in json.load(handle).items() if key not in _CONFIG_NOISE}
    return {"weights": hashes, "config": config}


def _check_choice(value: str, allowed: Sequence[str], field: str) -> str:
    if value not in allowed:
        raise ModelSourceError(f"{field}: must be one of {', '.join(allowed)}; got {value!r}")
    return value


def lm_model_id(resolved: ResolvedModel, cls: str = "AutoModel", dtype: str = "float32") -> str:
    """A model's id: a digest of its weights and config (a folder) or its Hub commit, with its class and dtype.

    Parameters
    ----------
    resolved : ResolvedModel
    cls : str
        One of :data:`HF_CLASSES`.
    dtype : str
        One of :data:`TORCH_DTYPES`.

    Returns
    -------
    str
        16 hex characters (:func:`raymatch.store.layout.digest`).
    """
    _check_choice(cls, HF_CLASSES, "architecture.class")
    _check_choice(dtype, TORCH_DTYPES, "architecture.torch_dtype")
    if resolved.commit is not None:
        content: dict[str, Any] = {"hub": resolved.model.name, "commit": resolved.commit}
    else:
        content = _folder_content(resolved.path)
    return digest({"source": "transformers", **content, "class": cls, "dtype": dtype})


def load_lm(resolved: ResolvedModel, cls: str = "AutoModel", dtype: str = "float32"):
    """Build a model from its folder with ``transformers`` (local files only), in eval mode.

    Parameters
    ----------
    resolved : ResolvedModel
    cls : str
        One of :data:`HF_CLASSES`.
    dtype : str
        One of :data:`TORCH_DTYPES`.

    Returns
    -------
    model : transformers.PreTrainedModel
    model_id : str
        :func:`lm_model_id`.

    Raises
    ------
    ModelSourceError
        A class or dtype that is not allowed, or a folder ``transformers`` cannot load as that class.
    """
    import torch
    import transformers

    model_id = lm_model_id(resolved, cls, dtype)
    try:
        model = getattr(transformers, cls).from_pretrained(resolved.path, local_files_only=True,
                                                            dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelSourceError(f"model {resolved.model.label}: {cls} cannot load {resolved.path}: {reason}") from None
    return model.eval(), model_id


def max_positions(config: Any) -> int | None:
    """The number of positions a model's config allows (``n_positions``, ``max_position_embeddings``), or None."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ------------------------------------------------------------------------------------------------ tokenizers


def load_tokenizer(folder: str, *, label: str | None = None):
    """The tokenizer saved in a folder (``transformers.AutoTokenizer``, local files only).

    Raises
    ------
    ModelSourceError
        The folder holds no tokenizer that ``transformers`` can load.
    """
    from transformers import AutoTokenizer

    if not has_tokenizer(folder):
        raise ModelSourceError(f"tokenizer of {label or folder}: {folder} holds no tokenizer files "
                               f"({', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelSourceError(f"tokenizer of {label or folder}: cannot load one from {folder}: {reason}") from None
    if tokenizer.vocab_size == 0:
        raise ModelSourceError(f"tokenizer of {label or folder}: the one in {folder} has an empty vocabulary")
    return tokenizer


def has_tokenizer(folder: str) -> bool:
    """Whether a folder holds a tokenizer's files (:data:`TOKENIZER_FILES`)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what decides a tokenizer's tokens: vocabulary, merges, normalisation, special tokens.

    Padding and truncation settings (the padding side among them) are left out: they change no token.

    Parameters
    ----------
    tokenizer : transformers tokenizer

    Returns
    -------
    str
        16 hex characters.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = json.loads(backend.to_str())
        for key in ("padding", "truncation"):
            content.pop(key, None)
    else:
        content = {"vocab": sorted(tokenizer.get_vocab().items())}
    special = {name: str(value) for name, value in sorted(tokenizer.special_tokens_map.items())}
    return digest({"tokenizer": content, "special": special})


def same_tokenizer(fingerprints: Mapping[str, str]) -> str:
    """The one fingerprint a population's models share.

    Parameters
    ----------
    fingerprints : mapping of str to str
        Model label → :func:`tokenizer_fingerprint`.

    Returns
    -------
    str

    Raises
    ------
    ModelSourceError
        Naming two models whose tokenizers differ.
    """
    if not fingerprints:
        raise ModelSourceError("population: no models")
    (first, expected), *rest = fingerprints.items()
    for label, fingerprint in rest:
        if fingerprint != expected:
            raise ModelSourceError(f"population: models {first} and {label} have different tokenizers (vocabulary, "
                                   "merges or special tokens differ): a row must be the same token in every model")
    return expected
