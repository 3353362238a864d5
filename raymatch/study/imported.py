"""The checks of a study that imports its activations (``population.activations``), and of one that does not.

A study importing activations has no architecture and runs no probe: its layers come from the files (``layers``
selects among them by name or glob) and its probe is ``{dataset: imported}`` (only ``rows`` applies). Each check
takes the fields that validated and returns ``(location, message)`` pairs, like :mod:`raymatch.study.checks`; the
files' headers are read by :mod:`raymatch.extract.imported`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..config import Loc
from ..probes import RowSample
from ..probes.spec import IMPORTED

__all__ = ["check_imported", "check_sources", "imported_few_samples", "imported_layer_names"]

Problems = list[tuple[Loc, str]]


def _imports(data: Mapping[str, Any]) -> bool:
    population = data.get("population")
    if not isinstance(population, Mapping):
        return getattr(population, "activations", None) is not None
    return population.get("activations") is not None


def check_sources(values: Mapping[str, Any], data: Mapping[str, Any]) -> Problems:
    """An architecture and a probe for a study of models; neither (nor a null baseline) for imported activations."""
    probe = values.get("probe")
    if not _imports(data):
        problems: Problems = [((key,), "required key is missing") for key in ("architecture", "probe")
                              if data.get(key) is None]
        if probe is not None and probe.dataset == IMPORTED and data.get("probe") is not None:
            problems.append((("probe", "dataset"), "imported is the probe of a study with population.activations"))
        return problems
    why = "imported activations have no architecture"
    problems = [(("architecture",), f"not used with population.activations: {why}")] \
        if data.get("architecture") is not None else []
    if probe is not None and probe.dataset != IMPORTED:
        problems.append((("probe", "dataset"), "must be imported with population.activations (no probe is run; "
                                               "only probe.rows applies)"))
    if "untrained" in (values.get("null_baseline") or ()):
        problems.append((("null_baseline",), f"untrained needs an architecture to initialise; {why} "
                                             "(permuted needs none)"))
    return problems


def _located(error: ValueError) -> tuple[Loc, str]:
    field, _, message = str(error).partition(": ")
    return tuple(field.split(".")), message


def check_imported(values: Mapping[str, Any]) -> Problems:
    """The imported files (headers), the layer selectors among them, the reference and the row sample.

    Problems at ``population.activations…``, ``layers[i]``, ``simple_matches.layers[i]``, ``reference`` and
    ``probe.rows.rows``.
    """
    from ..extract.imported import ImportError_, scan_import, select_imported

    population = values.get("population")
    spec = getattr(population, "activations", None)
    if spec is None:
        return []
    try:
        scan = scan_import(spec)
    except ImportError_ as error:
        return [_located(error)]
    problems: Problems = []
    chosen: list[str] = []
    for name, loc in (("layers", ("layers",)), ("simple_matches", ("simple_matches", "layers"))):
        selectors = values.get(name)
        if name == "simple_matches":
            selectors = selectors.layers if selectors is not None else ()
        for index, selector in enumerate(selectors or ()):
            try:
                found = select_imported(scan.layers, [selector])
            except ValueError as error:
                problems.append(((*loc, index), str(error).removeprefix("layers[0]: ")))
                continue
            if name == "layers":
                chosen += found
            elif values.get("layers") is not None and set(found) - set(chosen):
                problems.append(((*loc, index), f"{selector!r} selects {', '.join(sorted(set(found) - set(chosen)))}"
                                                f", which the study's layers do not include"))
    if values.get("pairs") == "reference" and values.get("reference") not in (None, *spec.model_names):
        problems.append((("reference",), f"name an imported model, one of {', '.join(spec.model_names)}; got "
                                         f"{values['reference']!r}"))
    probe = values.get("probe")
    if probe is not None and isinstance(probe.rows, RowSample):
        for layer in chosen:
            shape = scan.shapes[scan.models[0]][layer]
            available = shape[0] * math.prod(shape[2:])
            if len(shape) > 2 and probe.rows.rows > available:
                problems.append((("probe", "rows", "rows"), f"asks for {probe.rows.rows} rows but imported layer "
                                                            f"{layer} has only {available} (example, position) rows"))
                break
    return problems


def imported_layer_names(spec: Any, selectors) -> list[str]:
    """The imported layers ``selectors`` choose, in the files' order.

    Parameters
    ----------
    spec : raymatch.study.ActivationImport
    selectors : sequence of str

    Returns
    -------
    list of str
    """
    from ..extract.imported import scan_import, select_imported

    return select_imported(scan_import(spec).layers, list(selectors))


def imported_few_samples(study) -> list[tuple[str, int, int, str]]:
    """``(layer, neurons, samples, field)`` for each imported layer with no more samples than neurons (any model).

    As :func:`~raymatch.study.checks.few_samples`: an (N, F) layer has N samples, an (N, C, …) layer N × positions,
    or ``probe.rows.rows`` when sampled.

    Parameters
    ----------
    study : raymatch.study.Study

    Returns
    -------
    list of (str, int, int, str)
    """
    from ..extract.imported import scan_import

    scan = scan_import(study.population.activations)
    rows = study.probe.rows
    found = []
    for layer in study.layer_names:
        shapes = [scan.shapes[model][layer] for model in scan.models]
        neurons, positions = max(shape[1] for shape in shapes), math.prod(shapes[0][2:])
        sampled = isinstance(rows, RowSample) and positions > 1
        samples = min(rows.rows, shapes[0][0] * positions) if sampled else shapes[0][0] * positions
        if samples <= neurons:
            found.append((layer, neurons, samples, "probe.rows.rows" if sampled else "the imported examples"))
    return found
