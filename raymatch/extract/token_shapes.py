"""The widths of a language model's token layers before extraction: one forward pass on the ``meta`` device.

A plan compares each layer's neurons with the probe's token rows (:func:`raymatch.study.few_samples`) without
loading any weights. Where the forward pass does not run on the ``meta`` device (GPT-2's mask code calls
``.item()``), a model of at most :data:`CPU_FALLBACK_PARAMETERS` parameters is built from its config on the CPU,
randomly initialised (the global RNG untouched), for one forward pass of a few tokens; a larger one gives no widths
(None), and the comparison waits for the stored activations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from .outputs import LayerOptions, pick_output
from .tokens import HIDDEN_STATES

__all__ = ["token_layer_widths"]

log = logging.getLogger("raymatch")

#: Tokens of the forward pass.
META_TOKENS = 4
#: The largest model built on the CPU when its ``meta`` forward pass fails (GPT-2 small has 124 M parameters).
CPU_FALLBACK_PARAMETERS = 200_000_000


def _widths(model: nn.Module, layers: Mapping[str, LayerOptions], device: str) -> dict[str, int]:
    widths: dict[str, int] = {}
    modules = dict(model.named_modules())
    hidden = {name: int(name.rsplit(".", 1)[1]) for name in layers if name.split(".", 1)[0] == HIDDEN_STATES
              and name not in modules}

    def hook(name: str):
        def record(_module, _inputs, output):
            widths[name] = int(pick_output(output, layers[name].output, name).shape[-1])
        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers if name not in hidden]
    try:
        with torch.no_grad():  # input ids alone: an attention mask is what calls .item() on the meta device
            outputs = model(input_ids=torch.zeros((1, META_TOKENS), dtype=torch.long, device=device),
                            output_hidden_states=bool(hidden), use_cache=False)
        for name, index in hidden.items():
            widths[name] = int(outputs.hidden_states[index].shape[-1])
    finally:
        for handle in handles:
            handle.remove()
    return widths


def token_layer_widths(model: nn.Module, layers: Mapping[str, LayerOptions]) -> dict[str, int] | None:
    """The neurons of each token layer (the last axis of its output), from a forward pass on the ``meta`` device.

    Parameters
    ----------
    model : torch.nn.Module
        A ``transformers`` model on the ``meta`` device (:func:`raymatch.models.meta.lm_tree`).
    layers : mapping of str to LayerOptions
        From :func:`~raymatch.extract.tokens.token_layers`.

    Returns
    -------
    dict of str to int, or None
        None when no forward pass runs (see the module's description).
    """
    try:
        return _widths(model, layers, "meta")
    except Exception as error:  # any failure of a meta forward
        on_meta = error
    if sum(parameter.numel() for parameter in model.parameters()) > CPU_FALLBACK_PARAMETERS:
        log.info("no meta forward pass for %s (%s), and too large for the CPU: layer widths are known once "
                 "extracted", type(model).__name__, on_meta)
        return None
    try:
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            return _widths(type(model)(model.config).eval(), layers, "cpu")
    except Exception as error:  # no widths: the comparison waits for the stored activations
        log.info("no forward pass for %s (%s): layer widths are known once extracted", type(model).__name__, error)
        return None
