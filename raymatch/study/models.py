"""The sections of a study file and the study itself, as :class:`~raymatch.config.Config` models.

Every field is checked on construction (direct, through ``from_dict`` or :meth:`~raymatch.config.Config.replace`);
the checks between fields (:mod:`raymatch.study.checks`) run on whatever fields validated, and a
:class:`StudyError` lists every problem at once, each under its field path.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError
from pydantic_core import InitErrorDetails
from torch import nn

from ..config import Config, ConfigError, Loc, checked_by, problem_at, relocated, shown
from ..extract.layers import select_layers
from ..models import build_model
from ..probes import ProbeSpec
from ..store import Store, layout
from ..train.spec import TrainingSpec, with_recipe_defaults
from . import fields
from .checks import check_layers, check_probe_fit, check_reference, module_tree
from .fields import PAIR_POLICIES, Boolean, Fractions, OptionalString, PositiveInt, Selectors

__all__ = [
    "PAIR_POLICIES",
    "Architecture",
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
        A local path, ``file://…`` (a relative path resolves against the working directory of the process that
        opens the store), or ``s3://bucket/prefix``.
    endpoint_url : str, optional
        An S3-compatible endpoint, for ``s3://`` stores only.
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
        if "uri" in values and values.get("endpoint_url") is not None and fields.scheme(values["uri"]) == "file":
            return [(("endpoint_url",), "only used with an s3:// store")]
        return []

    def open(self) -> Store:
        """The study's store, with credentials from the environment; nothing is read or written yet.

        Returns
        -------
        raymatch.store.Store
        """
        return Store(self.uri, endpoint_url=self.endpoint_url, connect_timeout=self.timeouts.connect,
                     read_timeout=self.timeouts.read, retries=self.retries)


class Training(_Section):
    """A population the study trains itself: one model per seed, all with one training recipe.

    Parameters
    ----------
    seeds : tuple of int
        Distinct non-negative seeds, at least two; their order is the population order.
    spec : raymatch.train.TrainingSpec
        The recipe and its settings (dataset, epochs, optimiser, held-out split …).

    Notes
    -----
    In a study file the seeds and the spec's fields sit side by side, fields left out taking the recipe's
    defaults (:func:`raymatch.train.recipe`)::

        training: {seeds: [0, 1, 2, 3], recipe: quick, dataset: digits, epochs: 8}
    """

    seeds: Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=2), checked_by(fields.seeds)]
    spec: TrainingSpec

    _path: ClassVar[str] = "population.training"

    @classmethod
    def _collect(cls, data: Any) -> tuple[dict[str, Any], list[InitErrorDetails]]:
        if isinstance(data, Mapping) and isinstance(data.get("spec"), TrainingSpec):
            return super()._collect(data)  # built in code: Training(seeds=..., spec=...)
        if not isinstance(data, Mapping):
            return {}, [problem_at((), "must be a mapping of seeds, recipe and training settings; got "
                                       f"{shown(data)}", data)]
        allowed = ", ".join(("seeds", *TrainingSpec.model_fields))
        problems = [problem_at((key,), f"unknown key (allowed: {allowed})", data)
                    for key in data if key != "seeds" and key not in TrainingSpec.model_fields]
        values: dict[str, Any] = {}
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
        properties = {"seeds": seeds, **{name: {key: value for key, value in schema.items() if key != "default"}
                                          for name, schema in spec["properties"].items()}}
        return {"title": "Training", "type": "object", "properties": properties, "required": ["seeds"],
                "additionalProperties": False,
                "description": "Seeds trained with one recipe; fields left out take the recipe's defaults."}

    def to_dict(self) -> dict[str, Any]:
        """The seeds and the spec's fields side by side, as in a study file.

        Returns
        -------
        dict
        """
        return {"seeds": list(self.seeds), **self.spec.to_dict()}

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
    """

    checkpoints: Annotated[Selectors, checked_by(fields.checkpoints)] = ()
    glob: Annotated[str | None, checked_by(fields.glob_pattern)] = None
    training: Training | None = None

    _path: ClassVar[str] = "population"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if "checkpoints" not in values or "glob" not in values:
            return []
        training = values["training"] if "training" in values else data.get("training")
        given = [name for name, value in (("checkpoints", values["checkpoints"]), ("glob", values["glob"]),
                                          ("training", training)) if value]
        if len(given) > 1:
            return [((), f"give one of checkpoints, glob and training, not {' and '.join(given)}")]
        if not given:
            return [((), "give checkpoints (a list of store keys), glob (a pattern of store keys) or training "
                         "(seeds and a recipe)")]
        if len(values["checkpoints"]) == 1:
            return [(("checkpoints",), "a study needs at least 2 models; got 1")]
        return []


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

    name: Annotated[str, checked_by(fields.string)]
    in_channels: PositiveInt = 3
    num_classes: PositiveInt = 10
    width: Annotated[float, Field(gt=0), checked_by(fields.number(positive=True))] = 1.0
    input_size: PositiveInt = 32

    _path: ClassVar[str] = "architecture"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if len(values) < len(cls.model_fields):
            return []
        try:
            module_tree(**values)
        except ValueError as error:
            return [(("name",), str(error))]
        return []

    def build(self) -> nn.Module:
        """A freshly initialised model (weights from the global RNG), via :func:`~raymatch.models.build_model`.

        Returns
        -------
        torch.nn.Module
        """
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

    Raises
    ------
    StudyError
        Listing every problem: of each field first, then those between fields (the reference, the layers
        against the architecture, the probe against the architecture and its dataset).
    """

    name: Annotated[str, Field(pattern=f"^{fields.NAME}$"), checked_by(fields.study_name)]
    store: StoreConfig
    population: Population
    architecture: Architecture
    probe: ProbeSpec
    layers: Annotated[Selectors, Field(min_length=1), checked_by(fields.strings("layer selectors", non_empty=True))]
    eps: Annotated[Fractions, Field(min_length=1), checked_by(fields.fractions(non_empty=True))]
    pairs: Annotated[Literal["all", "reference", "consecutive"], checked_by(fields.pair_policy)] = "all"
    reference: OptionalString = None
    simple_matches: SimpleMatchesConfig = Field(default_factory=SimpleMatchesConfig)
    cka: Boolean = True
    null_baseline: Boolean = False
    center: Boolean = False
    resources: Resources = Field(default_factory=Resources)

    _root: ClassVar[str] = "study"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        return check_reference(values) + check_layers(values) + check_probe_fit(values)

    @functools.cached_property
    def layer_names(self) -> tuple[str, ...]:
        """The module names :attr:`layers` select, in network order."""
        return tuple(select_layers(self.architecture.module_tree(), self.layers))

    @property
    def config_hash(self) -> str:
        """16 hex characters identifying everything that determines the numbers of the study's rows.

        The :func:`~raymatch.store.layout.digest` (first 16 hex digits of the SHA-256 of the canonical JSON) of
        :meth:`to_dict` without what does not change a stored row — ``store``, ``resources``, ``probe.data_dir``
        (where the probe's files live, as in :attr:`ProbeSpec.id <raymatch.probes.ProbeSpec.id>`), ``eps`` (a row
        holds the pair's whole ε-curve: any ε is a query), ``simple_matches`` (its rows carry their ε and search
        settings in their task id) and ``null_baseline`` (its rows carry ``population = 'untrained'``) — plus the
        version of the mathematics (:data:`~raymatch.store.layout.FACTOR_VERSION`). A ``glob`` population hashes
        as its pattern, not as the checkpoints it matches. Rows of another configuration of the same study stay in
        the store but are never shown as the study's (``curves``, ``matches``, ``raymatch status``, reports).
        """
        content = self.to_dict()
        del content["store"], content["resources"], content["probe"]["data_dir"]
        del content["eps"], content["simple_matches"], content["null_baseline"]
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
