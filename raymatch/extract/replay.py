"""Imported arrays replayed through a module, so that the extractor's own hooks write them (:mod:`.imported`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["Emit", "Replay"]


class Replay(nn.Module):
    """A module whose forward pass, given example indices, emits one stored array's rows at one module path."""

    def __init__(self, layer: str, array: np.ndarray):
        super().__init__()
        self._replay_layer, self._replay_array = layer, array
        parent = self
        *path, leaf = layer.split(".")
        for part in path:  # a dotted layer name is a nested module, as in a network
            child = nn.Module()
            parent.add_module(part, child)
            parent = child
        parent.add_module(leaf, Emit())

    def forward(self, index: torch.Tensor) -> None:
        """Emit rows ``index`` (consecutive example indices) of the array through the layer's module."""
        start, stop = int(index[0]), int(index[-1]) + 1
        rows = np.array(self._replay_array[start:stop], dtype=np.float32, order="C")  # a writable copy
        self.get_submodule(self._replay_layer)(torch.from_numpy(rows))


class Emit(nn.Module):
    """Its input, as its output: the module whose forward hook the extractor taps."""

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows, unchanged."""
        return rows
