"""Choosing the layers whose activations are extracted."""

from __future__ import annotations

import fnmatch

from torch import nn

#: Type selectors: ``relu`` is the paper's choice (the output of every ReLU).
LAYER_TYPES: dict[str, tuple[type, ...]] = {
    "relu": (nn.ReLU,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
    "bn": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
}


def select_layers(model: nn.Module, selectors, *, field: str = "layers") -> list[str]:
    """Module names chosen by ``selectors``, in network order.

    Parameters
    ----------
    model : torch.nn.Module
    selectors : str or sequence of str
        Each is an exact module name (``features.3``), a glob over module names (``features.*``),
        or a type (``relu``, ``conv``, ``linear``, ``bn``).
    field : str
        Name used in error messages (``layers[2]: …``).

    Raises
    ------
    ValueError
        For a selector that matches nothing, listing the available module names.
    """
    if isinstance(selectors, str):
        selectors = [selectors]
    modules = [(name, module) for name, module in model.named_modules() if name]
    names = [name for name, _ in modules]
    chosen: set[str] = set()
    for i, selector in enumerate(selectors):
        if not isinstance(selector, str) or not selector:
            raise ValueError(f"{field}[{i}]: a layer selector must be a non-empty string; got {selector!r}")
        if selector in LAYER_TYPES:
            found = {name for name, module in modules if isinstance(module, LAYER_TYPES[selector])}
        elif any(char in selector for char in "*?["):
            found = set(fnmatch.filter(names, selector))
        else:
            found = {selector} if selector in names else set()
        if not found:
            leaves = [name for name, module in modules if not any(True for _ in module.children())]
            raise ValueError(
                f"{field}[{i}]: unknown layer {selector!r}; available: {', '.join(leaves)} "
                f"(or a glob, or one of the types {', '.join(LAYER_TYPES)})"
            )
        chosen |= found
    return [name for name in names if name in chosen]
