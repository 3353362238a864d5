"""Architectures (the paper's CIFAR VGG and plain nets, small nets for digits) and checkpoint IO.

:func:`build_model` builds a model by name; :func:`load_model` builds one and loads a checkpoint into
it, checking every parameter's shape, and returns the model with its id (a digest of the checkpoint's
bytes). Checkpoints are safetensors, or ``torch.save`` state dicts read with ``weights_only=True``.
"""

from .checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    checkpoint_id,
    load_model,
    load_state_dict,
    save_checkpoint,
)
from .lm_twins import permuted_mlp_twin
from .transformers_source import (
    LMModel,
    ModelSourceError,
    ResolvedModel,
    expand_population,
    lm_model_id,
    load_lm,
    load_tokenizer,
    resolve_model,
    same_tokenizer,
    tokenizer_fingerprint,
)
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
