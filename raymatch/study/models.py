"""The sections of a study file, as :class:`~raymatch.config.Config` models (the study itself: :mod:`.spec`).

Every field is checked on construction (direct, through ``from_dict`` or :meth:`~raymatch.config.Config.replace`);
the checks between fields (:mod:`raymatch.study.checks`) run on whatever fields validated, and a
:class:`StudyError` lists every problem at once, each under its field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from ..config import (
    Boolean,
    Config,
    ConfigError,
    Loc,
    NonNegativeNumber,
    OptionalNonNegativeInt,
    OptionalPositiveNumber,
    OptionalString,
    PositiveInt,
    checked_by,
    eps_grid,
    one_of,
    strings,
)
from ..extract.import_spec import ActivationImport
from ..store import Store, StoreLocation, layout, parse_uri
from ..train.spec import Training
from . import fields
from .fields import PAIR_POLICIES, Selectors

if TYPE_CHECKING:
    from ..models.architecture import Architecture

__all__ = [
    "PAIR_POLICIES",
    "CrossLayersConfig",
    "Population",
    "Resources",
    "Section",
    "SimpleMatchesConfig",
    "StoreConfig",
    "StoreTimeouts",
    "StudyError",
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


class Section(Config):
    """A study file's section: its problems are a :class:`StudyError`."""

    _error: ClassVar[type[ConfigError]] = StudyError


# ------------------------------------------------------------------------------------------------ sections


class StoreTimeouts(Section):
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

    connect: OptionalPositiveNumber = None
    read: OptionalPositiveNumber = None

    _path: ClassVar[str] = "store.timeouts"


class StoreConfig(Section):
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
    retries: OptionalNonNegativeInt = None

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


class CheckpointOptions(Section):
    """Where a checkpoint file keeps its state dict: ``population.checkpoint``.

    Parameters
    ----------
    key : str, optional
        A dotted path of nested keys (``state_dict``, ``model.ema``) to the state dict.
    strip_prefix : str, optional
        Removed from the start of every parameter name that has it (DDP's ``module.``).
    """

    key: OptionalString = None
    strip_prefix: OptionalString = None

    _path: ClassVar[str] = "population.checkpoint"

    def to_dict(self) -> dict[str, Any]:
        """The keys given.

        Returns
        -------
        dict
        """
        return {key: value for key, value in super().to_dict().items() if value is not None}


