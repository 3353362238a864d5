"""The checks of a study that relate its fields.

The reference against the pairs policy and the population, the layer selectors against the architecture, and the
probe against the architecture and its dataset. Each check takes the fields that validated (a mapping of field name
to value; a field that failed is absent) and returns its problems as ``(location, message)`` pairs, so it runs even
when other fields had problems. Nothing here loads weights: the shapes come from :mod:`raymatch.extract.shapes`
(a forward pass on PyTorch's ``meta`` device), which is imported, with torch, by the checks that need it.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..config import Loc
from ..extract.entries import valid_entries
from ..probes import DatasetError, RowSample, probe_size
from ..probes.spec import IMPORTED

if TYPE_CHECKING:
    from torch import nn

    from ..models.architecture import Architecture
    from .spec import Study

__all__ = ["check_architecture_use", "check_checkpoint_files", "check_cross_layers", "check_layers", "check_measures",
           "check_probe_fit", "check_reference", "check_sampled_rows", "check_trajectory", "few_samples"]

#: What a checkpoint is, for the problem of a folder given as one.
CHECKPOINT_FILE = ("a checkpoint is a file, safetensors or a torch.save state dict (a Hugging Face save_pretrained "
                   "folder is not one)")

Problems = list[tuple[Loc, str]]


def check_measures(values: Mapping[str, Any], data: Mapping[str, Any]) -> Problems:
    """``measures`` lists ``max_match`` (the subspace match every study computes)."""
    measures = values.get("measures")
    if measures is None or "max_match" in measures:
        return []
    return [(("measures",), f"must list max_match (every study computes the subspace match; the other measures "
                            f"come beside it); got {list(measures)}")]


def check_reference(values: Mapping[str, Any]) -> Problems:
    """The reference against the pairs policy and the population's checkpoints or trained seeds.

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


def check_checkpoint_files(values: Mapping[str, Any]) -> Problems:
    """Local checkpoints that are no checkpoint files: a listed folder, a file that a glob matches (by its header).

    Problems located at ``population.checkpoints[i]`` and ``population.glob`` (the first file it matches that is
    none: a Hugging Face ``save_pretrained`` folder's ``config.json``, say); a listed file's own problems are
    reported when it is read.
    """
    population, store = values.get("population"), values.get("store")
    if population is None or store is None:
        return []
    store = store.open()  # (opens nothing yet)
    problems: Problems = []
    for index, key in enumerate(population.checkpoints):
        path = key.removeprefix("file://") if key.startswith(("/", "file://")) else \
            store.path(key) if store.is_local and "://" not in key else None
        if path is not None and os.path.isdir(path):
            problems.append((("population", "checkpoints", index), f"{key} is a folder; {CHECKPOINT_FILE}"))
    pattern = population.glob
    if pattern is None or not store.is_local:
        return problems
    from ..models.checkpoint import file_problem

    prefix = pattern.split("*", 1)[0].rsplit("/", 1)[0] if "/" in pattern else ""  # as the plan resolves it
    try:
        keys = [key for key in store.list(prefix) if fnmatch.fnmatch(key, pattern)]
    except ValueError:  # an unsafe prefix: the plan says so
        return problems
    for key in keys:
        problem = file_problem(store.path(key))
        if problem is not None:
            return [*problems, (("population", "glob"), f"{pattern!r} matches {key}, which is no checkpoint "
                                                        f"({problem}); {CHECKPOINT_FILE}")]
    return problems


def check_architecture_use(values: Mapping[str, Any]) -> Problems:
    """Training and the null baseline build zoo models only: refuse them with a factory, torchvision or timm."""
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


def _resolve_each(model: nn.Module, entries: Sequence[tuple[int, Any]], loc: tuple[str, ...], problems: Problems,
                  calls: Mapping[str, int] | None = None) -> list[list[str] | None]:
    """The layer names each ``(index, selector)`` picks (None for one that picks none, reported in ``problems``)."""
    from ..extract.layers import select_layers

    field = ".".join(loc)
    resolved: list[list[str] | None] = []
    for index, selector in entries:
        try:
            resolved.append(select_layers(model, [selector], field=field, calls=calls))
        except ValueError as error:
            problems.append(((*loc, index), str(error).removeprefix(f"{field}[0]: ")))
            resolved.append(None)
    return resolved


