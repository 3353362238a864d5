"""The checks of a study that relate its fields.

The reference against the pairs policy and the population, the layer selectors against the architecture, and the
probe against the architecture and its dataset. Each check takes the fields that validated (a mapping of field name
to value; a field that failed is absent) and returns its problems as ``(location, message)`` pairs, so it runs even
when other fields had problems. Nothing here loads data or weights: architectures are built on PyTorch's ``meta``
device, the global RNG untouched.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import Loc
from ..extract.layers import select_layers
from ..models import build_model
from ..probes import RowSample

if TYPE_CHECKING:
    from .models import Architecture, Study

__all__ = ["check_cross_layers", "check_layers", "check_probe_fit", "check_reference", "check_trajectory",
           "few_samples", "module_tree", "output_shapes", "row_identity"]

Problems = list[tuple[Loc, str]]


@functools.lru_cache(maxsize=16)
def module_tree(name: str, in_channels: int, num_classes: int, width: float, input_size: int) -> nn.Module:
    """The architecture built on the ``meta`` device: its modules without weights, the global RNG untouched.

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
def output_shapes(architecture: Architecture, image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Each module's output shape without the batch dimension, for images of ``image_shape``.

    Parameters
    ----------
    architecture : Architecture
    image_shape : tuple of int
        ``(channels, height, width)``.

    Returns
    -------
    dict of str to tuple of int
        Module name to output shape, for the modules a forward pass on the ``meta`` device calls (no weights,
        the global RNG untouched).

    Raises
    ------
    RuntimeError or ValueError
        What that forward pass raises: images the architecture cannot take.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(architecture.name, **architecture.kwargs)
        shapes: dict[str, tuple[int, ...]] = {}

        def record(key: str, output: torch.Tensor) -> None:  # a hook returning None leaves the output alone
            shapes.setdefault(key, tuple(output.shape[1:]))

        for module_name, module in model.named_modules():
            module.register_forward_hook(lambda _m, _i, output, key=module_name: record(key, output))
        with torch.no_grad():
            model(torch.empty(2, *image_shape))
    return shapes


def check_reference(values: Mapping[str, Any]) -> Problems:
    """The reference against the pairs policy and the population's checkpoints or trained seeds.

    Parameters
    ----------
    values : mapping
        The study's fields that validated.

    Returns
    -------
    list of (tuple, str)
        Problems located at ``reference``.
    """
    if "pairs" not in values or "reference" not in values:
        return []
    pairs, reference = values["pairs"], values["reference"]
    if pairs != "reference":
        return [] if reference is None else [(("reference",), f"only used with pairs: reference; got pairs: {pairs}")]
    if reference is None:
        return [(("reference",), "required when pairs is 'reference'")]
    population = values.get("population")
    problems: Problems = []
    if population is not None and population.checkpoints and reference not in population.checkpoints:
        problems.append((("reference",), f"{reference!r} is not one of population.checkpoints"))
    if population is not None and population.training is not None:
        names = [f"seed{seed}" for seed in population.training.seeds]
        if reference not in names:
            problems.append((("reference",), f"name a trained seed as seed<k>, one of {', '.join(names)}; got "
                                             f"{reference!r}"))
    return problems


def _resolve_each(model: nn.Module, selectors: Sequence[str], loc: tuple[str, ...], problems: Problems) -> list | None:
    """The module names each selector picks, or None after reporting every selector that picks none."""
    field = ".".join(loc)
    resolved = []
    for index, selector in enumerate(selectors):
        try:
            resolved.append(select_layers(model, [selector], field=field))
        except ValueError as error:
            problems.append(((*loc, index), str(error).removeprefix(f"{field}[0]: ")))
    return resolved if len(resolved) == len(selectors) else None


def check_layers(values: Mapping[str, Any]) -> Problems:
    """The layer selectors, and those of simple matches (within the study's layers), against the architecture.

    Parameters
    ----------
    values : mapping
        The study's fields that validated; without a valid architecture there is nothing to check against (its
        problem is reported already).

    Returns
    -------
    list of (tuple, str)
        Problems located at ``layers[i]`` and ``simple_matches.layers[i]``.
    """
    architecture = values.get("architecture")
    if architecture is None:
        return []
    model = architecture.module_tree()
    problems: Problems = []
    study_layers = None
    if "layers" in values and _resolve_each(model, values["layers"], ("layers",), problems) is not None:
        study_layers = select_layers(model, values["layers"])
    simple_matches = values.get("simple_matches")
    if simple_matches is None or not simple_matches.layers:
        return problems
    selectors = simple_matches.layers
    resolved = _resolve_each(model, selectors, ("simple_matches", "layers"), problems)
    if resolved is None or study_layers is None:
        return problems
    for index, (selector, names) in enumerate(zip(selectors, resolved, strict=True)):
        outside = [name for name in names if name not in study_layers]
        if outside:
            problems.append((("simple_matches", "layers", index),
                             f"{selector!r} selects {', '.join(outside)}, which the study's layers do not include "
                             f"({', '.join(study_layers)})"))
    return problems


def check_probe_fit(values: Mapping[str, Any]) -> Problems:
    """A probe subset no larger than its split, and images the architecture can take.

    Nothing is loaded: the split's published size and image shape, and a forward pass on the ``meta`` device.

    Parameters
    ----------
    values : mapping
        The study's fields that validated.

    Returns
    -------
    list of (tuple, str)
        Problems located at ``probe.n_examples`` and ``probe``.
    """
    from ..probes.datasets import IMAGE_SHAPES, SPLIT_SIZES

    probe, architecture = values.get("probe"), values.get("architecture")
    if probe is None:
        return []
    problems: Problems = []
    available = SPLIT_SIZES[probe.dataset][probe.split]
    if probe.n_examples is not None and probe.n_examples > available:
        problems.append((("probe", "n_examples"), f"asks for {probe.n_examples} examples but "
                                                  f"{probe.dataset}/{probe.split} has {available}"))
    if architecture is None:
        return problems
    try:
        output_shapes(architecture, IMAGE_SHAPES[probe.dataset])
    except (RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        problems.append((("probe",), f"{probe.dataset} images are {'×'.join(map(str, IMAGE_SHAPES[probe.dataset]))}, "
                                     f"which architecture {architecture.name} (in_channels {architecture.in_channels}, "
                                     f"input_size {architecture.input_size}) cannot take: {reason}"))
    return problems


def few_samples(study: Study) -> list[tuple[str, int, int, str]]:
    """``(layer, neurons, samples, field to raise)`` for each layer the probe gives no more samples than neurons.

    Such a layer's activation vectors span the whole sample space, so every neuron matches trivially (the rows'
    ``chance`` is 0). ``raymatch run`` and ``plan`` refuse such a study unless given ``--allow-few-samples``.
    Samples are counted as the extractor keeps rows: a conv layer has images × positions rows (or the sampled
    ``probe.rows.rows``), a linear layer one row per image; without ``n_examples``, the split's published size.

    Parameters
    ----------
    study : Study

    Returns
    -------
    list of (str, int, int, str)
        In network order; empty when every layer has more samples than neurons.
    """
    from ..probes.datasets import IMAGE_SHAPES, SPLIT_SIZES

    probe = study.probe
    n_images = probe.n_examples or SPLIT_SIZES[probe.dataset][probe.split]
    shapes = output_shapes(study.architecture, IMAGE_SHAPES[probe.dataset])
    found = []
    for layer in (name for name in study.layer_names if name in shapes):  # (modules the forward pass calls)
        neurons, spatial = shapes[layer][0], math.prod(shapes[layer][1:])
        sampled = isinstance(probe.rows, RowSample) and spatial > 1  # as the extractor decides
        samples = min(probe.rows.rows, n_images * spatial) if sampled else n_images * spatial
        if samples <= neurons:
            found.append((layer, neurons, samples, "probe.rows.rows" if sampled else "probe.n_examples"))
    return found


def check_trajectory(values: Mapping[str, Any]) -> Problems:
    """``pairs: {reference: final}`` only with ``population.training.save_every``; ``pairs: reference`` not with it.

    Parameters
    ----------
    values : mapping
        The study's fields that validated.

    Returns
    -------
    list of (tuple, str)
        Problems located at ``pairs``.
    """
    if "pairs" not in values or "population" not in values:
        return []
    training = values["population"].training
    save_every = None if training is None else training.save_every
    pairs = values["pairs"]
    if isinstance(pairs, dict) and save_every is None:
        return [(("pairs",), "{reference: final} compares each seed's saved epochs with its final weights: it needs "
                             "population.training.save_every")]
    if pairs == "reference" and save_every is not None:
        return [(("pairs",), "reference (one seed) does not apply along a seed's trajectory: use {reference: final}, "
                             "consecutive or all with population.training.save_every")]
    if save_every is not None and save_every > training.spec.epochs:
        return [(("population", "training", "save_every"), f"{save_every} is more than the {training.spec.epochs} "
                                                            "epochs trained: no epoch would be kept")]
    return []


def row_identity(shape: Sequence[int], probe: Any) -> tuple:
    """What the stored rows of a layer of output ``shape`` are, as the extractor keeps them.

    Two layers are compared over the same rows exactly when their identities are equal: per-example layers (one
    row per image: linear layers, and conv layers of one position) share ``('example',)``; conv layers have
    ``('positions', height, width)`` (every position, or row samples drawn from the probe, the repeat and
    that shape alone, so the same shape gives the same samples).

    Parameters
    ----------
    shape : sequence of int
        The layer's output shape without the batch dimension.
    probe : raymatch.probes.ProbeSpec

    Returns
    -------
    tuple
    """
    spatial = math.prod(shape[1:]) if len(shape) > 1 else 1
    if spatial <= 1:
        return ("example",)
    return ("positions", *shape[1:])


def _described(identity: tuple) -> str:
    return "one row per example" if identity == ("example",) else f"positions {'×'.join(map(str, identity[1:]))}"


def check_cross_layers(values: Mapping[str, Any]) -> Problems:
    """``cross_layers``: layers within the study's, at least two, and each two comparable over the same rows.

    Without ``pool: mean``, two listed layers whose rows differ (:func:`row_identity`) are refused, naming both
    and why.

    Parameters
    ----------
    values : mapping
        The study's fields that validated.

    Returns
    -------
    list of (tuple, str)
        Problems located at ``cross_layers.layers``.
    """
    from ..probes.datasets import IMAGE_SHAPES

    cross, architecture = values.get("cross_layers"), values.get("architecture")
    if cross is None or architecture is None or "layers" not in values:
        return []
    model = architecture.module_tree()
    problems: Problems = []
    where = ("cross_layers", "layers")
    if _resolve_each(model, cross.layers, where, problems) is None:
        return problems
    try:
        study_layers = select_layers(model, values["layers"])
    except ValueError:
        return problems  # reported at layers
    names = select_layers(model, cross.layers)
    outside = [name for name in names if name not in study_layers]
    if outside:
        return [(where, f"selects {', '.join(outside)}, which the study's layers do not include "
                        f"({', '.join(study_layers)})")]
    if len(names) < 2:
        return [(where, f"must select at least 2 layers; selects {', '.join(names)}")]
    probe = values.get("probe")
    if cross.pool == "mean" or probe is None:
        return problems
    try:
        shapes = output_shapes(architecture, IMAGE_SHAPES[probe.dataset])
    except (RuntimeError, ValueError):
        return problems  # reported at probe
    identities = {name: row_identity(shapes[name], probe) for name in names if name in shapes}
    first = names[0]
    for name in names[1:]:
        if name in identities and first in identities and identities[name] != identities[first]:
            problems.append((where, f"{first} ({_described(identities[first])}) and {name} "
                                    f"({_described(identities[name])}) are not compared over the same rows; "
                                    "give cross_layers.pool: mean to compare their per-example means"))
            break
    return problems