class Population(Section):
    """Which trained models a study compares: checkpoints, a glob of store keys, or seeds the study trains itself.

    Give exactly one of ``checkpoints``, ``glob``, ``training`` and ``activations``; a language-model study
    (``architecture.source: transformers``) gives ``models``, ``glob`` (over folders), ``hub`` (with ``seeds`` and
    ``revisions``) or ``training`` (``task: causal-lm``).

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
    models : tuple of str
        Language models: ``save_pretrained`` folders or Hub ids (resolved in the offline Hugging Face cache), at least
        two, in population order. With ``glob`` a language-model study's pattern is over folders.
    hub : str, optional
        A Hub id pattern with ``{seed}`` (``google/multiberts-seed_{seed}``), expanded for every seed in ``seeds``
        and every revision in ``revisions``: one model per seed × revision (:func:`~raymatch.models.expand_population`).
    seeds : tuple of int
        The seeds of ``hub``.
    revisions : tuple of str
        Hub revisions (branches, tags, commits: ``step1000`` is step 1000), in training order: each seed's last one
        is its final model, and the others its training trajectory (``pairs: consecutive`` or ``{reference:
        final}`` along them, within the seed). None: the Hub's ``main``.

    Relative folders (``models``, ``glob`` of a language-model study) resolve against the study file's folder.
    """

    checkpoints: fields.Checkpoints = ()
    glob: fields.GlobPattern = None
    training: Training | None = None
    checkpoint: CheckpointOptions | None = None
    activations: ActivationImport | None = None
    models: fields.ModelNames = ()
    hub: OptionalString = None
    seeds: fields.HubSeeds = ()
    revisions: fields.Revisions = ()

    _path: ClassVar[str] = "population"

    def to_dict(self) -> dict[str, Any]:
        """The fields as in a study file; those added later only when given (older hashes hold).

        Returns
        -------
        dict
        """
        content = super().to_dict()
        for name in ("checkpoint", "activations", "models", "hub", "seeds", "revisions"):
            if not content[name]:
                del content[name]
        return content

    @property
    def lists_models(self) -> bool:
        """Whether the population lists language models (``models`` or ``hub``)."""
        return bool(self.models or self.hub)

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
        hub = values.get("hub", data.get("hub"))
        given = [name for name, value in (("checkpoints", values["checkpoints"]), ("glob", values["glob"]),
                                          ("training", training), ("activations", activations),
                                          ("models", values.get("models", data.get("models"))), ("hub", hub))
                 if value]
        if len(given) > 1:
            keys = "training, activations, models and hub" if {"models", "hub"} & set(given) else \
                "training and activations"
            return [((), f"give one of checkpoints, glob, {keys}, not {' and '.join(given)}")]
        if not given:
            return [((), "give checkpoints (a list of store keys), glob (a pattern of store keys), training "
                         "(seeds and a recipe) or activations (files to import)")]
        unused = [((name,), "only used with hub") for name in ("seeds", "revisions") if values.get(name) and not hub]
        if unused:
            return unused
        for name in ("checkpoints", "models"):
            if len(values.get(name, ())) == 1:
                return [((name,), "a study needs at least 2 models; got 1")]
        if values.get("checkpoint") is not None and (training or activations):
            return [(("checkpoint",), "only used with checkpoints or glob (a trained population's checkpoints are "
                                      "the study's own; imported activations have none)")]
        return []


class SimpleMatchesConfig(Section):
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
    eps: eps_grid(non_empty=False) = ()
    layers: Selectors = ()
    max_neurons: PositiveInt = 256

    _path: ClassVar[str] = "simple_matches"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if values.get("enabled") is not True:
            return []
        return [((name,), "must not be empty when simple matches are enabled") for name in ("eps", "layers")
                if values.get(name) == ()]


class CrossLayersConfig(Section):
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

    layers: strings("layer selectors", non_empty=True)
    within_model: Boolean = False
    pool: one_of("none", "mean") = "none"

    _path: ClassVar[str] = "cross_layers"


class Resources(Section):
    """How a study's work is spread over a Ray cluster; no influence on its results.

    Parameters
    ----------
    gpus_per_actor : float, default 1.0
        GPUs per extraction actor (fractions share a GPU; 0 runs on CPUs).
    cpus_per_task : int, default 1
    pair_block : int, default 4
        Models per block: a match task covers the pairs between two blocks (or within one).
    max_in_flight : int, default 8
        Match tasks submitted at once.
    match_gpus_per_actor : float, default 0
        GPUs per actor of the factor, match and cross stages (fractions share a GPU, ``0.25`` runs four actors on
        one): on a cluster with GPUs their tasks run on GPU actors, the cross products and peels on the GPU in
        float64 (the rows are the CPU's to float64 rounding). 0 keeps them on CPUs; so does a cluster without GPUs
        (one warning line).
    match_kernel : {'batched', 'one_pair'}, default 'batched'
        How a match task computes its curves: the pairs of the task together (``raymatch.match.match_curves``), or
        one pair at a time (``raymatch.match.match_curve``, the kernel before it; the same curves, kept for
        benchmarks).
    """

    gpus_per_actor: NonNegativeNumber = 1.0
    cpus_per_task: PositiveInt = 1
    pair_block: PositiveInt = 4
    max_in_flight: PositiveInt = 8
    match_gpus_per_actor: NonNegativeNumber = 0.0
    match_kernel: one_of("batched", "one_pair") = "batched"

    _path: ClassVar[str] = "resources"


