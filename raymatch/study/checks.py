"""The checks of a study that relate its fields.

The reference against the pairs policy and the population, the layer selectors against the architecture, and the
probe against the architecture and its dataset. Each check takes the fields that validated (a mapping of field name
to value; a field that failed is absent) and returns its problems as ``(location, message)`` pairs, so it runs even
when other fields had problems. Nothing here loads data or weights: architectures are built on PyTorch's ``meta``
device, the global RNG untouched.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import Loc
from ..extract.layers import resolve_layers, select_layers
from ..extract.outputs import LayerOutputError, call_counts, layer_base, neuron_shape, pick_output
from ..models import build_model
from ..models.factory import build_architecture
from ..probes import RowSample

if TYPE_CHECKING:
    from .models import Architecture, Study

__all__ = ["architecture_tree", "check_architecture_use", "check_cross_layers", "check_layers", "check_probe_fit",
           "check_reference", "check_sampled_rows", "check_trajectory", "few_samples", "layer_calls", "layer_shapes",
           "module_tree", "output_shapes", "row_identity", "sampled_row_grid"]

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
def architecture_tree(content: str) -> nn.Module:
    """A factory's, torchvision's or timm's architecture built on the ``meta`` device, the global RNG untouched.

    Parameters
    ----------
    content : str
        The canonical JSON of the architecture's :meth:`~raymatch.study.Architecture.to_dict`.

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


def _image_shape(probe: Any) -> tuple[int, ...] | None:
    """The probe's image shape ``(C, H, W)``: a built-in dataset's, or read from the user's files; else None.

    None for imported activations and for files that cannot be read (:func:`check_probe_fit` reports those).
    """
    from ..probes import DatasetError, probe_size
    from ..probes.spec import IMPORTED

    if probe is None or getattr(probe, "dataset", None) == IMPORTED:
        return None
    try:
        return tuple(probe_size(probe)[1])  # the user's files are read once (cached while unchanged)
    except DatasetError:
        return None


