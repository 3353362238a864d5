"""Architectures (the paper's CIFAR VGG and plain nets, small nets for digits) and checkpoint IO.

:func:`build_model` builds a model by name; :func:`load_model` builds one and loads a checkpoint into
it, checking every parameter's shape, and returns the model with its id (a digest of the checkpoint's
bytes). Checkpoints are safetensors, or ``torch.save`` state dicts read with ``weights_only=True``.

Language models (``transformers``, offline): :func:`expand_population` names a population
(:mod:`.lm_population`), :func:`resolve_model` finds a folder or a cached Hub revision and :func:`load_lm` loads
it with its id (:mod:`.transformers_source`; their tokenizers: :mod:`raymatch.probes.tokenizer`), and
:func:`permuted_mlp_twin` builds the exact-match check (:mod:`.lm_twins`).

:class:`Architecture` describes an architecture as a study file does (the zoo, torchvision, timm or a factory).

The names below load their modules on first use, so that importing :mod:`raymatch.models.architecture` (a
study's section) imports no torch.
"""

import importlib

#: Each name of the package, and the module that defines it.
_MODULES = {
    "Architecture": "architecture",
    "CheckpointError": "checkpoint",
    "checkpoint_bytes": "checkpoint",
    "checkpoint_id": "checkpoint",
    "load_model": "checkpoint",
    "load_state_dict": "checkpoint",
    "save_checkpoint": "checkpoint",
    "MLP": "zoo",
    "VGG": "zoo",
    "PlainNet": "zoo",
    "SmallCNN": "zoo",
    "available_models": "zoo",
    "build_model": "zoo",
    "LMModel": "lm_population",
    "ModelSourceError": "lm_population",
    "expand_population": "lm_population",
    "permuted_mlp_twin": "lm_twins",
    "ResolvedModel": "transformers_source",
    "lm_model_id": "transformers_source",
    "load_lm": "transformers_source",
    "resolve_model": "transformers_source",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    """Import the module defining ``name`` when it is first asked for (PEP 562)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