def check_layers(values: Mapping[str, Any], data: Mapping[str, Any]) -> Problems:
    """The layer selectors, and those of simple matches (within the study's layers), against the architecture.

    Every entry of ``layers`` that is valid on its own is checked, even when others are not (all problems in one
    pass).

    Problems located at ``layers[i]`` and ``simple_matches.layers[i]``.
    """
    from ..extract.layers import select_layers
    from ..extract.shapes import layer_calls

    architecture = values.get("architecture")
    if architecture is None:
        return []
    model = architecture.module_tree()
    calls = layer_calls(architecture, values.get("probe"))
    problems: Problems = []
    entries = list(enumerate(values["layers"])) if "layers" in values else valid_entries(data.get("layers"))
    resolved = _resolve_each(model, entries, ("layers",), problems, calls)
    problems += _layout_problems(architecture, values.get("probe"),
                                 [entry for entry, names in zip(entries, resolved, strict=True) if names], calls)
    study_layers = None
    if "layers" in values and all(resolved):
        try:
            study_layers = select_layers(model, values["layers"], calls=calls)
        except ValueError as error:  # two entries selecting one layer with other options
            problems.append((("layers",), str(error).removeprefix("layers")))
    simple_matches = values.get("simple_matches")
    if simple_matches is None or not simple_matches.layers:
        return problems
    selectors = simple_matches.layers
    resolved = _resolve_each(model, list(enumerate(selectors)), ("simple_matches", "layers"), problems, calls)
    if not all(resolved) or study_layers is None:
        return problems
    for index, (selector, names) in enumerate(zip(selectors, resolved, strict=True)):
        outside = [name for name in names if name not in study_layers]
        if outside:
            problems.append((("simple_matches", "layers", index),
                             f"{selector!r} selects {', '.join(outside)}, which the study's layers do not include "
                             f"({', '.join(study_layers)})"))
    return problems


def _layout_problems(architecture: Architecture, probe: Any, entries: Sequence[tuple[int, Any]],
                     calls: Mapping[str, int] | None) -> Problems:
    """Each layer entry whose outputs cannot become neurons over rows as it says (meta forward pass)."""
    from ..extract.outputs import LayerOutputError
    from ..extract.shapes import layer_shapes, probe_image_shape

    shape = probe_image_shape(probe) if calls is not None else None
    if shape is None:
        return []
    problems: Problems = []
    for index, entry in entries:
        try:
            layer_shapes(architecture, shape, [entry], probe)
        except LayerOutputError as error:
            problems.append((("layers", index), str(error)))
        except (RuntimeError, ValueError, TypeError):  # selectors and forward passes report elsewhere
            pass
    return problems


def _first_layer(architecture: Architecture) -> tuple[str, int] | None:
    """The name and input channels of the architecture's first module that has ``in_channels`` (a conv)."""
    for name, module in architecture.module_tree().named_modules():
        if isinstance(getattr(module, "in_channels", None), int):
            return name, module.in_channels
    return None


