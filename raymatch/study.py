"""Study files: one YAML file that fully describes a population study, checked in one pass before anything runs.

A study compares the layers of many trained networks of one architecture (Wang et al. 2018): which checkpoints
(:class:`Population`), built how (:class:`Architecture`), fed which inputs (:class:`~raymatch.probes.ProbeSpec`),
which layers, which ε grid, which pairs of models, and where everything is stored (:class:`StoreConfig`).
:func:`load_study` reads such a file into a :class:`Study` and reports every problem it finds at once, each under
its field path (``layers[2]: unknown layer …``, ``resources.pair_block: must be a positive integer; got 0``).

Nothing here imports Ray or touches the store: layer selectors are checked against the architecture built on
PyTorch's ``meta`` device (no weights, no use of the global RNG).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import yaml
from torch import nn

from .extract.layers import select_layers
from .models import build_model
from .probes import ProbeSpec, RowSample
from .store import Store, check_key

__all__ = [
    "PAIR_POLICIES",
    "Architecture",
    "Population",
    "Resources",
    "SimpleMatchesConfig",
    "StoreConfig",
    "Study",
    "StudyError",
    "few_samples",
    "load_study",
]

#: How the models of a population are paired: every unordered pair, every model against one reference, or each
#: checkpoint against the next one in the listed order (along training).
PAIR_POLICIES = ("all", "reference", "consecutive")

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_CREDENTIAL_WORDS = ("key", "secret", "password", "passwd", "token", "credential")
_CREDENTIALS_PROBLEM = (
    "credentials do not belong in a study file; pass them through the environment (runtime_env on a cluster)"
)
_TEXT_LABEL = "<study text>"


class _Invalid:
    """A field value that failed its checks (and has been reported), or a required field that is missing."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _Invalid()


class StudyError(ValueError):
    """A study with problems: the message lists every problem found, one per line, each under its field path.

    Parameters
    ----------
    problems : sequence of str
        One line per problem, e.g. ``eps[1]: must lie in [0, 1]; got 1.5``.

    Attributes
    ----------
    problems : list of str
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self):
        return type(self), (self.problems,)


# ------------------------------------------------------------------------------------------------ value checks


def _shown(value: Any) -> str:
    """A value as a study file's author would recognise it in a message: YAML spelling for null and booleans."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "an empty document"
    if isinstance(value, str):
        return f"a string ({_shown(value)})"
    if isinstance(value, Sequence):
        return "a list"
    return f"{type(value).__name__} {_shown(value)}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _check_string(value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, str) or not value:
        problems.append(f"{path}: must be a non-empty string; got {_shown(value)}")
        return _INVALID
    return value


def _check_optional_string(value: Any, path: str, problems: list[str]) -> Any:
    return None if value is None else _check_string(value, path, problems)


def _check_bool(value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, bool):
        problems.append(f"{path}: must be true or false; got {_shown(value)}")
        return _INVALID
    return value


def _check_positive_int(value: Any, path: str, problems: list[str]) -> Any:
    if not _is_integer(value) or value <= 0:
        problems.append(f"{path}: must be a positive integer; got {_shown(value)}")
        return _INVALID
    return int(value)


def _check_fractions(value: Any, path: str, problems: list[str], *, non_empty: bool) -> Any:
    """A list of distinct numbers in [0, 1], returned as a sorted tuple of floats."""
    if not _is_list(value):
        problems.append(f"{path}: must be a list of numbers; got {_shown(value)}")
        return _INVALID
    if non_empty and not value:
        problems.append(f"{path}: must not be empty")
        return _INVALID
    first_index: dict[float, int] = {}
    valid = True
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if not _is_number(item):
            problems.append(f"{item_path}: must be a number; got {_shown(item)}")
            valid = False
        elif not 0 <= item <= 1:
            problems.append(f"{item_path}: must lie in [0, 1]; got {_shown(item)}")
            valid = False
        elif float(item) in first_index:
            problems.append(f"{item_path}: duplicate of {path}[{first_index[float(item)]}] ({float(item):g})")
            valid = False
        else:
            first_index[float(item)] = index
    return tuple(sorted(first_index)) if valid else _INVALID


