"""A language-model study (``architecture.source: transformers``): its models, folders, tokenizer and text probe.

The population names its models (``models``, ``glob`` over folders, ``hub`` × ``seeds`` × ``revisions``) or trains
them (``training: {task: causal-lm}``); each model is a ``save_pretrained`` folder or a Hub id resolved in the
offline Hugging Face cache (:mod:`raymatch.models.transformers_source`). Relative folders and files resolve against
:attr:`Study.base <raymatch.study.Study.base>`, the study file's folder: the path fields (``probe.text`` and
``tokenizer``, ``training.corpus`` and ``folder``) when the study is built, ``models`` and ``glob`` here
(:func:`~raymatch.config.resolve_path`: a listed name may be a Hub id). The probe's texts are tokenised with the
population's tokenizer (or ``probe.tokenizer``): the tokenised probe's id is the study's
:attr:`~raymatch.study.Study.probe_id`. Layer names come from a model built from its config on the ``meta`` device
(:func:`raymatch.models.meta.lm_tree`): no weights are loaded here. Reads are remembered while the files are
unchanged, so that the checks and the plan make them once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Loc, resolve_path

if TYPE_CHECKING:
    from ..models import LMModel, ResolvedModel
    from ..probes import ProbeSpec, TextProbe
    from .models import Population, StoreConfig
    from .spec import Study

__all__ = ["NamedModel", "config_json", "is_lm", "lm_few_samples", "lm_layer_names", "lm_tree_of", "make_probe",
           "named_models", "probe_content", "probe_texts", "study_models", "study_text_probe",
           "tokenizer_folder", "training_root"]

@dataclass(frozen=True)
class NamedModel:
    """One language model of a population, with the name the ``models`` table gives it.

    Attributes
    ----------
    model : LMModel
        With a name :func:`~raymatch.models.resolve_model` resolves (an absolute folder, or a Hub id).
    name : str
        A listed folder as written, a globbed folder relative to the glob's folder, a Hub id (``id@revision``),
        or ``seed<k>`` for a model the study trains.
    loc : tuple
        Where a problem of the model is reported (``population.models[1]``, ``population.glob``, …).
    """

    model: LMModel
    name: str
    loc: Loc


def is_lm(values: Mapping[str, Any] | Study) -> bool:
    """Whether a study (or the fields that validated) has a ``source: transformers`` architecture."""
    architecture = values.get("architecture") if isinstance(values, Mapping) else values.architecture
    return architecture is not None and architecture.is_transformers


def _glob_root(pattern: str) -> str:
    """The folders of a pattern before its first wildcard (what globbed names are relative to)."""
    parts = pattern.split("/")
    fixed = next((i for i, part in enumerate(parts) if any(char in part for char in "*?[")), len(parts))
    return "/".join(parts[:fixed]) or "."


def named_models(population: Population, base: str | None) -> list[NamedModel]:
    """The models ``population.models``, ``glob`` or ``hub`` names, in population order; nothing is resolved.

    Raises
    ------
    raymatch.models.ModelSourceError
        A glob matching no folder, a bad Hub pattern, a model listed twice (:func:`~raymatch.models
        .expand_population`'s problems, each naming its field).
    """
    from ..models import expand_population
    from ..models.lm_population import LMModel

    if population.hub is not None:
        models = expand_population(hub=population.hub, seeds=list(population.seeds) or None,
                                   revisions=list(population.revisions) or None)
        return [NamedModel(model, model.label, ("population", "hub")) for model in models]
    if population.glob is not None:
        pattern = resolve_path(base, population.glob)
        root = resolve_path(base, _glob_root(population.glob))
        return [NamedModel(model, os.path.relpath(model.name, root), ("population", "glob"))
                for model in expand_population(glob=pattern)]
    from ..models.lm_population import seed_of

    expand_population(models=list(population.models))  # its problems (a model listed twice …)
    found = []
    for index, name in enumerate(population.models):
        folder = resolve_path(base, name)  # a folder where one is, else a Hub id
        local = os.path.isdir(folder) or name.startswith(("/", ".", "~", "file://")) or name.count("/") > 1
        found.append(NamedModel(LMModel(folder if local else name, None, seed_of(name)), name,
                                ("population", "models", index)))
    return found


def training_root(training: Any, store: StoreConfig, base: str | None, kind: str) -> str | None:
    """The local folder of a trained (``kind='trained'``) or untrained language-model population.

    ``<training.folder>/<kind>-<spec id>``, or the store's ``checkpoints/lm/<kind>-<spec id>`` for a local store;
    None for an ``s3://`` store without ``training.folder`` (``save_pretrained`` folders are local).
    """
    from ..store import layout

    prefix = layout.lm_prefix(kind, training.spec.id)
    if training.spec.folder is not None:
        return os.path.join(resolve_path(base, training.spec.folder), os.path.basename(prefix))
    opened = store.open()
    return opened.path(prefix) if opened.is_local else None


def _trained(training: Any, root: str, group: str) -> list[NamedModel]:
    from ..models.lm_population import LMModel
    from ..train.lm_population import lm_seed_folder

    steps = training.spec.steps if group == "trained" else 0
    return [NamedModel(LMModel(lm_seed_folder(root, seed), None, seed, steps), f"seed{seed}",
                       ("population", "training", "seeds")) for seed in training.seeds]


def study_models(study: Study, group: str = "trained") -> list[NamedModel]:
    """A study's models: those it names, or (``training``) the seeds it trains (``group``: trained or untrained)."""
    population = study.population
    if population.training is None:
        return named_models(population, study.base)
    root = training_root(population.training, study.store, study.base, group)
    if root is None:
        raise ValueError("population.training.folder: required with an s3:// store (the save_pretrained folders "
                         "are local: a folder every Ray worker sees at the same path)")
    return _trained(population.training, root, group)


# ------------------------------------------------------------------------------------------------ cached reads


def _stamp(path: str) -> int:
    """A file's or folder's modification time (0 when absent): a cache key part that changes with the file."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


@functools.lru_cache(maxsize=64)
def _config(folder: str, _stamp: int) -> str:
    from ..models.transformers_source import load_config, resolve_model

    return load_config(resolve_model(folder)).to_json_string()


def config_json(resolved: ResolvedModel) -> str:
    """A resolved model's ``transformers`` config, as JSON (read once while ``config.json`` is unchanged).

    Raises
    ------
    raymatch.models.ModelSourceError
        A ``config.json`` that ``transformers`` cannot read.
    """
    from ..models.transformers_source import load_config

    if resolved.commit is not None:  # a Hub snapshot does not change
        return load_config(resolved).to_json_string()
    return _config(resolved.path, _stamp(os.path.join(resolved.path, "config.json")))


def lm_tree_of(config: str, cls: str):
    """The model a config builds with ``cls``, on the ``meta`` device (:func:`raymatch.models.meta.lm_tree`)."""
    from ..models.meta import lm_tree

    return lm_tree(config, cls)


def _tokenizer_stamps(folder: str) -> tuple[int, ...]:
    from ..probes.tokenizer import TOKENIZER_FILES

    return tuple(_stamp(os.path.join(folder, name)) for name in TOKENIZER_FILES)


@functools.lru_cache(maxsize=64)
def _tokenizer(folder: str, _stamps: tuple[int, ...]):
    from ..probes import load_tokenizer

    return load_tokenizer(folder)


def load_folder_tokenizer(folder: str):
    """The tokenizer of a folder, loaded once while its files are unchanged (:func:`raymatch.probes.load_tokenizer`)."""
    return _tokenizer(folder, _tokenizer_stamps(folder))


def tokenizer_folder(study: Study) -> str | None:
    """The folder of the tokenizer a study's probe is tokenised with, or None while there is none yet.

    ``probe.tokenizer``; else the first model folder that holds a tokenizer; else (a study that trains) its
    shared tokenizer, once trained.
    """
    from ..models import resolve_model
    from ..probes import has_tokenizer
    from ..train.lm_population import TOKENIZER

    if study.probe.tokenizer is not None:
        return resolve_path(study.base, study.probe.tokenizer)
    training = study.population.training
    if training is not None:
        root = training_root(training, study.store, study.base, "trained")
        folder = os.path.join(root, TOKENIZER) if root is not None else None
        return folder if folder is not None and has_tokenizer(folder) else None
    for named in study_models(study):
        path = resolve_model(named.model).path
        if has_tokenizer(path):
            return path
    return None


def text_store_options(store: StoreConfig, text: str) -> dict[str, Any]:
    """The store's S3 endpoint for an ``s3://`` text (credentials come from the environment)."""
    return {"endpoint_url": store.endpoint_url} if text.startswith("s3://") and store.endpoint_url else {}


@functools.lru_cache(maxsize=16)
def _texts(text: str, fmt: str, field: str | None, options: tuple, _stamp: int) -> tuple[str, ...]:
    from ..probes.text import read_texts

    return tuple(read_texts(text, fmt, field, store_options=dict(options)))


def probe_texts(probe: ProbeSpec, store: StoreConfig, base: str | None) -> tuple[str, ...]:
    """Every text of a text probe's file, empty ones included (read once while a local file is unchanged).

    Raises
    ------
    raymatch.probes.TextProbeError
        Naming ``probe.text``, ``probe.format`` or ``probe.field``.
    """
    text = resolve_path(base, probe.text)
    options = tuple(sorted(text_store_options(store, text).items()))
    return _texts(text, probe.format or "lines", probe.field, options, 0 if "://" in text else _stamp(text))


def make_probe(probe: ProbeSpec, texts: Sequence[str], tokenizer: Any, positions: int | None = None,
               model: str = "the model") -> TextProbe:
    """The tokenised probe of a text probe's spec (:func:`raymatch.probes.text.make_text_probe`).

    Raises
    ------
    raymatch.probes.TextProbeError
        Too few non-empty texts (``probe.n_examples``), a ``max_length`` beyond ``positions``.
    """
    from ..probes import RowSample
    from ..probes.text import make_text_probe
    from ..probes.token_rows import TokenRows

    options = probe.tokens
    tokens = TokenRows(special=options.special if options else False, pool=options.pool if options else None,
                       rows=probe.rows if isinstance(probe.rows, RowSample) else None)
    return make_text_probe(probe.text, tokenizer=tokenizer, n_examples=probe.n_examples, seed=probe.seed,
                           max_length=probe.text_max_length, tokens=tokens, positions=positions, model=model,
                           texts=list(texts))


def probe_content(study: Study) -> dict[str, str]:
    """What a text probe's file and tokenizer folder hold, for the config hash: digests, not paths.

    ``text``: the SHA-256 of its texts; ``tokenizer`` (when given): its fingerprint. The population's own tokenizer
    follows from the population (its folders, Hub ids, or the corpus it is trained on).
    """
    import hashlib

    from ..probes import tokenizer_fingerprint
    from ..store.layout import canonical_json

    texts = probe_texts(study.probe, study.store, study.base)
    content = {"text": hashlib.sha256(canonical_json(list(texts)).encode("ascii")).hexdigest()}
    if study.probe.tokenizer is not None:
        content["tokenizer"] = tokenizer_fingerprint(load_folder_tokenizer(resolve_path(study.base,
                                                                                        study.probe.tokenizer)))
    return content


@functools.lru_cache(maxsize=8)
def _text_probe(probe: ProbeSpec, texts: tuple[str, ...], folder: str, _stamps: tuple[int, ...]) -> TextProbe:
    return make_probe(probe, texts, load_folder_tokenizer(folder))


def study_text_probe(study: Study) -> TextProbe | None:
    """A language-model study's tokenised probe, or None while its tokenizer does not exist (a study that trains)."""
    folder = tokenizer_folder(study)
    if folder is None:
        return None
    texts = probe_texts(study.probe, study.store, study.base)
    return _text_probe(study.probe, texts, folder, _tokenizer_stamps(folder))


# ------------------------------------------------------------------------------------------------ layers


def study_config(study: Study) -> str:
    """The config (JSON) a study's layers are selected in: its first model's, or the GPT-2 it trains."""
    from ..models import resolve_model

    training = study.population.training
    if training is not None:
        return training.spec.gpt2_config().to_json_string()
    return config_json(resolve_model(study_models(study)[0].model))


def lm_layer_names(study: Study, selectors: Sequence[Any]) -> tuple[str, ...]:
    """The layer names selectors choose in a language-model study: modules, then ``hidden_states.k``, in order."""
    from ..extract.tokens import token_layers

    return tuple(token_layers(lm_tree_of(study_config(study), study.architecture.model_class), list(selectors)))


def lm_few_samples(study: Study) -> list[tuple[str, int, int, str]]:
    """``(layer, neurons, rows, field to raise)`` for each layer with no more token rows than neurons.

    Empty while the probe's tokenizer does not exist yet, or where no forward pass gives the widths.
    """
    from ..extract.token_shapes import token_layer_widths
    from ..extract.tokens import token_layers

    probe = study_text_probe(study)
    if probe is None:
        return []
    tree = lm_tree_of(study_config(study), study.architecture.model_class)
    widths = token_layer_widths(tree, token_layers(tree, list(study.layers))) or {}
    rows = len(probe.rows(0))
    field = "probe.rows.rows" if probe.tokens.rows is not None else "probe.n_examples"
    return [(layer, width, rows, field) for layer, width in widths.items() if rows <= width]
