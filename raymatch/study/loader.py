"""Study files: YAML read strictly, checked in one pass, and the JSON Schema of such a file for editors.

The YAML loader rejects repeated keys and reads ``1e-3`` as a number (as YAML 1.2 does).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from ..config import resolve_paths, shown
from ..config.schema import describe, described_schema
from ..extract.entries import LayerEntry
from ..extract.import_spec import ActivationImport
from ..models.architecture import Architecture
from ..probes import ProbeSpec, RowSample
from ..probes.spec import TokenOptions
from ..train.lm_spec import CausalLMSpec
from ..train.spec import TrainingSpec
from .models import (
    CheckpointOptions,
    CrossLayersConfig,
    Population,
    Resources,
    SimpleMatchesConfig,
    StoreConfig,
    StoreTimeouts,
    StudyError,
)
from .spec import Study

__all__ = ["load_study", "study_json_schema"]

_TEXT_LABEL = "<study text>"


class _StudyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects repeated keys and reads ``1e-3`` as a number (as YAML 1.2 does)."""


def _construct_mapping(loader: _StudyLoader, node: yaml.MappingNode):
    data: dict[Any, Any] = {}
    yield data
    first_seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            earlier = first_seen.get(key)
        except TypeError:
            continue
        if earlier is not None:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"duplicate key {key!r} (first at line {earlier.line + 1})", key_node.start_mark,
            )
        first_seen[key] = key_node.start_mark
    data.update(loader.construct_mapping(node))


_StudyLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _kind(value: Any) -> str:
    if value is None:
        return "an empty document"
    if isinstance(value, str):
        return f"a string ({shown(value)})"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {shown(value)}"


def _malformed(label: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    reason = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{label}: malformed YAML{where}: {reason}"


def load_study(source: str | os.PathLike) -> Study:
    """Read and check a study file.

    Parameters
    ----------
    source : str or os.PathLike
        The path of a YAML file, or YAML text (a string with a newline in it).

    Returns
    -------
    Study

    Raises
    ------
    StudyError
        Malformed YAML (with its line and column), a top level that is not a mapping, or every problem of the
        study's fields at once (unknown or missing keys, wrong types, bad values), each under its field path.
    OSError
        The file cannot be read.

    Notes
    -----
    The relative local paths of a file (every path field, :mod:`raymatch.config.paths`) resolve against the file's
    folder, wherever the command runs: it becomes the study's :attr:`~raymatch.study.Study.base` (unless the file
    gives one) where a path field holds a relative path, and for every language-model study (whose ``models`` and
    ``glob`` may name folders). Those of a text resolve against the working directory.
    """
    folder = None
    if isinstance(source, str) and "\n" in source:
        label, text = _TEXT_LABEL, source
    else:
        label = os.fsdecode(source)
        with open(label, encoding="utf-8") as handle:
            text = handle.read()
        folder = os.path.dirname(os.path.abspath(label))
    try:
        data = yaml.load(text, Loader=_StudyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as error:
        raise StudyError([_malformed(label, error)]) from None
    if not isinstance(data, Mapping):
        raise StudyError([f"{label}: the top level must be a mapping of study fields ({', '.join(Study.model_fields)}"
                          f"); got {_kind(data)}"])
    architecture = data.get("architecture")
    lm = isinstance(architecture, Mapping) and architecture.get("source") == "transformers"
    if folder is not None and "base" not in data and (lm or resolve_paths(Study, data, folder) != data):
        data = {**data, "base": folder}  # where a path needs it (a language model's may): others as written
    return Study.from_dict(data)


# ------------------------------------------------------------------------------------------------ JSON Schema

#: The models a study file is made of, whose docstrings describe their fields.
_DOCUMENTED = (StoreConfig, StoreTimeouts, Population, CheckpointOptions, ActivationImport, Architecture, ProbeSpec,
               RowSample, TokenOptions, LayerEntry, SimpleMatchesConfig, CrossLayersConfig, Resources)


def study_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a study file, for editors and the YAML language server.

    It describes the YAML a user writes (``population.training`` holds the seeds and the training spec's fields
    side by side; ``probe.rows`` is ``all`` or a mapping …), with each field's description. It checks types,
    ranges and keys; :func:`load_study` checks everything else (layers against the architecture, the reference,
    credentials …).

    Returns
    -------
    dict
        A JSON-able schema; ``raymatch schema`` prints it.
    """
    schema = described_schema(Study, _DOCUMENTED)
    training = schema.get("$defs", {}).get("Training")
    if training is not None:  # the seeds and the training spec's fields, side by side
        description = training["description"]
        describe(training, TrainingSpec)
        describe(training, CausalLMSpec)
        training["description"] = description
    return {**schema, "title": "raymatch study"}