def _check_strings(value: Any, path: str, problems: list[str], *, what: str, non_empty: bool) -> Any:
    """A list of distinct non-empty strings, returned as a tuple in the given order."""
    if not _is_list(value):
        problems.append(f"{path}: must be a list of {what}; got {_shown(value)}")
        return _INVALID
    if non_empty and not value:
        problems.append(f"{path}: must not be empty")
        return _INVALID
    first_index: dict[str, int] = {}
    valid = True
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if not isinstance(item, str) or not item:
            problems.append(f"{item_path}: must be a non-empty string; got {_shown(item)}")
            valid = False
        elif item in first_index:
            problems.append(f"{item_path}: duplicate of {path}[{first_index[item]}] ({item!r})")
            valid = False
        else:
            first_index[item] = index
    return tuple(first_index) if valid else _INVALID


def _check_keys(
    data: Mapping[Any, Any],
    allowed: Sequence[str],
    required: Sequence[str],
    path: str,
    problems: list[str],
    *,
    recognised: Sequence[str] = (),
) -> None:
    """Report unknown keys (``recognised`` ones are left to the caller) and missing required ones."""
    for key in data:
        if key not in allowed and key not in recognised:
            problems.append(f"{_join(path, key)}: unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in data:
            problems.append(f"{_join(path, key)}: required key is missing")


def _plain(value: Any) -> Any:
    if isinstance(value, (_Section, ProbeSpec, Training)):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


# ------------------------------------------------------------------------------------------------ sections


class _Section:
    """Checks shared by the study and its sections: every field at once, from a mapping or from the constructor.

    A subclass is a frozen dataclass that names its field path in ``_PATH`` and implements ``_check``: given the
    fields present (defaults filled in), append a problem per bad value and return the normalised values. Direct
    construction and :meth:`from_dict` run the same checks; either raises :class:`StudyError` listing them all.
    """

    _PATH: ClassVar[str] = ""
    _RECOGNISED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _check(cls, values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def __post_init__(self) -> None:
        problems: list[str] = []
        values = self._check({item.name: getattr(self, item.name) for item in dataclasses.fields(self)}, problems)
        if problems:
            raise StudyError(problems)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a mapping of the fields, as written by :meth:`to_dict` (missing fields take their defaults).

        Raises
        ------
        StudyError
            Listing every unknown key, missing required key, wrong type and out-of-range value.
        """
        problems: list[str] = []
        built = cls._read(data, problems)
        if problems:
            raise StudyError(problems)
        return built

    @classmethod
    def _read(cls, data: Any, problems: list[str]) -> Any:
        """The section built from ``data`` (an instance passes through), or ``_INVALID`` with its problems added."""
        if isinstance(data, cls):
            return data
        names = [item.name for item in dataclasses.fields(cls)]
        if not isinstance(data, Mapping):
            problems.append(f"{cls._PATH or 'study'}: must be a mapping of {', '.join(names)}; got {_shown(data)}")
            return _INVALID
        before = len(problems)
        cls._check_section_keys(data, names, problems)
        values = {**cls._defaults(), **{key: value for key, value in data.items() if key in names}}
        values.update({key: data[key] for key in cls._RECOGNISED if key in data})
        checked = cls._check(values, problems)
        return _INVALID if len(problems) > before else cls(**checked)

    @classmethod
    def _check_section_keys(cls, data: Mapping[Any, Any], names: list[str], problems: list[str]) -> None:
        required = [item.name for item in dataclasses.fields(cls) if not _has_default(item)]
        _check_keys(data, names, required, cls._PATH, problems, recognised=cls._RECOGNISED)

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        defaults = {}
        for item in dataclasses.fields(cls):
            if item.default is not dataclasses.MISSING:
                defaults[item.name] = item.default
            elif item.default_factory is not dataclasses.MISSING:
                defaults[item.name] = item.default_factory()
        return defaults

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain YAML/JSON-able values (lists, dicts, strings, numbers, booleans, null)."""
        return {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)}


def _has_default(item: dataclasses.Field) -> bool:
    return item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING


def _credential_paths(data: Any, path: str) -> list[str]:
    """Field paths under ``path`` whose key names a credential (``secret``, ``aws_access_key_id``, ``token`` …)."""
    found = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            key_path = _join(path, key)
            if any(word in str(key).lower() for word in _CREDENTIAL_WORDS):
                found.append(key_path)
            found += _credential_paths(value, key_path)
    elif _is_list(data):
        for index, item in enumerate(data):
            found += _credential_paths(item, f"{path}[{index}]")
    return found


def _has_user_info(url: str) -> bool:
    authority = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    return "@" in authority


@dataclass(frozen=True)
class StoreConfig(_Section):
    """Where a study's activations, factors and results live.

    Parameters
    ----------
    uri : str
        A local path, ``file://…`` (a relative path resolves against the working directory of the process that
        opens the store), or ``s3://bucket/prefix``.
    endpoint_url : str, optional
        An S3-compatible endpoint, for ``s3://`` stores only.

    Notes
    -----
    Credentials never appear here: they come from the standard AWS environment (on a Ray cluster, through the
    job's ``runtime_env``). A key that names one anywhere under ``store`` is a problem.
    """

    uri: str
    endpoint_url: str | None = None

    _PATH = "store"

    @classmethod
    def _check_section_keys(cls, data: Mapping[Any, Any], names: list[str], problems: list[str]) -> None:
        credentials = _credential_paths(data, cls._PATH)
        problems += [f"{path}: {_CREDENTIALS_PROBLEM}" for path in credentials]
        flagged = {key for key in data if _join(cls._PATH, key) in credentials}
        super()._check_section_keys({key: value for key, value in data.items() if key not in flagged}, names, problems)

    @classmethod
    def _check(cls, values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        scheme = None
        if "uri" in values:
            uri = checked["uri"] = _check_string(values["uri"], "store.uri", problems)
            if uri is not _INVALID:
                scheme = uri.split("://", 1)[0] if "://" in uri else "file"
                if scheme not in ("file", "s3"):
                    problems.append(
                        f"store.uri: unsupported scheme {scheme!r} (use a local path, file:// or s3://); got {uri!r}"
                    )
                elif scheme == "s3" and not uri.split("://", 1)[1].strip("/"):
                    problems.append(f"store.uri: names no bucket; got {uri!r}")
                if _has_user_info(uri):
                    problems.append(f"store.uri: {_CREDENTIALS_PROBLEM}")
        endpoint = checked["endpoint_url"] = _check_optional_string(
            values["endpoint_url"], "store.endpoint_url", problems
        )
        if endpoint not in (None, _INVALID):
            if _has_user_info(endpoint):
                problems.append(f"store.endpoint_url: {_CREDENTIALS_PROBLEM}")
            if scheme == "file":
                problems.append("store.endpoint_url: only used with an s3:// store")
        return checked

    def open(self) -> Store:
        """The study's store, with credentials from the environment; nothing is read or written yet."""
        return Store(self.uri, endpoint_url=self.endpoint_url)


@dataclass(frozen=True)
class Population(_Section):
    """Which trained models a study compares: an explicit list of checkpoints, or a glob of store keys.

    Parameters
    ----------
    checkpoints : tuple of str
        Checkpoint store keys (``checkpoints/tiny/seed0.safetensors``), absolute paths or URIs: at least two, all
        distinct. Their order is the population order (``pairs: consecutive`` pairs neighbours in it).
    glob : str, optional
        A pattern of store keys (``checkpoints/vgg11/*.safetensors``), resolved against the store when the study
        runs. Give either ``checkpoints`` or ``glob``, not both.

    training : Training, optional
        Models the study trains itself: seeds of the architecture trained with a recipe (see
        :mod:`raymatch.train`); their checkpoints are stored under :attr:`Training.prefix`. Give exactly one of
        ``checkpoints``, ``glob`` and ``training``.
    """

    checkpoints: tuple[str, ...] = ()
    glob: str | None = None
    training: Training | None = None

    _PATH = "population"

    @classmethod
    def _check(cls, values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        training = values["training"]
        if training is not None and not isinstance(training, Training):
            training = _read_training(training, problems)
        checkpoints = _check_strings(
            values["checkpoints"], "population.checkpoints", problems, what="checkpoint keys", non_empty=False
        )
        if checkpoints is not _INVALID:
            for index, checkpoint in enumerate(checkpoints):
                if "://" in checkpoint or checkpoint.startswith("/"):
                    continue
                try:
                    check_key(checkpoint)
                except ValueError as error:
                    problems.append(f"population.checkpoints[{index}]: {error}")
        pattern = _check_optional_string(values["glob"], "population.glob", problems)
        if pattern not in (None, _INVALID) and ("://" in pattern or pattern.startswith("/")):
            problems.append(
                f"population.glob: must be a pattern of store keys, relative to the store root; got {pattern!r}"
            )
        if checkpoints is not _INVALID and pattern is not _INVALID:
            given = [name for name, value in (("checkpoints", checkpoints), ("glob", pattern),
                                              ("training", values["training"])) if value]
            if len(given) > 1:
                problems.append(f"population: give one of checkpoints, glob and training, not {' and '.join(given)}")
            elif not given:
                problems.append("population: give checkpoints (a list of store keys), glob (a pattern of store keys) "
                                "or training (seeds and a recipe)")
            elif len(checkpoints) == 1:
                problems.append("population.checkpoints: a study needs at least 2 models; got 1")
        return {"checkpoints": checkpoints, "glob": pattern, "training": training}


@dataclass(frozen=True)
class Training:
    """A population the study trains itself: one model per seed, all with one training recipe.

    Parameters
    ----------
    seeds : tuple of int
        Distinct non-negative seeds, at least two; their order is the population order.
    spec : raymatch.train.TrainingSpec
        The recipe and its settings (dataset, epochs, optimiser, held-out split …).

    In a study file the seeds and the spec's fields sit side by side::

        training: {seeds: [0, 1, 2, 3], recipe: quick, dataset: digits, epochs: 8}
    """

    seeds: tuple[int, ...]
    spec: Any

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds), **self.spec.to_dict()}

    def prefix(self, architecture: Architecture) -> str:
        """Store prefix of the trained checkpoints: ``checkpoints/<arch>/<digest of architecture and spec>``."""
        content = {"architecture": architecture.to_dict(), "training": self.spec.id}
        return f"checkpoints/{architecture.name}/trained-{_digest(content)}"


def untrained_prefix(architecture: Architecture) -> str:
    """Store prefix of the null baseline's initialisation-only checkpoints of ``architecture``."""
    return f"checkpoints/{architecture.name}/untrained-{_digest(architecture.to_dict())}"


def _digest(content: Any) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


def _read_training(value: Any, problems: list[str]) -> Any:
    from .train import recipe  # torch-heavy: only where a study trains its population

    if not isinstance(value, Mapping):
        problems.append(f"population.training: must be a mapping of seeds, recipe and training settings; got "
                        f"{_shown(value)}")
        return _INVALID
    settings = dict(value)
    seeds = settings.pop("seeds", None)
    if seeds is None:
        problems.append("population.training.seeds: required key is missing")
        seeds = _INVALID
    elif not _is_list(seeds) or not all(_is_integer(seed) and seed >= 0 for seed in seeds):
        problems.append(f"population.training.seeds: must be a list of non-negative integers; got {_shown(seeds)}")
        seeds = _INVALID
    elif len(set(seeds)) != len(seeds) or len(seeds) < 2:
        problems.append(f"population.training.seeds: need at least 2 distinct seeds; got {_shown(list(seeds))}")
        seeds = _INVALID
    try:
        spec = recipe(settings.pop("recipe", "quick"), **settings)
    except (TypeError, ValueError) as error:
        problems.append(f"population.training: {error}")
        return _INVALID
    return _INVALID if seeds is _INVALID else Training(tuple(int(seed) for seed in seeds), spec)


@functools.lru_cache(maxsize=16)
def _module_tree(name: str, in_channels: int, num_classes: int, width: float, input_size: int) -> nn.Module:
    """The architecture built on the ``meta`` device: its modules without weights, the global RNG untouched.

    Raises
    ------
    ValueError
        From :func:`~raymatch.models.build_model`, for an unknown name.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_model(name, in_channels=in_channels, num_classes=num_classes, width=width, input_size=input_size)


@dataclass(frozen=True)
class Architecture(_Section):
    """The architecture every model of the population shares: a model of the zoo and its size parameters.

    Parameters
    ----------
    name : str
        One of :func:`~raymatch.models.available_models` (or ``plain{depth}``).
    in_channels : int, default 3
    num_classes : int, default 10
    width : float, default 1.0
        Channel multiplier.
    input_size : int, default 32
        Height (= width) of the input images.
    """

    name: str
    in_channels: int = 3
    num_classes: int = 10
    width: float = 1.0
    input_size: int = 32

    _PATH = "architecture"

    @classmethod
    def _check(cls, values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        if "name" in values:
            checked["name"] = _check_string(values["name"], "architecture.name", problems)
        for size in ("in_channels", "num_classes", "input_size"):
            checked[size] = _check_positive_int(values[size], f"architecture.{size}", problems)
        width = values["width"]
        if _is_number(width) and math.isfinite(width) and width > 0:
            checked["width"] = float(width)
        else:
            problems.append(f"architecture.width: must be a positive number; got {_shown(width)}")
            checked["width"] = _INVALID
        if "name" in checked and _INVALID not in checked.values():
            try:
                _module_tree(
                    checked["name"], checked["in_channels"], checked["num_classes"], checked["width"],
                    checked["input_size"],
                )
            except ValueError as error:
                problems.append(f"architecture.name: {error}")
        return checked

    def build(self) -> nn.Module:
        """A freshly initialised model (weights from the global RNG), via :func:`~raymatch.models.build_model`."""
        return build_model(
            self.name,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            width=self.width,
            input_size=self.input_size,
        )

    @property
    def kwargs(self) -> dict[str, Any]:
        """The size parameters, as keyword arguments of :func:`~raymatch.models.build_model`."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width,
                "input_size": self.input_size}

    def module_tree(self) -> nn.Module:
        """The architecture's modules on the ``meta`` device (no weights), shared between calls: do not modify."""
        return _module_tree(self.name, self.in_channels, self.num_classes, self.width, self.input_size)


