"""A language model's twin with the neurons of its MLP blocks permuted: the same function, other neuron order.

The exact-match check of issue 22: a network and such a twin must match fully at ε = 0 on the MLP layers, since each
twin neuron is one of the original's. Supported blocks (found by their module names, as ``transformers`` builds them):

- GPT-2: ``mlp.c_fc`` → ``mlp.act`` → ``mlp.c_proj``, both ``Conv1D``, whose weight is ``(in, out)``: the columns of
  ``c_fc.weight`` (and ``c_fc.bias``) and the rows of ``c_proj.weight`` are permuted;
- GPT-NeoX / Pythia: ``mlp.dense_h_to_4h`` → ``mlp.act`` → ``mlp.dense_4h_to_h``, ``nn.Linear`` (``(out, in)``);
- BERT: ``intermediate.dense`` → ``intermediate`` (post-GELU) → ``output.dense``, ``nn.Linear``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

__all__ = ["MLP_PAIRS", "permuted_mlp_twin"]

#: Per block: the module that makes the MLP neurons and the module that reads them, relative to the block.
MLP_PAIRS = (("mlp.c_fc", "mlp.c_proj"), ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
             ("intermediate.dense", "output.dense"))


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers.pytorch_utils.Conv1D: weight (in, out)


def _permute(into: nn.Module, out_of: nn.Module, order: torch.Tensor) -> None:
    """Permute the neurons ``into`` makes and ``out_of`` reads, in place."""
    with torch.no_grad():
        if _is_conv1d(into):
            into.weight.copy_(into.weight[:, order])
        else:
            into.weight.copy_(into.weight[order, :])
        if into.bias is not None:
            into.bias.copy_(into.bias[order])
        if _is_conv1d(out_of):
            out_of.weight.copy_(out_of.weight[order, :])
        else:
            out_of.weight.copy_(out_of.weight[:, order])


def permuted_mlp_twin(model: nn.Module, seed: int = 0) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """A copy of ``model`` with the neurons of every MLP block permuted at random.

    Parameters
    ----------
    model : torch.nn.Module
        A GPT-2, GPT-NeoX or BERT model of ``transformers`` (any head).
    seed : int
        Seeds the permutations.

    Returns
    -------
    twin : torch.nn.Module
        Computes the same function as ``model`` (up to the rounding of a changed summation order).
    permutations : dict of str to numpy.ndarray
        Block name → ``order``: the twin's neuron ``j`` is the original's neuron ``order[j]``.

    Raises
    ------
    ValueError
        No MLP block found.
    """
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    generator = torch.Generator().manual_seed(seed)
    permutations = {}
    for name in modules:
        for into_name, out_of_name in MLP_PAIRS:
            into, out_of = modules.get(f"{name}.{into_name}"), modules.get(f"{name}.{out_of_name}")
            if into is None or out_of is None:
                continue
            width = into.weight.shape[1] if _is_conv1d(into) else into.weight.shape[0]
            order = torch.randperm(width, generator=generator)
            _permute(into, out_of, order)
            permutations[name] = order.numpy()
    if not permutations:
        raise ValueError(f"{type(model).__name__}: no MLP block of GPT-2, GPT-NeoX or BERT found to permute")
    return twin.eval(), permutations
