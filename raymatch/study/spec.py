"""A study: one YAML file that fully describes a population study, as a :class:`~raymatch.config.Config` model.

Every field is checked on construction (direct, through ``from_dict`` or :meth:`~raymatch.config.Config.replace`);
the checks between fields (:mod:`raymatch.study.checks`) run on whatever fields validated, and a
:class:`~raymatch.study.StudyError` lists every problem at once, each under its field path.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field

from ..config import Boolean, Loc, OptionalString, eps_grid, resolve_paths, unresolved_paths
from ..extract.entries import LayerEntries
from ..models.architecture import Architecture
from ..probes import ProbeSpec
from ..store import layout
from . import fields
from .checks import (
    check_architecture_use,
    check_checkpoint_files,
    check_cross_layers,
    check_layers,
    check_measures,
    check_probe_fit,
    check_reference,
    check_trajectory,
)
from .imported import check_imported, check_sources, imported_layer_names
from .lm import is_lm
from .lm_checks import check_lm, check_population_form
from .models import CrossLayersConfig, Population, Resources, Section, SimpleMatchesConfig, StoreConfig

__all__ = ["Study", "pair_positions"]


class Study(Section):
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
        Also compute linear CKA per pair and layer (into ``curves``). ``false`` takes ``cka`` out of ``measures``
        (:attr:`measure_names`).
    measures : tuple of str, default ('max_match', 'cka')
        What each pair gets, any of :data:`~raymatch.study.fields.MEASURE_NAMES`: ``max_match`` (its ε-curve,
        always: it must be listed), ``cka`` (a column of ``curves``), and the standard measures ``cca``,
        ``svcca``, ``pwcca``, ``procrustes`` and ``neuron_corr``, computed in the same pair task from the same
        factors and cross product, into the ``measures`` table (and the per-neuron correlations into
        ``neurons``). Not part of :attr:`config_hash` (its rows carry their measure): a study that adds a
        measure later computes only that measure for the pairs already stored (docs/measures.md).
    svcca_keep : float, default 0.99
        The share of each layer's variance SVCCA keeps, in (0, 1]; ``svcca`` rows carry it (not part of
        :attr:`config_hash`).
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
    base : str, optional
        The absolute folder the study's relative local paths resolve against: :func:`~raymatch.study.load_study`
        sets it to the study file's folder (unless the file gives one) where a path field holds a relative path,
        and for every language-model study. The path fields (``architecture.code``, probe files and data folders,
        imported activations, a training corpus and folder: :mod:`raymatch.config.paths`) are resolved against it
        once, when the study is built; a language-model population's ``models`` and ``glob``, a text probe's
        ``text`` and ``tokenizer`` stay as written and are resolved where they are read
        (:func:`~raymatch.config.resolve_path`). Kept in the study's record, so that ``status``, ``gc`` and
        ``report`` plan the study from any directory; None: the working directory. Not part of
        :attr:`config_hash`, which hashes the paths as written.

    Raises
    ------
    StudyError
        Listing every problem: of each field first, then those between fields (the reference, the layers
        against the architecture, the probe against the architecture and its dataset).
    """

    name: fields.StudyName
    store: StoreConfig
    population: Population
    architecture: Architecture | None = None
    probe: ProbeSpec = Field(default_factory=lambda: ProbeSpec(dataset="imported"))
    layers: LayerEntries
    eps: eps_grid(non_empty=True)
    pairs: fields.PairPolicy = "all"
    reference: OptionalString = None
    simple_matches: SimpleMatchesConfig = Field(default_factory=SimpleMatchesConfig)
    cka: Boolean = True
    measures: fields.Measures = fields.DEFAULT_MEASURES
    svcca_keep: fields.KeepShare = 0.99
    null_baseline: fields.NullBaselines = ()
    center: Boolean = False
    cross_layers: CrossLayersConfig | None = None
    resources: Resources = Field(default_factory=Resources)
    base: fields.BaseFolder = None

    _root: ClassVar[str] = "study"

    @classmethod
    def _collect(cls, data: Any):
        base = data.get("base") if isinstance(data, Mapping) else None
        if isinstance(base, str) and os.path.isabs(base):  # (a bad base is reported as such)
            data = resolve_paths(cls, data, base)
        return super()._collect(data)

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if getattr(values.get("population"), "activations", None) is not None:  # no architecture, no probe run
            return (check_sources(values, data) + check_reference(values) + check_imported(values)
                    + check_measures(values, data))
        if is_lm(values):  # language models: their folders and Hub ids, tokenizers, a text probe
            return (check_sources(values, data) + check_reference(values) + check_population_form(values)
                    + check_lm(values) + check_measures(values, data))
        return (check_sources(values, data) + check_reference(values) + check_checkpoint_files(values)
                + check_measures(values, data)
                + check_architecture_use(values)
                + check_layers(values, data) + check_probe_fit(values) + check_trajectory(values)
                + check_cross_layers(values) + check_population_form(values))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values, as in a study file; ``cross_layers`` only when set.

        Returns
        -------
        dict
        """
        content = super().to_dict()
        for name in ("cross_layers", "base"):
            if content.get(name) is None:
                content.pop(name, None)
        return content

    def anchored(self) -> Study:
        """The study with its relative paths resolved (:attr:`base`: the working directory, unless set).

        What the study record keeps, so that ``raymatch status``, ``gc`` and ``report`` find the study's files from
        any directory; the :attr:`config_hash` is the same.

        Returns
        -------
        Study
        """
        if self.base is not None:
            return self
        content = self.to_dict()
        if not self.is_lm and resolve_paths(type(self), content, os.getcwd()) == content:
            return self
        return type(self).from_dict({**content, "base": os.getcwd()})

    @property
    def measure_names(self) -> tuple[str, ...]:
        """The measures each pair gets: :attr:`measures`, without ``cka`` when ``cka`` is false."""
        return tuple(name for name in self.measures if name != "cka" or self.cka)

    @property
    def table_measures(self) -> tuple[str, ...]:
        """The measures whose rows go to the ``measures`` table: all but ``max_match`` and ``cka`` (``curves``)."""
        return tuple(name for name in self.measure_names if name not in ("max_match", "cka"))

    @property
    def is_lm(self) -> bool:
        """Whether the study compares language models (``architecture.source: transformers``)."""
        return is_lm(self)

    @property
    def text_probe(self):
        """A language-model study's tokenised probe (:class:`~raymatch.probes.TextProbe`), or None.

        None for other studies, and while the tokenizer does not exist yet (a study that trains it). Tokenised once
        while the texts and the tokenizer's files are unchanged (:func:`raymatch.study.lm.study_text_probe`).
        """
        from .lm import study_text_probe

        return study_text_probe(self) if self.is_lm else None

    @property
    def probe_id(self) -> str:
        """The id under which the study's activations are stored: the probe's, or the tokenised text probe's.

        Raises
        ------
        ValueError
            A language-model study whose tokenizer does not exist yet (trained by the study's train stage).
        """
        if not self.is_lm:
            return self.probe.id
        if self.text_probe is None:
            raise ValueError("the probe's tokenizer does not exist yet: the study trains it (raymatch train)")
        return self.text_probe.id

    @property
    def save_every(self) -> int | None:
        """``population.training.save_every``: set, the study compares each seed's training trajectory."""
        training = self.population.training
        return None if training is None else training.save_every

    @functools.cached_property
    def cross_layer_names(self) -> tuple[str, ...]:
        """The module names :attr:`cross_layers` selects, in network order (empty without ``cross_layers``)."""
        return self._selected(self.cross_layers.layers, calls=False) if self.cross_layers is not None else ()

    @functools.cached_property
    def layer_names(self) -> tuple[str, ...]:
        """The layer names :attr:`layers` select, in network order (imported layers: in the files' order).

        A module called k times per forward pass gives ``<name>#0 … <name>#{k-1}``.
        """
        return self._selected(self.layers)

    @functools.cached_property
    def simple_layer_names(self) -> tuple[str, ...]:
        """The layer names ``simple_matches.layers`` select, in network order (``relu#k``: each call)."""
        return self._selected(self.simple_matches.layers)

    def _selected(self, selectors: Sequence[Any], calls: bool = True) -> tuple[str, ...]:
        if self.population.activations is not None:
            return tuple(imported_layer_names(self.population.activations, selectors))
        if self.is_lm:
            from .lm import lm_layer_names

            return lm_layer_names(self, selectors) if selectors else ()
        from ..extract.layers import select_layers
        from ..extract.shapes import layer_calls

        return tuple(select_layers(self.architecture.module_tree(), selectors,
                                   calls=layer_calls(self.architecture, self.probe) if calls else None))

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
        are the same with or without it), ``base`` (local paths are hashed as written, relative ones relative
        to it), ``measures`` and ``svcca_keep`` (the rows of the ``measures`` table carry their measure and SVCCA's
        share; whether ``curves`` has CKA is ``cka``, hashed as whether CKA is among :attr:`measure_names`) — plus
        the version of the mathematics
        (:data:`~raymatch.store.layout.FACTOR_VERSION`). A ``glob`` population hashes as its pattern, not as the
        checkpoints it matches. Rows of another configuration of the same study stay in the store but are never
        shown as the study's (``curves``, ``matches``, ``raymatch status``, reports).
        """
        content = self.to_dict()
        if self.base is not None:  # the paths as written, wherever the file lies
            content = unresolved_paths(type(self), content, content.pop("base"))
        if content["architecture"] is None:  # imported activations
            del content["architecture"]
        if self.probe.from_files:  # the files' bytes, not where they are
            content["probe"]["path"] = self.probe.id
        if self.is_lm:  # the texts' and the tokenizer's content, wherever they are
            from .lm import probe_content

            content["probe"].update(probe_content(self))
            if content["population"].get("training"):  # the corpus's bytes, not its path (nor the folder)
                content["population"]["training"] = {"seeds": list(self.population.training.seeds),
                                                     "spec": self.population.training.spec.id}
        del content["store"], content["resources"], content["probe"]["data_dir"]
        del content["eps"], content["simple_matches"], content["null_baseline"]
        del content["measures"], content["svcca_keep"]
        content["cka"] = "cka" in self.measure_names  # the curves' own column
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