@dataclass(frozen=True)
class SimpleMatchesConfig(_Section):
    """Whether and where a study also computes simple matches (expensive: one peeling pass per neuron).

    Parameters
    ----------
    enabled : bool, default False
    eps : tuple of float
        The ε values (each in [0, 1]) to compute them at; stored sorted. Required when enabled.
    layers : tuple of str
        Layer selectors, all within the study's layers. Required when enabled.
    max_neurons : int, default 256
        Layers with more neurons than this are skipped.
    """

    enabled: bool = False
    eps: tuple[float, ...] = ()
    layers: tuple[str, ...] = ()
    max_neurons: int = 256

    _PATH = "simple_matches"

    @classmethod
    def _check(cls, values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        checked = {
            "enabled": _check_bool(values["enabled"], "simple_matches.enabled", problems),
            "eps": _check_fractions(values["eps"], "simple_matches.eps", problems, non_empty=False),
            "layers": _check_strings(
                values["layers"], "simple_matches.layers", problems, what="layer selectors", non_empty=False
            ),
            "max_neurons": _check_positive_int(values["max_neurons"], "simple_matches.max_neurons", problems),
        }
        if checked["enabled"] is True:
            for name in ("eps", "layers"):
                if checked[name] == ():
                    problems.append(f"simple_matches.{name}: must not be empty when simple matches are enabled")
        return checked


@dataclass(frozen=True)
class Resources(_Section):
    """How a study's work is spread over a Ray cluster; no influence on its results.

    Parameters
    ----------
    gpus_per_actor : float, default 1.0
        GPUs per extraction actor (fractions share a GPU; 0 runs on CPUs).
    cpus_per_task : int, default 1
    pair_block : int, default 4
        Pairs per match task.
    max_in_flight : int, default 8
        Match tasks submitted at once.
    """

    gpus_per_actor: float = 1.0
    cpus_per_task: int = 1
    pair_block: int = 4
    max_in_flight: int = 8

    _PATH = "resources"

    @classmethod
    def _check(cls, values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        gpus = values["gpus_per_actor"]
        if _is_number(gpus) and math.isfinite(gpus) and gpus >= 0:
            checked: dict[str, Any] = {"gpus_per_actor": float(gpus)}
        else:
            problems.append(f"resources.gpus_per_actor: must be a non-negative number; got {_shown(gpus)}")
            checked = {"gpus_per_actor": _INVALID}
        for name in ("cpus_per_task", "pair_block", "max_in_flight"):
            checked[name] = _check_positive_int(values[name], f"resources.{name}", problems)
        return checked


# ------------------------------------------------------------------------------------------------ the study


def _read_probe(value: Any, problems: list[str]) -> Any:
    if isinstance(value, ProbeSpec):
        return value
    probe_fields = [item.name for item in dataclasses.fields(ProbeSpec)]
    if not isinstance(value, Mapping):
        problems.append(f"probe: must be a mapping of {', '.join(probe_fields)}; got {_shown(value)}")
        return _INVALID
    before = len(problems)
    _check_keys(value, probe_fields, ("dataset",), "probe", problems)
    rows = value.get("rows")
    if isinstance(rows, Mapping):
        _check_keys(rows, [item.name for item in dataclasses.fields(RowSample)], ("rows",), "probe.rows", problems)
    if len(problems) > before:
        return _INVALID
    try:
        return ProbeSpec.from_dict(value)
    except ValueError as error:
        message = str(error)
        problems.append(message if message.startswith(("probe.", "probe:", "probe ")) else f"probe: {message}")
        return _INVALID


def _resolve_each(model: nn.Module, selectors: Sequence[str], path: str, problems: list[str]) -> Any:
    """The module names each selector picks, or ``_INVALID`` after reporting every selector that picks none."""
    resolved = []
    for index, selector in enumerate(selectors):
        try:
            resolved.append(select_layers(model, [selector], field=path))
        except ValueError as error:
            problems.append(f"{path}[{index}]: {str(error).removeprefix(f'{path}[0]: ')}")
    return resolved if len(resolved) == len(selectors) else _INVALID


def _check_layers(checked: Mapping[str, Any], problems: list[str]) -> None:
    """Layer selectors against the architecture; skipped (already reported) when the architecture is invalid."""
    architecture = checked.get("architecture", _INVALID)
    if architecture is _INVALID:
        return
    model = architecture.module_tree()
    layers = checked.get("layers", _INVALID)
    study_layers = _INVALID
    if layers is not _INVALID:
        resolved = _resolve_each(model, layers, "layers", problems)
        if resolved is not _INVALID:
            study_layers = select_layers(model, layers)
    simple_matches = checked.get("simple_matches", _INVALID)
    if simple_matches is _INVALID or not simple_matches.layers:
        return
    resolved = _resolve_each(model, simple_matches.layers, "simple_matches.layers", problems)
    if resolved is _INVALID or study_layers is _INVALID:
        return
    for index, (selector, names) in enumerate(zip(simple_matches.layers, resolved, strict=True)):
        outside = [name for name in names if name not in study_layers]
        if outside:
            problems.append(
                f"simple_matches.layers[{index}]: {selector!r} selects {', '.join(outside)}, which the study's "
                f"layers do not include ({', '.join(study_layers)})"
            )


@functools.lru_cache(maxsize=16)
def _output_shapes(architecture: Architecture, image_shape: tuple[int, ...]) -> dict:
    """Each module's output shape without the batch dimension, from a forward pass of images of ``image_shape``
    on the ``meta`` device (no weights, the global RNG untouched); raises what that forward pass raises."""
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


def _check_probe_fit(checked: Mapping[str, Any], problems: list[str]) -> None:
    """A probe subset no larger than its split, and images the architecture can take (nothing is loaded: the
    split's published size and image shape, and a forward pass on the ``meta`` device)."""
    from .probes.datasets import IMAGE_SHAPES, SPLIT_SIZES

    probe, architecture = checked.get("probe", _INVALID), checked.get("architecture", _INVALID)
    if probe is _INVALID:
        return
    available = SPLIT_SIZES[probe.dataset][probe.split]
    if probe.n_examples is not None and probe.n_examples > available:
        problems.append(f"probe.n_examples: asks for {probe.n_examples} examples but {probe.dataset}/{probe.split} "
                        f"has {available}")
    if architecture is _INVALID:
        return
    try:
        _output_shapes(architecture, IMAGE_SHAPES[probe.dataset])
    except (RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        problems.append(f"probe: {probe.dataset} images are {'×'.join(map(str, IMAGE_SHAPES[probe.dataset]))}, which "
                        f"architecture {architecture.name} (in_channels {architecture.in_channels}, input_size "
                        f"{architecture.input_size}) cannot take: {reason}")


def few_samples(study: Study) -> list[tuple[str, int, int, str]]:
    """``(layer, neurons, samples, field to raise)`` for each layer the probe gives no more samples than neurons.

    Such a layer's activation vectors span the whole sample space, so every neuron matches trivially (the rows'
    ``chance`` is 0). ``raymatch run`` and ``plan`` refuse such a study unless given ``--allow-few-samples``.
    Samples are counted as the extractor keeps rows: a conv layer has images × positions rows (or the sampled
    ``probe.rows.rows``), a linear layer one row per image; without ``n_examples``, the split's published size.
    """
    from .probes.datasets import IMAGE_SHAPES, SPLIT_SIZES

    probe = study.probe
    n_images = probe.n_examples or SPLIT_SIZES[probe.dataset][probe.split]
    shapes = _output_shapes(study.architecture, IMAGE_SHAPES[probe.dataset])
    found = []
    for layer in (name for name in study.layer_names if name in shapes):  # (modules the forward pass calls)
        neurons, spatial = shapes[layer][0], math.prod(shapes[layer][1:])
        sampled = isinstance(probe.rows, RowSample) and spatial > 1  # as the extractor decides
        samples = min(probe.rows.rows, n_images * spatial) if sampled else n_images * spatial
        if samples <= neurons:
            found.append((layer, neurons, samples, "probe.rows.rows" if sampled else "probe.n_examples"))
    return found


def _check_reference(checked: Mapping[str, Any], problems: list[str]) -> None:
    pairs = checked.get("pairs", _INVALID)
    reference = checked.get("reference", _INVALID)
    if pairs is _INVALID or reference is _INVALID:
        return
    if pairs != "reference":
        if reference is not None:
            problems.append(f"reference: only used with pairs: reference; got pairs: {pairs}")
        return
    if reference is None:
        problems.append("reference: required when pairs is 'reference'")
        return
    population = checked.get("population", _INVALID)
    if population is not _INVALID and population.checkpoints and reference not in population.checkpoints:
        problems.append(f"reference: {reference!r} is not one of population.checkpoints")
    if population is not _INVALID and population.training is not None:
        names = [f"seed{seed}" for seed in population.training.seeds]
        if reference not in names:
            problems.append(f"reference: name a trained seed as seed<k>, one of {', '.join(names)}; got {reference!r}")


@dataclass(frozen=True)
class Study(_Section):
    """One population study: everything that determines its results, and how it runs.

    Every field is checked on construction (direct or through :meth:`from_dict`); a :class:`StudyError` lists
    every problem found. Sections may be given as mappings of their fields.

    Parameters
    ----------
    name : str
        Letters, digits and ``_ . -``, not starting with ``.`` or ``-``: it becomes part of store keys.
    store : StoreConfig
    population : Population
    architecture : Architecture
    probe : ProbeSpec
        The inputs every model is fed, and the activation rows kept.
    layers : tuple of str
        Layer selectors (module names, globs, or types such as ``relu``), each picking at least one module of
        the architecture; see :func:`~raymatch.extract.select_layers` and :attr:`layer_names`.
    eps : tuple of float
        The ε grid: distinct values in [0, 1], stored sorted.
    pairs : {'all', 'reference', 'consecutive'}, default 'all'
        Which model pairs are compared; see :meth:`pairs_of`.
    reference : str, optional
        The checkpoint every other model is compared with; required by (and only used with) ``pairs='reference'``,
        and one of the checkpoints when the population lists them.
    simple_matches : SimpleMatchesConfig, default disabled
    cka : bool, default True
        Also compute linear CKA per pair and layer.
    null_baseline : bool, default False
        Also compare untrained networks of the same architecture (one per model of the population, seeds 0, 1,
        … or the training seeds), with the same pairs policy, layers and ε grid: their rows have
        ``population = 'untrained'``.
    center : bool, default False
        Centre activations (subtract each neuron's mean) before matching.
    resources : Resources
        How the work is spread over the cluster (not part of :attr:`config_hash`).
    """

    name: str
    store: StoreConfig
    population: Population
    architecture: Architecture
    probe: ProbeSpec
    layers: tuple[str, ...]
    eps: tuple[float, ...]
    pairs: str = "all"
    reference: str | None = None
    simple_matches: SimpleMatchesConfig = field(default_factory=SimpleMatchesConfig)
    cka: bool = True
    null_baseline: bool = False
    center: bool = False
    resources: Resources = field(default_factory=Resources)

    @classmethod
    def _check(cls, values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        if "name" in values:
            name = checked["name"] = _check_string(values["name"], "name", problems)
            if name is not _INVALID and not _NAME.fullmatch(name):
                problems.append(f"name: use letters, digits and _ . - only, not starting with . or -; got {name!r}")
                checked["name"] = _INVALID
        for key, section in (("store", StoreConfig), ("population", Population), ("architecture", Architecture)):
            if key in values:
                checked[key] = section._read(values[key], problems)
        if "probe" in values:
            checked["probe"] = _read_probe(values["probe"], problems)
        if "layers" in values:
            checked["layers"] = _check_strings(values["layers"], "layers", problems, what="layer selectors",
                                               non_empty=True)
        if "eps" in values:
            checked["eps"] = _check_fractions(values["eps"], "eps", problems, non_empty=True)
        pairs = values["pairs"]
        if pairs in PAIR_POLICIES:
            checked["pairs"] = pairs
        else:
            problems.append(f"pairs: must be one of {', '.join(PAIR_POLICIES)}; got {_shown(pairs)}")
            checked["pairs"] = _INVALID
        checked["reference"] = _check_optional_string(values["reference"], "reference", problems)
        checked["simple_matches"] = SimpleMatchesConfig._read(values["simple_matches"], problems)
        checked["cka"] = _check_bool(values["cka"], "cka", problems)
        checked["null_baseline"] = _check_bool(values["null_baseline"], "null_baseline", problems)
        checked["center"] = _check_bool(values["center"], "center", problems)
        checked["resources"] = Resources._read(values["resources"], problems)
        _check_reference(checked, problems)
        _check_layers(checked, problems)
        _check_probe_fit(checked, problems)
        return checked

    @functools.cached_property
    def layer_names(self) -> tuple[str, ...]:
        """The module names :attr:`layers` select, in network order."""
        return tuple(select_layers(self.architecture.module_tree(), self.layers))

    @property
    def config_hash(self) -> str:
        """16 hex characters identifying everything that determines the study's results.

        The first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys, no spaces) of :meth:`to_dict`
        without ``store``, ``resources`` and ``probe.data_dir`` (where the probe's files live, as in
        :attr:`ProbeSpec.id <raymatch.probes.ProbeSpec.id>`). A ``glob`` population hashes as its pattern, not
        as the checkpoints it matches.
        """
        content = self.to_dict()
        del content["store"], content["resources"], content["probe"]["data_dir"]
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def pairs_of(self, model_ids: Sequence[str]) -> list[tuple[str, str]]:
        """The study's pair policy applied to models in population order.

        Parameters
        ----------
        model_ids : sequence of str
            Distinct ids in population order. With ``pairs='reference'`` they must include :attr:`reference`, so
            pass the checkpoints themselves (or map the reference to its id first).

        Returns
        -------
        list of (str, str)
            ``all``: ``(m[i], m[j])`` for every ``i < j``; ``reference``: ``(reference, m)`` for every other
            ``m``; ``consecutive``: ``(m[i], m[i + 1])``.

        Raises
        ------
        ValueError
            Repeated ids, or a reference that is not among them.
        """
        ids = list(model_ids)
        repeated = sorted({model for model in ids if ids.count(model) > 1})
        if repeated:
            raise ValueError(f"model ids must be distinct; repeated: {', '.join(map(repr, repeated))}")
        reference = None
        if self.pairs == "reference":
            if self.reference not in ids:
                raise ValueError(f"the reference {self.reference!r} is not among the {len(ids)} model ids")
            reference = ids.index(self.reference)
        return [(ids[i], ids[j]) for i, j in pair_positions(self.pairs, len(ids), reference)]


def pair_positions(policy: str, n: int, reference: int | None = None) -> list[tuple[int, int]]:
    """A pairs policy over ``n`` models in population order, as pairs of positions (see :meth:`Study.pairs_of`).

    Parameters
    ----------
    policy : {'all', 'reference', 'consecutive'}
    n : int
        Number of models.
    reference : int, optional
        Position of the reference model; required by ``'reference'``.
    """
    if policy == "all":
        return list(itertools.combinations(range(n), 2))
    if policy == "consecutive":
        return list(itertools.pairwise(range(n)))
    return [(reference, i) for i in range(n) if i != reference]


# ------------------------------------------------------------------------------------------------ study files


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
    """
    if isinstance(source, str) and "\n" in source:
        label, text = _TEXT_LABEL, source
    else:
        label = os.fsdecode(source)
        with open(label, encoding="utf-8") as handle:
            text = handle.read()
    try:
        data = yaml.load(text, Loader=_StudyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as error:
        raise StudyError([_malformed(label, error)]) from None
    if not isinstance(data, Mapping):
        study_fields = ", ".join(item.name for item in dataclasses.fields(Study))
        raise StudyError([f"{label}: the top level must be a mapping of study fields ({study_fields}); got "
                          f"{_kind(data)}"])
    return Study.from_dict(data)
