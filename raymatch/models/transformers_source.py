"""Hugging Face language models: a folder or a Hub id resolved offline, its model id, and the model loaded.

A model is a folder in the ``save_pretrained`` layout (``config.json`` and weights) or a Hub id (+ revision) that is
resolved through the local Hugging Face cache only (``HF_HUB_CACHE``, else ``HF_HOME/hub``, laid out as the Hub's:
``models--org--name/{refs,snapshots,blobs}``); nothing is ever downloaded. A model's id is a digest of its weights
and ``config.json`` (a folder) or of the Hub commit its revision resolves to, with the model class and dtype it runs
in: a changed folder is another model. The population forms are :mod:`raymatch.models.lm_population`'s, the
tokenizers :mod:`raymatch.probes.tokenizer`'.
"""

from __future__ import annotations

import functools
import glob as globbing
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..store.layout import digest
from .architecture import HF_CLASSES, TORCH_DTYPES
from .lm_population import LMModel, ModelSourceError, seed_of

__all__ = ["HF_CLASSES", "TORCH_DTYPES", "ResolvedModel", "hub_cache_dir", "lm_model_id", "load_config", "load_lm",
           "max_positions", "resolve_model"]

#: Weights files of a ``save_pretrained`` folder (sharded weights come with an index).
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")
#: Config entries that say which library wrote a folder, not what the model computes.
_CONFIG_NOISE = ("transformers_version", "_name_or_path")


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
        model = LMModel(model, None, seed_of(model))
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
    transformers.logging.disable_progress_bar()  # no "Loading weights" bar per model in the workers' logs
    try:
        model = getattr(transformers, cls).from_pretrained(resolved.path, local_files_only=True,
                                                            dtype=getattr(torch, dtype))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelSourceError(f"model {resolved.model.label}: {cls} cannot load {resolved.path}: {reason}") from None
    return model.eval(), model_id


def load_config(resolved: ResolvedModel):
    """A model's ``transformers`` config, without its weights (what a plan checks ``max_length`` against).

    Raises
    ------
    ModelSourceError
        A ``config.json`` that ``transformers`` cannot read.
    """
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolved.path, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelSourceError(f"model {resolved.model.label}: cannot read {resolved.path}/config.json: "
                               f"{reason}") from None


def max_positions(config: Any) -> int | None:
    """The number of positions a model's config allows (``n_positions``, ``max_position_embeddings``), or None."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
