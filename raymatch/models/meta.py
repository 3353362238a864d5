"""Architectures on PyTorch's ``meta`` device: their modules and shapes without weights, the global RNG untouched.

What the load-time checks of a study build (:mod:`raymatch.study.checks`): selecting layers needs only the module
tree, and a forward pass on the ``meta`` device gives every layer's output shape without computing anything
(:mod:`raymatch.extract.shapes`).
"""

from __future__ import annotations

import functools
import json

import torch
from torch import nn

from .factory import build_architecture
from .zoo import build_model

__all__ = ["architecture_tree", "lm_tree", "module_tree"]


@functools.lru_cache(maxsize=16)
def module_tree(name: str, in_channels: int, num_classes: int, width: float, input_size: int) -> nn.Module:
    """A zoo architecture built on the ``meta`` device: its modules without weights, the global RNG untouched.

    Parameters
    ----------
    name : str
        A name :func:`~raymatch.models.build_model` knows.
    in_channels, num_classes : int
    width : float
    input_size : int

    Returns
    -------
    torch.nn.Module
        Shared between calls with the same arguments: do not modify it.

    Raises
    ------
    ValueError
        From :func:`~raymatch.models.build_model`, for an unknown name.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_model(name, in_channels=in_channels, num_classes=num_classes, width=width, input_size=input_size)


@functools.lru_cache(maxsize=16)
def architecture_tree(content: str) -> nn.Module:
    """A factory's, torchvision's or timm's architecture built on the ``meta`` device, the global RNG untouched.

    Parameters
    ----------
    content : str
        The canonical JSON of the architecture's mapping (:func:`~raymatch.models.factory.build_architecture`).

    Returns
    -------
    torch.nn.Module
        Shared between calls with the same content: do not modify it.

    Raises
    ------
    raymatch.models.factory.ArchitectureError
        When it cannot be built (its ``field`` names the key at fault).
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_architecture(json.loads(content), use_code_path=True)


@functools.lru_cache(maxsize=16)
def lm_tree(config: str, cls: str = "AutoModel") -> nn.Module:
    """A ``transformers`` model built from its config on the ``meta`` device: no weights, the global RNG untouched.

    What a plan checks a language-model study's layer selectors against (and a ``meta`` forward pass gives their
    widths), without loading any weights.

    Parameters
    ----------
    config : str
        The model's config as JSON (``PretrainedConfig.to_json_string()``).
    cls : str
        A ``transformers`` auto class (:data:`~raymatch.models.architecture.HF_CLASSES`).

    Returns
    -------
    torch.nn.Module
        Shared between calls with the same arguments: do not modify it.

    Raises
    ------
    ValueError
        The class cannot build a model of that config (``transformers``' own message).
    """
    import transformers

    content = json.loads(config)
    settings = transformers.AutoConfig.for_model(content.pop("model_type"), **content)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return getattr(transformers, cls).from_config(settings).eval()
