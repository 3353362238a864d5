"""The sections of a study file and the study itself, as :class:`~raymatch.config.Config` models.

Every field is checked on construction (direct, through ``from_dict`` or :meth:`~raymatch.config.Config.replace`);
the checks between fields (:mod:`raymatch.study.checks`) run on whatever fields validated, and a
:class:`StudyError` lists every problem at once, each under its field path.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError
from pydantic_core import InitErrorDetails
from torch import nn

from ..config import Config, ConfigError, Loc, checked_by, invalid, problem_at, relocated, shown
from ..extract.layers import select_layers
from ..models import build_model
from ..models.factory import ArchitectureError, architecture_digest, build_architecture, code_digest
from ..probes import ProbeSpec
from ..store import Store, StoreLocation, layout, parse_uri
from ..store.store import check_name
from ..train.spec import TrainingSpec, with_recipe_defaults
from . import fields
from .checks import (
    architecture_tree,
    check_architecture_use,
    check_cross_layers,
    check_layers,
    check_probe_fit,
    check_reference,
    check_trajectory,
    layer_calls,
    module_tree,
)
from .entries import CheckpointOptions, LayerEntry, layer_entries
from .fields import PAIR_POLICIES, Boolean, Fractions, OptionalString, PositiveInt, Selectors
from .imported import check_imported, check_sources, imported_layer_names

__all__ = [
    "PAIR_POLICIES",
    "ActivationImport",
    "Architecture",
    "CrossLayersConfig",
    "Population",
    "Resources",
    "SimpleMatchesConfig",
    "StoreConfig",
    "StoreTimeouts",
    "Study",
    "StudyError",
    "Training",
    "pair_positions",
    "untrained_prefix",
]


class StudyError(ConfigError):
    """A study with problems: the message lists every problem found, one per line, each under its field path.

    Parameters
    ----------
    problems : sequence of str
        One line per problem, e.g. ``eps[1]: must lie in [0, 1]; got 1.5``.

    Attributes
    ----------
    problems : list of str
    """


class _Section(Config):
    """A study file's section: its problems are a :class:`StudyError`."""

    _error: ClassVar[type[ConfigError]] = StudyError


# ------------------------------------------------------------------------------------------------ sections


def _optional_seconds(value: Any) -> float | None:
    """Null, or a positive finite number of seconds."""
    return None if value is None else fields.number(positive=True)(value)


