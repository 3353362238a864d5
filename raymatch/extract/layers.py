"""Choosing the layers whose activations are extracted."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping

from torch import nn

from .outputs import LayerOptions, entry_parts

#: Type selectors: ``relu`` is the paper's choice (the output of every ReLU).
LAYER_TYPES: dict[str, tuple[type, ...]] = {
    "relu": (nn.ReLU,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
    "bn": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
}


def _expanded(name: str, calls: Mapping[str, int] | None) -> list[str]:
    """A module's layer names: ``name``, or ``name#0 … name#{k-1}`` for a module called k > 1 times."""
    count = (calls or {}).get(name, 1)
    return [f"{name}#{index}" for index in range(count)] if count > 1 else [name]


def _found(selector: str, modules: list, names: list[str], calls: Mapping[str, int] | None) -> set[str]:
    """The layer names one selector picks (each call of a module called more than once)."""
    if selector in LAYER_TYPES:
        return {layer for name, module in modules if isinstance(module, LAYER_TYPES[selector])
                for layer in _expanded(name, calls)}
    every = [layer for name in names for layer in _expanded(name, calls)]
    if any(char in selector for char in "*?["):
        matched = {layer for name in fnmatch.filter(names, selector) for layer in _expanded(name, calls)}
        return matched | set(fnmatch.filter([layer for layer in every if "#" in layer], selector))
    if selector in names:
        return set(_expanded(selector, calls))
    return {selector} if selector in every else set()


def select_layers(model: nn.Module, selectors, *, field: str = "layers", calls: Mapping[str, int] | None = None
                  ) -> list[str]:
    """Layer names chosen by ``selectors``, in network order.

    Parameters
    ----------
    model : torch.nn.Module
    selectors : str or sequence of (str or mapping)
        Each is an exact module name (``features.3``), a glob over module names (``features.*``),
        a type (``relu``, ``conv``, ``linear``, ``bn``), one call of a reused module (``relu#1``), or a layer entry
        ``{select: SELECTOR, neurons: …, output: …}`` (see :mod:`raymatch.extract.outputs`).
    field : str
        Name used in error messages (``layers[2]: …``).
    calls : mapping of str to int, optional
        Calls per forward pass of each module (:func:`~raymatch.extract.outputs.call_counts`): a module called
        k > 1 times gives the layers ``<name>#0 … <name>#{k-1}``, each selected wherever the module is.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        For a selector that matches nothing, listing the available module names.
    """
    return list(resolve_layers(model, selectors, field=field, calls=calls))


def resolve_layers(model: nn.Module, entries, *, field: str = "layers", calls: Mapping[str, int] | None = None
                   ) -> dict[str, LayerOptions]:
    """Layer names chosen by layer entries, in network order, each with its :class:`LayerOptions`.

    Parameters
    ----------
    model : torch.nn.Module
    entries : str or sequence of (str or mapping)
        As ``selectors`` of :func:`select_layers`.
    field : str
    calls : mapping of str to int, optional

    Returns
    -------
    dict of str to LayerOptions

    Raises
    ------
    ValueError
        For a selector that matches nothing, or a layer two entries give different options.
    """
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    modules = [(name, module) for name, module in model.named_modules() if name]
    names = [name for name, _ in modules]
    chosen: dict[str, LayerOptions] = {}
    for i, entry in enumerate(entries):
        selector, options = entry_parts(entry)
        if not isinstance(selector, str) or not selector:
            raise ValueError(f"{field}[{i}]: a layer selector must be a non-empty string; got {selector!r}")
        found = _found(selector, modules, names, calls)
        if not found:
            leaves = [name for name, module in modules if not any(True for _ in module.children())]
            raise ValueError(
                f"{field}[{i}]: unknown layer {selector!r}; available: {', '.join(leaves)} "
                f"(or a glob, or one of the types {', '.join(LAYER_TYPES)})"
            )
        for layer in found:
            if chosen.setdefault(layer, options) != options:
                raise ValueError(f"{field}[{i}]: {selector!r} selects {layer}, which an earlier entry selects "
                                 "with other neurons/output options")
    order = [layer for name in names for layer in _expanded(name, calls)]
    return {layer: chosen[layer] for layer in order if layer in chosen}
