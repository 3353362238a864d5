"""Layer outputs and shapes before anything is extracted: one forward pass of two inputs, on the ``meta`` device.

The load-time checks of a study (:mod:`raymatch.study.checks`) and the planner need each layer's output shape, the
calls of each module, and which rows a layer has; a forward pass on the ``meta`` device gives them without weights
or computation. A model whose forward pass needs values (``tensor.item()``, a branch on the data: a Hugging Face
GPT-2) cannot run there; it is then run for real on the CPU, randomly initialised, on two probe items, and one
warning line (logger ``raymatch``) says so. The global RNG is never touched.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from ..probes import DatasetError, ProbeSpec, load_probe, probe_size
from ..probes.spec import IMPORTED
from .layers import resolve_layers
from .outputs import layer_base, neuron_shape, pick_output

__all__ = ["ForwardError", "layer_calls", "layer_shapes", "module_outputs", "output_shapes", "probe_image_shape",
           "row_identity", "sampled_row_grid"]

logger = logging.getLogger("raymatch")

#: Inputs of the forward pass that finds the shapes (two, so that batch norm and squeezes behave).
N_INPUTS = 2


class Buildable(Hashable, Protocol):
    """An architecture (a study's :class:`~raymatch.study.Architecture`): hashable, with these three."""

    label: str

    def module_tree(self) -> nn.Module:
        """Its modules on the ``meta`` device, shared: not to be modified."""

    def build(self) -> nn.Module:
        """A freshly initialised model (weights from the global RNG)."""


class ForwardError(RuntimeError):
    """The forward pass failed on the ``meta`` device and on the CPU: the architecture cannot take the inputs."""


def probe_image_shape(probe: ProbeSpec | None) -> tuple[int, ...] | None:
    """The probe's image shape ``(C, H, W)``: a built-in dataset's, or read from the user's files; else None.

    Parameters
    ----------
    probe : raymatch.probes.ProbeSpec, optional

    Returns
    -------
    tuple of int, or None
        None for imported activations and for files that cannot be read (a problem of the probe's own).
    """
    if probe is None or probe.dataset == IMPORTED:
        return None
    try:
        return tuple(probe_size(probe)[1])  # the user's files are read once (cached while unchanged)
    except DatasetError:
        return None


def _forward(model: nn.Module, inputs: torch.Tensor) -> dict[str, list[Any]]:
    outputs: dict[str, list[Any]] = {}
    handles = [module.register_forward_hook(lambda _m, _i, output, key=name: outputs.setdefault(key, []).append(
        output)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _items(probe: ProbeSpec | None, image_shape: tuple[int, ...]) -> torch.Tensor:
    """Two probe items of ``image_shape`` (random images where the probe gives none)."""
    if probe is not None and probe_image_shape(probe) == tuple(image_shape):
        try:
            return load_probe(probe)[:N_INPUTS]
        except DatasetError:
            pass
    return torch.rand(N_INPUTS, *image_shape)


@functools.lru_cache(maxsize=16)
def _outputs(architecture: Buildable, image_shape: tuple[int, ...], probe: ProbeSpec | None) -> Any:
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return _forward(architecture.module_tree(), torch.empty(N_INPUTS, *image_shape))
    except Exception as error:  # a forward pass that needs values: run it for real
        on_meta = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            outputs = _forward(architecture.build().eval(), _items(probe, image_shape))
    except Exception as error:  # (the user's code may raise anything)
        # the meta device's own refusal says nothing of the model: the CPU's error does; else the first one found
        return ForwardError(str(error).strip() or type(error).__name__ if "meta" in on_meta else on_meta)
    logger.warning("architecture %s cannot run on the meta device (%s): its layer shapes come from a forward pass "
                   "of %d probe items on the CPU, randomly initialised", architecture.label, on_meta, N_INPUTS)
    return outputs


def module_outputs(architecture: Buildable, image_shape: Sequence[int], probe: ProbeSpec | None = None
                   ) -> dict[str, list[Any]]:
    """Each module's outputs, one per call, of a forward pass of two inputs of ``image_shape``.

    On the ``meta`` device; where that fails, on the CPU (see the module's notes). Computed once per architecture,
    shape and probe.

    Parameters
    ----------
    architecture : Buildable
    image_shape : sequence of int
        ``(channels, height, width)``.
    probe : raymatch.probes.ProbeSpec, optional
        Where the CPU forward pass takes its two items from (random images without it).

    Returns
    -------
    dict of str to list
        Module name to its outputs (tensors, tuples, dicts), for the modules the forward pass calls; shared
        between calls: do not modify.

    Raises
    ------
    ForwardError
        The architecture cannot take such inputs: what the forward pass on the ``meta`` device raised, or on the
        CPU where the ``meta`` device itself was the cause.
    """
    found = _outputs(architecture, tuple(image_shape), probe)
    if isinstance(found, ForwardError):
        raise found
    return found


def layer_calls(architecture: Buildable, probe: ProbeSpec | None) -> dict[str, int] | None:
    """Calls per forward pass of each module of ``architecture`` on the probe's images (None where unknown).

    Parameters
    ----------
    architecture : Buildable
    probe : raymatch.probes.ProbeSpec, optional

    Returns
    -------
    dict of str to int, or None
        None when the probe's image shape is not known without loading it, or the forward pass fails (that is the
        probe's problem, reported where the probe is checked).
    """
    shape = probe_image_shape(probe)
    if shape is None:
        return None
    try:
        return {name: len(calls) for name, calls in module_outputs(architecture, shape, probe).items()}
    except (RuntimeError, ValueError, TypeError):
        return None


def layer_shapes(architecture: Buildable, image_shape: Sequence[int], entries: Sequence[Any],
                 probe: ProbeSpec | None = None) -> dict[str, tuple[int, ...]]:
    """Each selected layer's neuron shape ``(neurons, *row axes)`` (no batch axis), from :func:`module_outputs`.

    Parameters
    ----------
    architecture : Buildable
    image_shape : sequence of int
    entries : sequence of (str or layer entry)
        Layer selectors or entries (:func:`~raymatch.extract.layers.resolve_layers`).
    probe : raymatch.probes.ProbeSpec, optional

    Returns
    -------
    dict of str to tuple of int
        In network order, for the layers the forward pass calls.

    Raises
    ------
    raymatch.extract.outputs.LayerOutputError
        A layer output that cannot become neurons over rows as its entry says (a 3-D output without ``neurons``,
        an ``output`` index out of range, a tuple without ``output`` …).
    ValueError
        From :func:`~raymatch.extract.layers.resolve_layers`.
    ForwardError
    """
    outputs = module_outputs(architecture, image_shape, probe)
    calls = {name: len(found) for name, found in outputs.items()}
    shapes = {}
    for layer, options in resolve_layers(architecture.module_tree(), entries, calls=calls).items():
        base, index = layer_base(layer) if layer not in outputs else (layer, None)
        if base not in outputs:
            continue
        picked = pick_output(outputs[base][index or 0], options.output, layer)
        shapes[layer] = neuron_shape(picked.shape, options.neurons, layer)
    return shapes


def output_shapes(architecture: Buildable, image_shape: Sequence[int], probe: ProbeSpec | None = None
                  ) -> dict[str, tuple[int, ...]]:
    """Each module's output shape without the batch dimension, for images of ``image_shape``.

    Parameters
    ----------
    architecture : Buildable
    image_shape : sequence of int
        ``(channels, height, width)``.
    probe : raymatch.probes.ProbeSpec, optional

    Returns
    -------
    dict of str to tuple of int
        Module name to the shape of its first output, for the modules whose first output is a tensor (tuple and
        dict outputs: see :func:`layer_shapes`).

    Raises
    ------
    ForwardError
        Images the architecture cannot take.
    """
    return {name: tuple(calls[0].shape[1:]) for name, calls in module_outputs(architecture, image_shape, probe).items()
            if isinstance(calls[0], torch.Tensor)}


def sampled_row_grid(shape: Sequence[int]) -> tuple[int, int] | None:
    """The ``(height, width)`` grid of positions a layer's rows are sampled over, as the extractor sees it.

    Parameters
    ----------
    shape : sequence of int
        The layer's output shape without the batch dimension: ``(F,)``, ``(C, L)`` or ``(C, H, W, …)``.

    Returns
    -------
    tuple of int, or None
        ``(H, W·…)`` for ``(C, H, W, …)``, ``(L, 1)`` for ``(C, L)``; None for a layer of one position per image
        (``(F,)``, or a spatial size of 1), whose rows are never sampled: one row per image.
    """
    spatial = math.prod(shape[1:])
    if len(shape) < 2 or spatial <= 1:
        return None
    return (shape[1], math.prod(shape[2:])) if len(shape) > 2 else (spatial, 1)


def row_identity(shape: Sequence[int]) -> tuple:
    """What the stored rows of a layer of output ``shape`` are, as the extractor keeps them.

    Two layers are compared over the same rows exactly when their identities are equal: per-example layers (one
    row per image: linear layers, and conv layers of one position) share ``('example',)``; conv layers have
    ``('positions', height, width)`` (every position, or row samples drawn from the probe, the repeat and
    that shape alone, so the same shape gives the same samples).

    Parameters
    ----------
    shape : sequence of int
        The layer's output shape without the batch dimension.

    Returns
    -------
    tuple
    """
    spatial = math.prod(shape[1:]) if len(shape) > 1 else 1
    if spatial <= 1:
        return ("example",)
    return ("positions", *shape[1:])