def _meta_outputs(architecture: Architecture, image_shape: tuple[int, ...]) -> dict[str, list[Any]]:
    """Each module's outputs, one per call, of a forward pass of two images on the ``meta`` device."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = architecture.module_tree()
        outputs: dict[str, list[Any]] = {}
        handles = [module.register_forward_hook(lambda _m, _i, output, key=name: outputs.setdefault(key, []).append(
            output)) for name, module in model.named_modules() if name]
        try:
            with torch.no_grad():
                model(torch.empty(2, *image_shape))
        finally:
            for handle in handles:
                handle.remove()
    return outputs


@functools.lru_cache(maxsize=16)
def _calls(architecture: Architecture, image_shape: tuple[int, ...]) -> dict[str, int]:
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return call_counts(architecture.module_tree(), torch.empty(2, *image_shape))


def layer_calls(architecture: Architecture, probe: Any) -> dict[str, int] | None:
    """Calls per forward pass of each module of ``architecture`` on the probe's images (None where unknown).

    Parameters
    ----------
    architecture : Architecture
    probe : raymatch.probes.ProbeSpec

    Returns
    -------
    dict of str to int, or None
        None when the probe's image shape is not known without loading it, or the forward pass fails (that is
        :func:`check_probe_fit`'s problem).
    """
    shape = _image_shape(probe)
    if shape is None:
        return None
    try:
        return _calls(architecture, shape)
    except (RuntimeError, ValueError, TypeError):
        return None


def layer_shapes(architecture: Architecture, image_shape: tuple[int, ...], entries: Sequence[Any]
                 ) -> dict[str, tuple[int, ...]]:
    """Each selected layer's neuron shape ``(neurons, *row axes)`` (no batch axis), from a ``meta`` forward pass.

    Parameters
    ----------
    architecture : Architecture
    image_shape : tuple of int
    entries : sequence of (str or LayerEntry)
        The study's layers.

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
    """
    outputs = _meta_outputs(architecture, image_shape)
    calls = {name: len(found) for name, found in outputs.items()}
    shapes = {}
    for layer, options in resolve_layers(architecture.module_tree(), entries, calls=calls).items():
        base, index = layer_base(layer) if layer not in outputs else (layer, None)
        if base not in outputs:
            continue
        picked = pick_output(outputs[base][index or 0], options.output, layer)
        shapes[layer] = neuron_shape(picked.shape, options.neurons, layer)
    return shapes


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
        model = architecture.build()
        shapes: dict[str, tuple[int, ...]] = {}

        def record(key: str, output: Any) -> None:  # a hook returning None leaves the output alone
            if isinstance(output, torch.Tensor):  # (tuple and dict outputs: see layer_shapes)
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


def check_architecture_use(values: Mapping[str, Any]) -> Problems:
    """Training and the null baseline build zoo models only: refuse them with a factory, torchvision or timm.

    Parameters
    ----------
    values : mapping
        The study's fields that validated.

    Returns
    -------
    list of (tuple, str)
    """
    architecture = values.get("architecture")
    if architecture is None or architecture.is_zoo:
        return []
    problems: Problems = []
    population = values.get("population")
    if population is not None and population.training is not None:
        problems.append((("population", "training"), f"trains zoo models only; architecture {architecture.label} "
                                                     "is not one: give its checkpoints"))
    if "untrained" in (values.get("null_baseline") or ()):
        problems.append((("null_baseline",), f"untrained initialises zoo models only; architecture "
                                             f"{architecture.label} is not one (permuted needs no initialisation)"))
    return problems


def _resolve_each(model: nn.Module, selectors: Sequence[str], loc: tuple[str, ...], problems: Problems,
                  calls: Mapping[str, int] | None = None) -> list | None:
    """The module names each selector picks, or None after reporting every selector that picks none."""
    field = ".".join(loc)
    resolved = []
    for index, selector in enumerate(selectors):
        try:
            resolved.append(select_layers(model, [selector], field=field, calls=calls))
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
    calls = layer_calls(architecture, values["probe"]) if "probe" in values else None
    problems: Problems = []
    study_layers = None
    if "layers" in values and _resolve_each(model, values["layers"], ("layers",), problems, calls) is not None:
        try:
            study_layers = select_layers(model, values["layers"], calls=calls)
        except ValueError as error:  # two entries selecting one layer with other options
            problems.append((("layers",), str(error).removeprefix("layers")))
        problems += _layout_problems(architecture, values, calls)
    simple_matches = values.get("simple_matches")
    if simple_matches is None or not simple_matches.layers:
        return problems
    selectors = simple_matches.layers
    resolved = _resolve_each(model, selectors, ("simple_matches", "layers"), problems, calls)
    if resolved is None or study_layers is None:
        return problems
    for index, (selector, names) in enumerate(zip(selectors, resolved, strict=True)):
        outside = [name for name in names if name not in study_layers]
        if outside:
            problems.append((("simple_matches", "layers", index),
                             f"{selector!r} selects {', '.join(outside)}, which the study's layers do not include "
                             f"({', '.join(study_layers)})"))
    return problems


def _layout_problems(architecture: Architecture, values: Mapping[str, Any], calls: Mapping[str, int] | None
                     ) -> Problems:
    """Each layer entry whose outputs cannot become neurons over rows as it says (meta forward pass)."""
    shape = _image_shape(values["probe"]) if calls is not None else None
    if shape is None:
        return []
    problems: Problems = []
    for index, entry in enumerate(values["layers"]):
        try:
            layer_shapes(architecture, shape, [entry])
        except LayerOutputError as error:
            problems.append((("layers", index), str(error)))
        except (RuntimeError, ValueError, TypeError):  # selectors and forward passes report elsewhere
            pass
    return problems


def check_probe_fit(values: Mapping[str, Any]) -> Problems:
    """A probe subset no larger than its split, images the architecture can take, and rows each layer has.

    Nothing is loaded: the split's published size and image shape, and a forward pass on the ``meta`` device
    (whose layer shapes also bound the sampled rows: :func:`check_sampled_rows`).

    Parameters
    ----------
    values : mapping
        The study's fields that validated.

    Returns
    -------
    list of (tuple, str)
        Problems located at ``probe.n_examples``, ``probe`` and ``probe.rows.rows``.
    """
    from ..probes import DatasetError, probe_size
    from ..probes.spec import IMPORTED

    probe, architecture = values.get("probe"), values.get("architecture")
    if probe is None or probe.dataset == IMPORTED:
        return []
    problems: Problems = []
    try:
        available, image_shape = probe_size(probe)  # the user's files: read and checked here, before Ray
    except DatasetError as error:
        field, _, message = str(error).partition(": ")
        known = field.startswith("probe") and " " not in field
        return [(tuple(field.split(".")) if known else ("probe",), message if known else str(error))]
    source = probe.path if probe.from_files else f"{probe.dataset}/{probe.split}"
    if probe.n_examples is not None and probe.n_examples > available:
        problems.append((("probe", "n_examples"), f"asks for {probe.n_examples} examples but "
                                                  f"{source} has {available}"))
    if architecture is None:
        return problems
    try:
        output_shapes(architecture, image_shape)
    except (RuntimeError, ValueError, TypeError, AttributeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        sizes = (f" (in_channels {architecture.in_channels}, input_size {architecture.input_size})"
                 if architecture.is_zoo else "")
        problems.append((("probe",), f"{probe.dataset} images are {'×'.join(map(str, image_shape))}, "
                                     f"which architecture {architecture.label}{sizes} cannot take: {reason}"))
        return problems
    return problems + check_sampled_rows(values)


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


def check_sampled_rows(values: Mapping[str, Any]) -> Problems:
    """Sampled rows (``probe.rows.rows``) no more than each sampled layer has: images × positions.

    The extractor (:mod:`raymatch.extract.extractor`) samples a layer of output ``(N, C, H, W)`` over its ``N·H·W``
    (image, position) rows and keeps every row of an ``(N, F)`` layer; asking for more rows than a layer has would
    fail only once extraction runs, so the layers' shapes come from a forward pass on the ``meta`` device here.

    Parameters
    ----------
    values : mapping
        The study's fields that validated: nothing to check without the probe, a row sample, the architecture
        and layers that all resolve.

    Returns
    -------
    list of (tuple, str)
        One problem per layer with too few rows, located at ``probe.rows.rows``.
    """
    from ..probes import DatasetError, probe_size

    probe, architecture, entries = values.get("probe"), values.get("architecture"), values.get("layers")
    if probe is None or architecture is None or entries is None or not isinstance(probe.rows, RowSample):
        return []
    try:
        available, image_shape = probe_size(probe)
        shapes = layer_shapes(architecture, tuple(image_shape), entries)  # (neurons, *row axes) per layer
    except (DatasetError, RuntimeError, ValueError, TypeError):  # reported by check_layers and check_probe_fit
        return []
    n_images = probe.n_examples or available
    problems: Problems = []
    for layer, shape in shapes.items():
        grid = sampled_row_grid(shape)
        if grid is None or probe.rows.rows <= n_images * grid[0] * grid[1]:
            continue
        height, width = grid
        problems.append((("probe", "rows", "rows"),
                         f"asks for {probe.rows.rows} rows but layer {layer!r} of {n_images} images × "
                         f"{height}×{width} positions has only {n_images * height * width}"))
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
    from ..probes import probe_size

    probe = study.probe
    if study.architecture is None:  # imported activations: the shapes in the files' headers
        from .imported import imported_few_samples

        return imported_few_samples(study)
    available, image_shape = probe_size(probe)
    n_images = probe.n_examples or available
    shapes = layer_shapes(study.architecture, image_shape, study.layers)
    found = []
    for layer in (name for name in study.layer_names if name in shapes):  # (layers the forward pass calls)
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
