"""What a layer's output is: which element of a tuple/dict output, which axis holds the neurons, which call.

A layer entry of a study is a selector string (``relu``, ``features.*``, ``encoder.0``) or a mapping
``{select: SELECTOR, neurons: first|last, output: INDEX|KEY}``. Its output becomes a matrix of neurons over rows:

- ``(N, F)``: F neurons over N rows;
- ``(N, C, *spatial)`` with two or more spatial axes: C neurons over N·∏spatial rows (the conv rule);
- ``neurons: first``: axis 1 holds the neurons, every other axis rows (a Conv1d's ``(N, C, L)``);
- ``neurons: last``: the last axis holds the neurons, every other axis rows (a transformer's ``(N, T, D)``: D
  neurons over N·T rows);
- a 3-D output with no ``neurons`` is refused: it is ambiguous.

``output: k`` (an index) or ``output: key`` picks one element of a tuple/list or dict output (``nn.MultiheadAttention``
returns ``(attn_output, attn_weights)``). A module called k > 1 times per forward pass gives the layers
``<name>#0 … <name>#{k-1}``, one per call, in call order (:func:`call_counts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["LayerOptions", "LayerOutputError", "as_neuron_matrix", "call_counts", "entry_parts", "layer_base",
           "neuron_shape", "pick_output"]

#: What ``neurons:`` may say.
NEURON_AXES = ("first", "last")


class LayerOutputError(ValueError):
    """A layer output that cannot become a matrix of neurons over rows as asked."""


@dataclass(frozen=True)
class LayerOptions:
    """How one layer's output becomes neurons over rows.

    Attributes
    ----------
    neurons : {'first', 'last'} or None
        Which axis holds the neurons (None: axis 1 of a 2-D, 4-D or 5-D output).
    output : int or str or None
        Which element of a tuple/list (an index) or dict (a key) output.
    """

    neurons: str | None = None
    output: int | str | None = None


def entry_parts(entry: Any) -> tuple[str, LayerOptions]:
    """The selector of a layer entry and its options.

    Parameters
    ----------
    entry : str or mapping or object
        A selector string, a mapping with ``select`` and optional ``neurons``/``output``, or an object with those
        attributes (a study's layer entry).

    Returns
    -------
    selector : str
    options : LayerOptions
    """
    if isinstance(entry, str):
        return entry, LayerOptions()
    if isinstance(entry, Mapping):
        return entry.get("select"), LayerOptions(entry.get("neurons"), entry.get("output"))
    return entry.select, LayerOptions(entry.neurons, entry.output)


def layer_base(name: str) -> tuple[str, int | None]:
    """A layer name's module name and call index: ``'relu#1'`` → ``('relu', 1)``, ``'fc'`` → ``('fc', None)``."""
    base, sep, index = name.rpartition("#")
    if sep and index.isdigit():
        return base, int(index)
    return name, None


def call_counts(model: nn.Module, inputs: torch.Tensor) -> dict[str, int]:
    """How many times each named module runs in one forward pass of ``inputs``.

    Parameters
    ----------
    model : torch.nn.Module
        On any device (``meta`` included); its weights are not changed.
    inputs : torch.Tensor
        A batch, on the model's device.

    Returns
    -------
    dict of str to int
        Module name to calls; modules the forward pass does not call are absent.
    """
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(
                lambda _m, _i, _o, key=name: counts.__setitem__(key, counts.get(key, 0) + 1)))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def _kind(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"a dict with keys {', '.join(map(repr, output))}"
    return f"a {type(output).__name__} of {len(output)}"


def pick_output(output: Any, choice: int | str | None, name: str) -> torch.Tensor:
    """The tensor of a module's output that ``choice`` picks.

    Parameters
    ----------
    output : torch.Tensor or tuple or list or dict
    choice : int or str or None
        An index of a tuple/list output or a key of a dict output; None for a tensor output.
    name : str
        The layer's name, for messages.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    LayerOutputError
        A tuple/dict output with no ``output`` given, an index out of range, a missing key, or no tensor picked.
    """
    if choice is None:
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, (tuple, list, Mapping)):
            raise LayerOutputError(f"layer {name} returns {_kind(output)}: choose one with "
                                   f"{{select: {name}, output: <index or key>}}")
        raise LayerOutputError(f"layer {name} returns a {type(output).__name__}, not a tensor")
    if isinstance(choice, int) and isinstance(output, (tuple, list)):
        if not 0 <= choice < len(output):
            raise LayerOutputError(f"layer {name}: output: {choice} but it returns {_kind(output)} "
                                   f"(indices 0 to {len(output) - 1})")
        picked = output[choice]
    elif isinstance(choice, str) and isinstance(output, Mapping):
        if choice not in output:
            raise LayerOutputError(f"layer {name}: output: {choice!r} but it returns {_kind(output)}")
        picked = output[choice]
    else:
        what = "a tensor" if isinstance(output, torch.Tensor) else _kind(output)
        raise LayerOutputError(f"layer {name}: output: {choice!r} but it returns {what}")
    if not isinstance(picked, torch.Tensor):
        raise LayerOutputError(f"layer {name}: output: {choice!r} is a {type(picked).__name__}, not a tensor")
    return picked


def neuron_shape(shape: Sequence[int], neurons: str | None, name: str) -> tuple[int, ...]:
    """A layer output's shape without the batch axis, the neurons' axis first: ``(C, *row axes)``.

    Parameters
    ----------
    shape : sequence of int
        The output's shape, batch axis included: ``(N, …)``.
    neurons : {'first', 'last'} or None
    name : str
        The layer's name, for messages.

    Returns
    -------
    tuple of int
        ``(F,)`` for ``(N, F)``; ``(C, *spatial)`` for channels first; ``(D, *other)`` for ``neurons: last``.

    Raises
    ------
    LayerOutputError
        Fewer than 2 axes, or 3 axes with ``neurons`` not given.
    """
    shape = tuple(int(size) for size in shape)
    if len(shape) < 2:
        raise LayerOutputError(f"layer {name} outputs shape {shape}: one number per example, no neurons")
    if neurons == "last" and len(shape) > 2:
        return (shape[-1], *shape[1:-1])
    if len(shape) == 3 and neurons is None:
        shown = "×".join(map(str, shape))
        raise LayerOutputError(
            f"layer {name} outputs (N, A, B) = {shown}, which is ambiguous: give {{select: {name}, neurons: last}} "
            f"(the last axis holds the neurons, e.g. tokens × hidden) or neurons: first (axis 1, e.g. a Conv1d)")
    return shape[1:]


def as_neuron_matrix(output: Any, options: LayerOptions, name: str) -> torch.Tensor:
    """A module's batch output as ``(B, neurons, positions)``, rows being (example, position) in C order.

    Parameters
    ----------
    output : torch.Tensor or tuple or list or dict
    options : LayerOptions
    name : str

    Returns
    -------
    torch.Tensor, shape (B, C, P)
        A view where possible; ``P = ∏`` of the row axes other than the batch axis (1 for ``(N, F)``).
    """
    tensor = pick_output(output, options.output, name)
    neuron_shape(tensor.shape, options.neurons, name)  # refuses what is ambiguous
    if options.neurons == "last" and tensor.dim() > 2:
        tensor = tensor.movedim(-1, 1)
    return tensor.reshape(tensor.shape[0], tensor.shape[1], -1)
