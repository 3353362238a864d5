"""Architectures (the paper's CIFAR VGG and plain nets, small nets for digits) and checkpoint IO.

:func:`build_model` builds a model by name; :func:`load_model` builds one and loads a checkpoint into
it, checking every parameter's shape, and returns the model with its id (a digest of the checkpoint's
bytes). Checkpoints are safetensors, or ``torch.save`` state dicts read with ``weights_only=True``.

Language models (``transformers``, offline): :func:`expand_population` names a population
(:mod:`.lm_population`), :func:`resolve_model` finds a folder or a cached Hub revision and :func:`load_lm` loads
it with its id (:mod:`.transformers_source`), :func:`load_tokenizer` and :func:`tokenizer_fingerprint` compare
tokenizers (:mod:`.lm_tokenizers`), :func:`permuted_mlp_twin` builds the exact-match check (:mod:`.lm_twins`).
"""

from .checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    checkpoint_id,
    load_model,
    load_state_dict,
    save_checkpoint,
)
from .lm_population import LMModel, ModelSourceError, expand_population
from .lm_tokenizers import has_tokenizer, load_tokenizer, same_tokenizer, tokenizer_fingerprint
from .lm_twins import permuted_mlp_twin
from .transformers_source import ResolvedModel, lm_model_id, load_lm, resolve_model
from .zoo import MLP, VGG, PlainNet, SmallCNN, available_models, build_model

__all__ = [
    "MLP",
    "VGG",
    "CheckpointError",
    "LMModel",
    "ModelSourceError",
    "PlainNet",
    "ResolvedModel",
    "SmallCNN",
    "available_models",
    "build_model",
    "checkpoint_bytes",
    "checkpoint_id",
    "expand_population",
    "has_tokenizer",
    "lm_model_id",
    "load_lm",
    "load_model",
    "load_state_dict",
    "load_tokenizer",
    "permuted_mlp_twin",
    "resolve_model",
    "same_tokenizer",
    "save_checkpoint",
    "tokenizer_fingerprint",
]
