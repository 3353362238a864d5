"""Activation extraction: layer selection, layer outputs and shapes, forward hooks with row sampling.

The names below load their modules on first use, so that importing a module of the package that needs no torch
(:mod:`.import_spec`, :mod:`.imported`'s scanning of files) imports none.
"""

import importlib

#: Each name of the package, and the module that defines it.
_MODULES = {
    "ExtractionJob": "extractor",
    "extract_model": "extractor",
    "read_checkpoint": "extractor",
    "run_job": "extractor",
    "LAYER_TYPES": "layers",
    "resolve_layers": "layers",
    "select_layers": "layers",
    "TokenExtractionJob": "tokens",
    "extract_tokens": "tokens",
    "run_token_job": "tokens",
    "token_layers": "tokens",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    """Import the module defining ``name`` when it is first asked for (PEP 562)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULES[name]}", __name__), name)