def _optional_retries(value: Any) -> int | None:
    """Null, or a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a non-negative integer; got {value!r}")
    return value


OptionalSeconds = Annotated[float | None, Field(gt=0), checked_by(_optional_seconds)]


class StoreTimeouts(_Section):
    """How long a store request waits before it fails (and is retried); null keeps the clients' defaults.

    Parameters
    ----------
    connect : float, optional
        Seconds to open a connection: S3 object calls (s3fs/botocore ``connect_timeout``) and results-table
        requests (delta-rs ``connect_timeout``). Default (null): 5 s for both.
    read : float, optional
        Seconds to wait for an answer: S3 object calls (``read_timeout``, default 15 s) and the whole of a
        results-table request (delta-rs ``timeout``, default 30 s).
    """

    connect: OptionalSeconds = None
    read: OptionalSeconds = None

    _path: ClassVar[str] = "store.timeouts"


class StoreConfig(_Section):
    """Where a study's activations, factors and results live.

    Parameters
    ----------
    uri : str
        A local path or ``file://`` and a path (``file:///data/store``, ``file://./store``; a relative path
        resolves against the working directory of the process that opens the store), or ``s3://bucket/prefix``.
        ``file://host/…`` is refused (it names a host, not a folder), as is a scheme with one slash.
    endpoint_url : str, optional
        An S3-compatible endpoint, for ``s3://`` stores only.
    shared : bool, default False
        For a ``file://`` store on a Ray cluster of more than one node: the folder is on a filesystem every node
        mounts at the same path (NFS, a shared volume). Without it such a run is refused before anything is
        written (:func:`raymatch.engine.cluster.check_store_on_cluster`). Not part of the config hash.
    timeouts : StoreTimeouts
        ``{connect: s, read: s}``: seconds before an S3 request fails (default: the clients' own, see
        :class:`StoreTimeouts`).
    retries : int, optional
        Retries of each failed S3 request (a timeout, a connection refused, a throttled request), with backoff:
        ``n`` tries every object call ``n + 1`` times in all and lets a results-table request retry ``n`` times.
        Default (null): 6 tries of each object call by botocore (``AWS_MAX_ATTEMPTS`` overrides), each of which
        s3fs repeats up to 5 times on a timeout; results-table requests retry up to 20 times within 60 s.

    Notes
    -----
    Credentials never appear here: they come from the standard AWS environment (on a Ray cluster, through the
    job's ``runtime_env``). A key that names one anywhere under ``store`` is a problem.
    """

    uri: Annotated[str, checked_by(fields.store_uri)]
    endpoint_url: Annotated[str | None, checked_by(fields.endpoint)] = None
    shared: Boolean = False
    timeouts: StoreTimeouts = StoreTimeouts()
    retries: Annotated[int | None, Field(ge=0), checked_by(_optional_retries)] = None

    _path: ClassVar[str] = "store"

    @classmethod
    def _key_problems(cls, data: Mapping[Any, Any]) -> list[tuple[Loc, str]]:
        credentials = fields.credential_locs(data)
        flagged = {loc[0] for loc in credentials if len(loc) == 1}
        return [(loc, fields.CREDENTIALS_PROBLEM) for loc in credentials] + super()._key_problems(
            {key: value for key, value in data.items() if key not in flagged})

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        scheme = parse_uri(values["uri"])[0] if "uri" in values else None
        if scheme == "file" and values.get("endpoint_url") is not None:
            return [(("endpoint_url",), "only used with an s3:// store")]
        if scheme == "s3" and values.get("shared"):
            return [(("shared",), "only used with a file:// store (an s3:// store is shared by every node)")]
        return []

    @property
    def location(self) -> StoreLocation:
        """Where the store is and how it is reached (a relative path resolves against the working directory now).

        Returns
        -------
        raymatch.store.StoreLocation
        """
        return StoreLocation.from_uri(self.uri, endpoint_url=self.endpoint_url, connect_timeout=self.timeouts.connect,
                                      read_timeout=self.timeouts.read, retries=self.retries, shared=self.shared)

    def open(self) -> Store:
        """The study's store, with credentials from the environment; nothing is read or written yet.

        Returns
        -------
        raymatch.store.Store
        """
        return Store(self.location)


class Training(_Section):
    """A population the study trains itself: one model per seed, all with one training recipe.

    Parameters
    ----------
    seeds : tuple of int
        Distinct non-negative seeds, at least two; their order is the population order.
    spec : raymatch.train.TrainingSpec
        The recipe and its settings (dataset, epochs, optimiser, held-out split …).
    save_every : int, optional
        Also keep each seed's weights after every ``save_every``-th epoch: its training trajectory, compared
        within the seed (see :attr:`Study.pairs`). Not part of :attr:`Study.config_hash`.

    Notes
    -----
    In a study file the seeds and the spec's fields sit side by side, fields left out taking the recipe's
    defaults (:func:`raymatch.train.recipe`)::

        training: {seeds: [0, 1, 2, 3], recipe: quick, dataset: digits, epochs: 8}
    """

    seeds: Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=2), checked_by(fields.seeds)]
    spec: TrainingSpec
    save_every: Annotated[int | None, Field(ge=1), checked_by(fields.optional_positive_int)] = None

    _path: ClassVar[str] = "population.training"

    @classmethod
    def _collect(cls, data: Any) -> tuple[dict[str, Any], list[InitErrorDetails]]:
        if isinstance(data, Mapping) and isinstance(data.get("spec"), TrainingSpec):
            return super()._collect(data)  # built in code: Training(seeds=..., spec=...)
        if not isinstance(data, Mapping):
            return {}, [problem_at((), "must be a mapping of seeds, recipe and training settings; got "
                                       f"{shown(data)}", data)]
        allowed = ", ".join(("seeds", "save_every", *TrainingSpec.model_fields))
        problems = [problem_at((key,), f"unknown key (allowed: {allowed})", data)
                    for key in data if key not in ("seeds", "save_every") and key not in TrainingSpec.model_fields]
        values: dict[str, Any] = {}
        if "save_every" in data:
            try:
                values["save_every"] = fields.optional_positive_int(data["save_every"])
            except ValueError as error:
                problems.append(problem_at(("save_every",), str(error), data["save_every"]))
        if "seeds" not in data:
            problems.append(problem_at(("seeds",), "required key is missing", data))
        else:
            try:
                values["seeds"] = fields.seeds(data["seeds"])
            except ValueError as error:
                problems.append(problem_at(("seeds",), str(error), data["seeds"]))
        settings = {key: value for key, value in data.items() if key in TrainingSpec.model_fields}
        try:
            values["spec"] = TrainingSpec.model_validate(with_recipe_defaults(settings))
        except ValidationError as error:
            problems += relocated(error)  # the spec's fields sit beside the seeds
        return values, problems

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        spec = TrainingSpec.model_json_schema()
        seeds = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "uniqueItems": True,
                 "description": "Distinct non-negative seeds, one model each, in population order."}
        save_every = {"type": ["integer", "null"], "minimum": 1,
                      "description": "Keep every k-th epoch's weights: the seed's training trajectory."}
        properties = {"seeds": seeds, "save_every": save_every,
                      **{name: {key: value for key, value in schema.items() if key != "default"}
                         for name, schema in spec["properties"].items()}}
        return {"title": "Training", "type": "object", "properties": properties, "required": ["seeds"],
                "additionalProperties": False,
                "description": "Seeds trained with one recipe; fields left out take the recipe's defaults."}

    def to_dict(self) -> dict[str, Any]:
        """The seeds and the spec's fields side by side, as in a study file (``save_every`` only when set).

        Returns
        -------
        dict
        """
        every = {} if self.save_every is None else {"save_every": self.save_every}
        return {"seeds": list(self.seeds), **every, **self.spec.to_dict()}

    def prefix(self, architecture: Architecture) -> str:
        """Store prefix of the trained checkpoints: ``checkpoints/<arch>/trained-<digest of architecture and spec>``.

        Parameters
        ----------
        architecture : Architecture

        Returns
        -------
        str
        """
        return layout.trained_prefix(architecture.name, architecture.to_dict(), self.spec.id)


def untrained_prefix(architecture: Architecture) -> str:
    """Store prefix of the null baseline's initialisation-only checkpoints of ``architecture``.

    Parameters
    ----------
    architecture : Architecture

    Returns
    -------
    str
        ``checkpoints/<arch>/untrained-<digest of the architecture>``.
    """
    return layout.untrained_prefix(architecture.name, architecture.to_dict())


def _model_names(value: Any) -> tuple[str, ...]:
    names = fields.strings("model names", non_empty=False)(value)
    problems = []
    for index, name in enumerate(names):
        try:
            check_name(name, "model name")
        except ValueError as error:
            problems.append(((index,), str(error)))
    if problems:
        raise invalid(problems, value)
    return names


def _import_layout(value: Any) -> str:
    if value not in ("authors-npz", "npy"):
        raise ValueError(f"must be authors-npz or npy; got {shown(value)}")
    return value


def _import_seeds(value: Any) -> tuple[int, ...]:
    return () if value == () else fields.seeds(value)  # () is the default of layout npy


def _path_template(value: Any) -> str | None:
    if value is None:
        return None
    text = fields.string(value)
    if text.count("{model}") != 1 or text.count("{layer}") != 1:
        raise ValueError(f"must hold {{model}} and {{layer}} once each (acts/{{model}}/{{layer}}.npy); got {text!r}")
    return text


class ActivationImport(_Section):
    """Activations computed elsewhere, imported instead of extracted (see :mod:`raymatch.extract.imported`).

    Parameters
    ----------
    layout : {'authors-npz', 'npy'}
        ``authors-npz``: ``<dir>/rnd_<seed>/<prefix>.npz`` per seed, one array per layer, models named
        ``seed<k>``. ``npy``: one ``.npy`` per (model, layer) at ``path`` with ``{model}`` and ``{layer}`` filled in.
    dir, prefix : str
        ``authors-npz`` only.
    seeds : tuple of int
        ``authors-npz`` only: at least two distinct seeds, in population order.
    path : str
        ``npy`` only: a template such as ``acts/{model}/{layer}.npy`` (relative paths resolve against the working
        directory); every file matching it with ``{layer}`` free is a layer.
    models : tuple of str
        ``npy`` only: at least two distinct model names, in population order.
    """

    layout: Annotated[Literal["authors-npz", "npy"], checked_by(_import_layout)]
    dir: OptionalString = None
    prefix: OptionalString = None
    seeds: Annotated[tuple[Annotated[int, Field(ge=0)], ...], checked_by(_import_seeds)] = ()
    path: Annotated[str | None, checked_by(_path_template)] = None
    models: Annotated[Selectors, checked_by(_model_names)] = ()

    _path: ClassVar[str] = "population.activations"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        kind = values.get("layout")
        if kind is None:
            return []
        needed = ("dir", "prefix", "seeds") if kind == "authors-npz" else ("path", "models")
        problems: list[tuple[Loc, str]] = [((key,), f"required with layout {kind}") for key in needed
                                           if not data.get(key)]
        problems += [((key,), f"not used with layout {kind} (it uses {', '.join(needed)})")
                     for key, info in cls.model_fields.items()
                     if key not in ("layout", *needed) and values.get(key) not in (None, info.default)]
        if kind == "npy" and len(values.get("models", ())) == 1:
            problems.append((("models",), "a study needs at least 2 models; got 1"))
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The fields of the layout, as in a study file.

        Returns
        -------
        dict
        """
        needed = ("dir", "prefix", "seeds") if self.layout == "authors-npz" else ("path", "models")
        return {key: value for key, value in super().to_dict().items() if key in ("layout", *needed)}

    @property
    def model_names(self) -> list[str]:
        """The models in population order: ``seed<k>`` (``authors-npz``) or the listed names (``npy``)."""
        return [f"seed{seed}" for seed in self.seeds] if self.layout == "authors-npz" else list(self.models)


class Population(_Section):
    """Which trained models a study compares: checkpoints, a glob of store keys, or seeds the study trains itself.

    Give exactly one of ``checkpoints``, ``glob`` and ``training``.

    Parameters
    ----------
    checkpoints : tuple of str
        Checkpoint store keys (``checkpoints/tiny/seed0.safetensors``), absolute paths or URIs: at least two, all
        distinct. Their order is the population order (``pairs: consecutive`` pairs neighbours in it).
    glob : str, optional
        A pattern of store keys (``checkpoints/vgg11/*.safetensors``), resolved against the store when the study
        runs.
    training : Training, optional
        Models the study trains itself: seeds of the architecture trained with a recipe (see
        :mod:`raymatch.train`); their checkpoints are stored under :meth:`Training.prefix`.
    checkpoint : CheckpointOptions, optional
        Where the checkpoint files keep their state dict (``key``, a dotted path) and a prefix to strip from
        its names (``strip_prefix``, e.g. DDP's ``module.``). With either given, a model's id is the digest of the
        unwrapped state dict (:func:`~raymatch.models.checkpoint.model_id_of`).
    activations : ActivationImport, optional
        Activations computed elsewhere, imported into the store: no architecture, no probe to run.
    """

    checkpoints: Annotated[Selectors, checked_by(fields.checkpoints)] = ()
    glob: Annotated[str | None, checked_by(fields.glob_pattern)] = None
    training: Training | None = None
    checkpoint: CheckpointOptions | None = None
    activations: ActivationImport | None = None

    _path: ClassVar[str] = "population"

    def to_dict(self) -> dict[str, Any]:
        """The fields as in a study file; ``checkpoint`` and ``activations`` only when given (older hashes hold).

        Returns
        -------
        dict
        """
        content = super().to_dict()
        for name in ("checkpoint", "activations"):
            if content[name] is None:
                del content[name]
        return content

    @property
    def checkpoint_options(self) -> dict[str, Any]:
        """``population.checkpoint`` as keyword arguments of :func:`~raymatch.models.checkpoint.load_state_dict`."""
        return self.checkpoint.to_dict() if self.checkpoint is not None else {}

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if "checkpoints" not in values or "glob" not in values:
            return []
        training = values["training"] if "training" in values else data.get("training")
        activations = values["activations"] if "activations" in values else data.get("activations")
        given = [name for name, value in (("checkpoints", values["checkpoints"]), ("glob", values["glob"]),
                                          ("training", training), ("activations", activations)) if value]
        if len(given) > 1:
            return [((), f"give one of checkpoints, glob, training and activations, not {' and '.join(given)}")]
        if not given:
            return [((), "give checkpoints (a list of store keys), glob (a pattern of store keys), training "
                         "(seeds and a recipe) or activations (files to import)")]
        if len(values["checkpoints"]) == 1:
            return [(("checkpoints",), "a study needs at least 2 models; got 1")]
        if values.get("checkpoint") is not None and (training or activations):
            return [(("checkpoint",), "only used with checkpoints or glob (a trained population's checkpoints are "
                                      "the study's own; imported activations have none)")]
        return []


class Architecture(_Section):
    """The architecture every model of the population shares: a model of the zoo, of torchvision or timm, or a factory.

    Give ``name`` (a zoo model, or one of ``source``) or ``factory``.

    Parameters
    ----------
    name : str, optional
        One of :func:`~raymatch.models.available_models` (or ``plain{depth}``); with ``source``, a torchvision or
        timm model name.
    in_channels : int, default 3
    num_classes : int, default 10
    width : float, default 1.0
        Channel multiplier.
    input_size : int, default 32
        Height (= width) of the input images. The four size parameters are the zoo's only.
    source : {'zoo', 'torchvision', 'timm'}, optional
        Where ``name`` comes from (default the zoo); built without pretrained weights.
    factory : str, optional
        ``module:callable`` returning an ``nn.Module`` (``mypkg.nets:make_net``).
    kwargs : dict, optional
        Keyword arguments of the factory or of the torchvision/timm builder (written ``kwargs`` in a study file;
        :attr:`kwargs` is the zoo's size parameters, :attr:`call_kwargs` these).
    code : str, optional
        A local package folder holding the factory's module, shipped to every Ray worker (runtime_env
        ``py_modules``); a relative path resolves against the working directory. Its files' digest, not its
        path, is part of the config hash.
    """

    name: OptionalString = None
    in_channels: PositiveInt = 3
    num_classes: PositiveInt = 10
    width: Annotated[float, Field(gt=0), checked_by(fields.number(positive=True))] = 1.0
    input_size: PositiveInt = 32
    source: Annotated[Literal["zoo", "torchvision", "timm"] | None, checked_by(fields.architecture_source)] = None
    factory: OptionalString = None
    call_kwargs: Annotated[dict[str, Any] | None, checked_by(fields.keyword_arguments)] = None
    code: OptionalString = None

    _path: ClassVar[str] = "architecture"
    #: Field name → study-file key where they differ.
    _keys: ClassVar[dict[str, str]] = {"call_kwargs": "kwargs"}
    _zoo_sizes: ClassVar[tuple[str, ...]] = ("in_channels", "num_classes", "width", "input_size")

    def __hash__(self) -> int:
        return hash(layout.canonical_json(self.to_dict()))

    @classmethod
    def _collect(cls, data: Any) -> tuple[dict[str, Any], list[InitErrorDetails]]:
        if isinstance(data, Mapping) and "call_kwargs" not in data and "kwargs" in data:
            data = {("call_kwargs" if key == "kwargs" else key): value for key, value in data.items()}
        values, problems = super()._collect(data)
        for problem in problems:
            loc = tuple(problem.get("loc", ()))
            if loc[:1] == ("call_kwargs",):
                problem["loc"] = ("kwargs", *loc[1:])
        return values, problems

    @classmethod
    def _key_problems(cls, data: Mapping[Any, Any]) -> list[tuple[Loc, str]]:
        allowed = ", ".join(cls._keys.get(name, name) for name in cls.model_fields)
        return [((key,), f"unknown key (allowed: {allowed})") for key in data if key not in cls.model_fields]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler.resolve_ref_schema(handler(core_schema))
        properties = schema.get("properties", {})
        if "call_kwargs" in properties:
            properties["call_kwargs"] = {**properties["call_kwargs"], "title": "Kwargs"}
            schema["properties"] = {cls._keys.get(key, key): value for key, value in properties.items()}
        return schema

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if len(values) < len(cls.model_fields):
            return []
        if values["factory"] is None and values["name"] is None:
            return [(("name",), "required key is missing")]
        if values["factory"] is not None and values["name"] is not None:
            return [(("factory",), "give name or factory, not both")]
        zoo = values["factory"] is None and values["source"] in (None, "zoo")
        problems: list[tuple[Loc, str]] = []
        if zoo:
            problems += [((key,), "only used with factory or source: torchvision|timm") for key in
                         ("kwargs", "code") if values[cls._field(key)] is not None]
        else:
            problems += [((key,), "a size parameter of the zoo's models: give it in kwargs") for key in
                         cls._zoo_sizes if values[key] != cls.model_fields[key].default]
            if values["factory"] is None and values["code"] is not None:
                problems.append((("code",), "only used with factory"))
            if values["factory"] is not None and values["source"] is not None:
                problems.append((("source",), "only used with name"))
        if problems:
            return problems
        try:
            if zoo:
                module_tree(values["name"], **{key: values[key] for key in cls._zoo_sizes})
            else:
                architecture_tree(layout.canonical_json(cls._content(values)))
        except ArchitectureError as error:
            return [((error.field,), error.message)]
        except ValueError as error:
            return [(("name",), str(error))]
        return []

    @classmethod
    def _field(cls, key: str) -> str:
        return next((name for name, written in cls._keys.items() if written == key), key)

    @classmethod
    def _content(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The study-file content of validated fields: the zoo's sizes for a zoo model, the new keys otherwise."""
        if values["factory"] is None and values["source"] in (None, "zoo"):
            content = {"name": values["name"], **{key: values[key] for key in cls._zoo_sizes}}
            if values["source"] is not None:
                content["source"] = values["source"]
            return content
        return {cls._keys.get(key, key): values[key] for key in ("name", "source", "factory", "call_kwargs", "code")
                if values[key] is not None}

    def to_dict(self) -> dict[str, Any]:
        """The fields as in a study file: a zoo model as before (name and sizes), others by the keys given.

        Returns
        -------
        dict
        """
        return self._content({name: getattr(self, name) for name in type(self).model_fields})

    @property
    def is_zoo(self) -> bool:
        """Whether the architecture is a model of raymatch's zoo (trainable by the study, with a null baseline)."""
        return self.factory is None and self.source in (None, "zoo")

    @property
    def label(self) -> str:
        """What to call the architecture: the zoo name, ``torchvision:resnet18``, or the factory."""
        if self.factory is not None:
            return self.factory
        return self.name if self.is_zoo else f"{self.source}:{self.name}"

    @property
    def spec(self) -> dict[str, Any] | None:
        """What a Ray worker builds the model from (:func:`~raymatch.models.factory.build_architecture`).

        None for the zoo (built from :attr:`name` and :attr:`kwargs`).
        """
        return None if self.is_zoo else self.to_dict()

    @functools.cached_property
    def digest(self) -> str | None:
        """:func:`~raymatch.models.factory.architecture_digest`: what, besides the weights, makes a model's id.

        None for the zoo (its models' ids are their weights' digests, as they always were).
        """
        return architecture_digest(self.spec)

    @functools.cached_property
    def code_digest(self) -> str | None:
        """:func:`~raymatch.models.factory.code_digest` of :attr:`code` (read once), or None without code."""
        return code_digest(self.code) if self.code else None

    @property
    def runtime_env(self) -> dict[str, Any]:
        """The Ray runtime_env the workers need: ``py_modules`` with :attr:`code` (absolute), or empty."""
        return {"py_modules": [os.path.abspath(self.code)]} if self.code else {}

    def build(self) -> nn.Module:
        """A freshly initialised model (weights from the global RNG), via :func:`~raymatch.models.build_model`.

        Returns
        -------
        torch.nn.Module
        """
        if not self.is_zoo:
            return build_architecture(self.to_dict(), use_code_path=True)
        return build_model(self.name, **self.kwargs)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The size parameters, as keyword arguments of :func:`~raymatch.models.build_model`."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width,
                "input_size": self.input_size}

    def module_tree(self) -> nn.Module:
        """The architecture's modules on the ``meta`` device (no weights), shared between calls: do not modify.

        Returns
        -------
        torch.nn.Module
        """
        if not self.is_zoo:
            return architecture_tree(layout.canonical_json(self.to_dict()))
        return module_tree(self.name, **self.kwargs)


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

    enabled: Boolean = False
    eps: Annotated[Fractions, checked_by(fields.fractions(non_empty=False))] = ()
    layers: Annotated[Selectors, checked_by(fields.strings("layer selectors", non_empty=False))] = ()
    max_neurons: PositiveInt = 256

    _path: ClassVar[str] = "simple_matches"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if values.get("enabled") is not True:
            return []
        return [((name,), "must not be empty when simple matches are enabled") for name in ("eps", "layers")
                if values.get(name) == ()]


class CrossLayersConfig(_Section):
    """Which layers a study also compares across: layer i of model a against layer j of model b.

    Parameters
    ----------
    layers : tuple of str
        Layer selectors, all within the study's layers; at least two layers selected.
    within_model : bool, default False
        Also compare each model's layers among themselves (a = b, i < j).
    pool : {'none', 'mean'}, default 'none'
        ``'mean'``: conv layers are compared through their global average over positions, one row per example
        (an extra per-example matrix extracted as ``<layer>@mean``), so that any two layers share their rows.
        ``'none'``: two layers are compared over their stored rows only when these coincide (per-example
        layers; conv layers of the same spatial shape and row samples); any other pair is refused at plan time.
    """

    layers: Annotated[Selectors, Field(min_length=1), checked_by(fields.strings("layer selectors", non_empty=True))]
    within_model: Boolean = False
    pool: Annotated[Literal["none", "mean"], checked_by(fields.cross_pool)] = "none"

    _path: ClassVar[str] = "cross_layers"


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

    gpus_per_actor: Annotated[float, Field(ge=0), checked_by(fields.number(positive=False))] = 1.0
    cpus_per_task: PositiveInt = 1
    pair_block: PositiveInt = 4
    max_in_flight: PositiveInt = 8

    _path: ClassVar[str] = "resources"


# ------------------------------------------------------------------------------------------------ the study


class Study(_Section):
    """One population study: everything that determines its results, and how it runs.

    Every field is checked on construction (direct, through :meth:`from_dict` or :meth:`replace`); a
    :class:`StudyError` lists every problem found. Sections may be given as mappings of their fields.

    Parameters
    ----------
    name : str
        Letters, digits and ``_ . -``, not starting with ``.`` or ``-``: it becomes part of store keys.
    store : StoreConfig
    population : Population
    architecture : Architecture, optional
        Required, except for a study importing its activations (``population.activations``), which has none.
    probe : ProbeSpec
        The inputs every model is fed, and the activation rows kept. Optional with ``population.activations``:
        then ``{dataset: imported}`` (with ``rows`` to sample conv layers), nothing being fed.
    layers : tuple of str
        Layer selectors (module names, globs, or types such as ``relu``), each picking at least one module of
        the architecture; see :func:`~raymatch.extract.select_layers` and :attr:`layer_names`.
    eps : tuple of float
        The ε grid: distinct values in [0, 1], stored sorted.
    pairs : {'all', 'reference', 'consecutive'} or {'reference': 'final'}, default 'all'
        Which model pairs are compared; see :meth:`pairs_of`. With ``population.training.save_every`` the saved
        epochs of each seed are also compared *within the seed* (population ``trajectory``): ``consecutive``
        pairs epoch e with e + k, ``{reference: final}`` each saved epoch with the seed's final (selected)
        weights, ``all`` every two of them; the final models are still compared across seeds with the policy
        (``all`` for ``{reference: final}``). ``{reference: final}`` needs ``save_every``; ``reference`` (a
        seed) is refused with it.
    reference : str, optional
        The checkpoint every other model is compared with; required by (and only used with) ``pairs='reference'``,
        and one of the checkpoints when the population lists them.
    simple_matches : SimpleMatchesConfig, default disabled
    cka : bool, default True
        Also compute linear CKA per pair and layer.
    null_baseline : tuple of {'untrained', 'permuted'}, default ()
        Null baselines beside the trained population (``true`` means ``('untrained',)``, ``false`` none).
        ``untrained``: untrained networks of the same architecture (one per model of the population, seeds 0, 1,
        … or the training seeds), with the same pairs policy, layers and ε grid: their rows have
        ``population = 'untrained'``. ``permuted``: the trained pairs again with model b's activation rows
        permuted by a fixed seed (:data:`~raymatch.engine.tasks.PERMUTATION_SEED`), same spectra and no sample
        correspondence: rows with ``population = 'permuted'``.
    center : bool, default False
        Centre activations (subtract each neuron's mean) before matching.
    cross_layers : CrossLayersConfig, optional
        Also compare different layers (table ``cross_curves``); not part of :attr:`config_hash`.
    resources : Resources
        How the work is spread over the cluster (not part of :attr:`config_hash`).

    Raises
    ------
    StudyError
        Listing every problem: of each field first, then those between fields (the reference, the layers
        against the architecture, the probe against the architecture and its dataset).
    """

    name: Annotated[str, Field(pattern=f"^{fields.NAME}$"), checked_by(fields.study_name)]
    store: StoreConfig
    population: Population
    architecture: Architecture | None = None
    probe: ProbeSpec = Field(default_factory=lambda: ProbeSpec(dataset="imported"))
    layers: Annotated[tuple[str | LayerEntry, ...], Field(min_length=1), checked_by(layer_entries(non_empty=True))]
    eps: Annotated[Fractions, Field(min_length=1), checked_by(fields.fractions(non_empty=True))]
    pairs: Annotated[Literal["all", "reference", "consecutive"] | dict[str, str],
                     checked_by(fields.pair_policy_or_final)] = "all"
    reference: OptionalString = None
    simple_matches: SimpleMatchesConfig = Field(default_factory=SimpleMatchesConfig)
    cka: Boolean = True
    null_baseline: fields.NullBaselines = ()
    center: Boolean = False
    cross_layers: CrossLayersConfig | None = None
    resources: Resources = Field(default_factory=Resources)

    _root: ClassVar[str] = "study"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if getattr(values.get("population"), "activations", None) is not None:  # no architecture, no probe run
            return check_sources(values, data) + check_reference(values) + check_imported(values)
        return (check_sources(values, data) + check_reference(values) + check_architecture_use(values)
                + check_layers(values) + check_probe_fit(values) + check_trajectory(values)
                + check_cross_layers(values))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values, as in a study file; ``cross_layers`` only when set.

        Returns
        -------
        dict
        """
        content = super().to_dict()
        if content.get("cross_layers") is None:
            content.pop("cross_layers", None)
        return content

    @property
    def save_every(self) -> int | None:
        """``population.training.save_every``: set, the study compares each seed's training trajectory."""
        training = self.population.training
        return None if training is None else training.save_every

    @functools.cached_property
    def cross_layer_names(self) -> tuple[str, ...]:
        """The module names :attr:`cross_layers` selects, in network order (empty without ``cross_layers``)."""
        if self.cross_layers is None:
            return ()
        return tuple(select_layers(self.architecture.module_tree(), self.cross_layers.layers))

    @functools.cached_property
    def layer_names(self) -> tuple[str, ...]:
        """The layer names :attr:`layers` select, in network order (imported layers: in the files' order).

        A module called k times per forward pass gives ``<name>#0 … <name>#{k-1}``.
        """
        if self.population.activations is not None:
            return tuple(imported_layer_names(self.population.activations, self.layers))
        return tuple(select_layers(self.architecture.module_tree(), self.layers,
                                   calls=layer_calls(self.architecture, self.probe)))

    @functools.cached_property
    def simple_layer_names(self) -> tuple[str, ...]:
        """The layer names ``simple_matches.layers`` select, in network order."""
        if self.population.activations is not None:
            return tuple(imported_layer_names(self.population.activations, self.simple_matches.layers))
        return tuple(select_layers(self.architecture.module_tree(), self.simple_matches.layers,
                                   calls=layer_calls(self.architecture, self.probe)))  # relu#k: each call

    @property
    def config_hash(self) -> str:
        """16 hex characters identifying everything that determines the numbers of the study's rows.

        The :func:`~raymatch.store.layout.digest` (first 16 hex digits of the SHA-256 of the canonical JSON) of
        :meth:`to_dict` without what does not change a stored row — ``store``, ``resources``, ``probe.data_dir``
        (where the probe's files live, as in :attr:`ProbeSpec.id <raymatch.probes.ProbeSpec.id>`), ``eps`` (a row
        holds the pair's whole ε-curve: any ε is a query), ``simple_matches`` (its rows carry their ε and search
        settings in their task id), ``null_baseline`` (its rows carry ``population = 'untrained'`` or
        ``'permuted'``), ``cross_layers`` (its rows, in ``cross_curves``, carry their layers and pooling) and
        ``population.training.save_every`` (its rows carry ``population = 'trajectory'``; the selected checkpoints
        are the same with or without it) — plus the version of the mathematics
        (:data:`~raymatch.store.layout.FACTOR_VERSION`). A ``glob`` population hashes as its pattern, not as the
        checkpoints it matches. Rows of another configuration of the same study stay in the store but are never
        shown as the study's (``curves``, ``matches``, ``raymatch status``, reports).
        """
        content = self.to_dict()
        if content["architecture"] is None:  # imported activations
            del content["architecture"]
        if self.probe.from_files:  # the files' bytes, not where they are
            content["probe"]["path"] = self.probe.id
        del content["store"], content["resources"], content["probe"]["data_dir"]
        del content["eps"], content["simple_matches"], content["null_baseline"]
        if self.architecture is not None and self.architecture.code:  # its content decides the numbers, not its folder
            content["architecture"]["code"] = self.architecture.code_digest
        content.pop("cross_layers", None)  # its rows (cross_curves) carry their layers and pooling
        if content["population"].get("training"):  # trajectory rows carry population 'trajectory'
            content["population"]["training"].pop("save_every", None)
        content["math_version"] = layout.FACTOR_VERSION
        return layout.digest(content)

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

    Returns
    -------
    list of (int, int)
    """
    if policy == "all":
        return list(itertools.combinations(range(n), 2))
    if policy == "consecutive":
        return list(itertools.pairwise(range(n)))
    return [(reference, i) for i in range(n) if i != reference]