def _cannot_take(probe: Any, architecture: Architecture, image_shape: tuple[int, ...], error: Exception) -> str:
    """Why ``architecture`` cannot take the probe's images: their shape, what it expects, the forward pass's error."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    sizes = (f" (in_channels {architecture.in_channels}, input_size {architecture.input_size})"
             if architecture.is_zoo else "")
    images = f"the images of {probe.path}" if probe.from_files else f"{probe.dataset} images"
    message = (f"{images} are {'×'.join(map(str, image_shape))}, which architecture {architecture.label}{sizes} "
               f"cannot take: {reason}")
    first = _first_layer(architecture)
    if first is not None and first[1] != image_shape[0]:
        message += (f"; it expects {first[1]}-channel images (its first layer {first[0]} takes {first[1]} "
                    f"channel{'s' if first[1] != 1 else ''}), the probe's have {image_shape[0]}")
    return message


def check_probe_fit(values: Mapping[str, Any]) -> Problems:
    """A probe subset no larger than its split, images the architecture can take, and rows each layer has.

    Nothing is loaded but the user's files: the split's published size and image shape, and a forward pass on the
    ``meta`` device (whose layer shapes also bound the sampled rows: :func:`check_sampled_rows`).

    Problems located at ``probe.n_examples``, ``probe`` and ``probe.rows.rows``.
    """
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
    from ..extract.shapes import output_shapes

    try:
        output_shapes(architecture, image_shape, probe)
    except (RuntimeError, ValueError, TypeError, AttributeError) as error:
        return [*problems, (("probe",), _cannot_take(probe, architecture, tuple(image_shape), error))]
    return problems + check_sampled_rows(values)


def check_sampled_rows(values: Mapping[str, Any]) -> Problems:
    """Sampled rows (``probe.rows.rows``) no more than each sampled layer has: images × positions.

    The extractor (:mod:`raymatch.extract.extractor`) samples a layer of output ``(N, C, H, W)`` over its ``N·H·W``
    (image, position) rows and keeps every row of an ``(N, F)`` layer; asking for more rows than a layer has would
    fail only once extraction runs, so the layers' shapes come from a forward pass on the ``meta`` device here.

    One problem per layer with too few rows, located at ``probe.rows.rows``.
    """
    from ..extract.shapes import layer_shapes, sampled_row_grid

    probe, architecture, entries = values.get("probe"), values.get("architecture"), values.get("layers")
    if probe is None or architecture is None or entries is None or not isinstance(probe.rows, RowSample):
        return []
    try:
        available, image_shape = probe_size(probe)
        shapes = layer_shapes(architecture, tuple(image_shape), entries, probe)  # (neurons, *row axes) per layer
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
    probe = study.probe
    if study.is_lm:  # token rows against each layer's width (a meta forward pass)
        from .lm import lm_few_samples

        return lm_few_samples(study)
    if study.architecture is None:  # imported activations: the shapes in the files' headers
        from .imported import imported_few_samples

        return imported_few_samples(study)
    from ..extract.shapes import layer_shapes

    available, image_shape = probe_size(probe)
    n_images = probe.n_examples or available
    shapes = layer_shapes(study.architecture, image_shape, study.layers, probe)
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


def _described(identity: tuple) -> str:
    return "one row per example" if identity == ("example",) else f"positions {'×'.join(map(str, identity[1:]))}"


def check_cross_layers(values: Mapping[str, Any]) -> Problems:
    """``cross_layers``: layers within the study's, at least two, and each two comparable over the same rows.

    Without ``pool: mean``, two listed layers whose rows differ (:func:`~raymatch.extract.shapes.row_identity`)
    are refused, naming both and why.

    Problems located at ``cross_layers.layers``.
    """
    from ..extract.layers import select_layers
    from ..extract.shapes import output_shapes, probe_image_shape, row_identity

    cross, architecture = values.get("cross_layers"), values.get("architecture")
    if cross is None or architecture is None or "layers" not in values:
        return []
    model = architecture.module_tree()
    problems: Problems = []
    where = ("cross_layers", "layers")
    if not all(_resolve_each(model, list(enumerate(cross.layers)), where, problems)):
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
    image_shape = probe_image_shape(probe)
    if cross.pool == "mean" or image_shape is None:
        return problems
    try:
        shapes = output_shapes(architecture, image_shape, probe)
    except (RuntimeError, ValueError):
        return problems  # reported at probe
    identities = {name: row_identity(shapes[name]) for name in names if name in shapes}
    first = names[0]
    for name in names[1:]:
        if name in identities and first in identities and identities[name] != identities[first]:
            problems.append((where, f"{first} ({_described(identities[first])}) and {name} "
                                    f"({_described(identities[name])}) are not compared over the same rows; "
                                    "give cross_layers.pool: mean to compare their per-example means"))
            break
    return problems
