"""The checks of a language-model study, before anything runs: models, classes, layers, tokenizers, the text probe.

Each problem is one line under its field: a folder without weights, a Hub id not in the offline cache, a revision
the cache does not hold (``population.…``); a class that cannot build a model (``architecture.class``); a selector
that matches no module, with the closest module paths (``layers[i]``); models whose tokenizers differ, named
(``population``); a text with fewer non-empty texts than ``n_examples``, a ``max_length`` beyond a model's
positions, more rows than real tokens (``probe.…``). Nothing loads weights: models are built from their configs on
the ``meta`` device (:mod:`raymatch.study.lm`).
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Mapping
from typing import Any

from ..config import Loc, resolve_path
from .fields import store_glob_problem
from .lm import (
    config_json,
    is_lm,
    lm_tree_of,
    load_folder_tokenizer,
    make_probe,
    named_models,
    probe_texts,
    training_root,
)

__all__ = ["check_lm", "check_population_form"]

Problems = list[tuple[Loc, str]]


def _after(message: str, prefix: str) -> str:
    """``message`` without a leading ``prefix: `` (a field path the problem's location already says)."""
    return message.split(": ", 1)[1] if message.startswith(f"{prefix}: ") or message.startswith(f"{prefix}[") \
        else message


def _located(message: str, default: Loc) -> tuple[Loc, str]:
    """A problem worded ``field.path: message`` by the library, located at that field (else at ``default``)."""
    field, _, rest = message.partition(": ")
    if rest and re.fullmatch(r"[a-z_]+(\.[a-z_]+)*(\[\d+\])?", field):
        parts: list[str | int] = []
        for part in field.split("."):
            name, _, index = part.partition("[")
            parts += [name, int(index.rstrip("]"))] if index else [name]
        return tuple(parts), rest
    return default, message


def check_population_form(values: Mapping[str, Any]) -> Problems:
    """The population keys that go with the architecture: language models' (``source: transformers``) or others'.

    Problems located at ``population.…``.
    """
    population = values.get("population")
    if population is None:
        return []
    training = population.training
    if not is_lm(values):
        problems: Problems = [(("population", name), "only used with architecture: {source: transformers} (language "
                                                     "models)") for name in ("models", "hub") if getattr(population,
                                                                                                        name)]
        if training is not None and training.is_lm:
            problems.append((("population", "training", "task"), "causal-lm trains a language model: it needs "
                                                                 "architecture: {source: transformers}"))
        if population.glob is not None and store_glob_problem(population.glob):
            problems.append((("population", "glob"), store_glob_problem(population.glob)))
        return problems
    problems = []
    if population.checkpoints:
        problems.append((("population", "checkpoints"), "a transformers architecture's models are save_pretrained "
                                                        "folders or Hub ids: give population.models, glob or hub"))
    if population.checkpoint is not None:
        problems.append((("population", "checkpoint"), "not used with a transformers architecture (its folders are "
                                                       "loaded with from_pretrained)"))
    if training is not None and not training.is_lm:
        problems.append((("population", "training"), "a transformers architecture trains with task: causal-lm"))
    if training is not None and training.save_every is not None:
        problems.append((("population", "training", "save_every"), "not used with task: causal-lm"))
    return problems


def _models(population: Any, base: str | None, problems: Problems) -> list[tuple[Any, Any]]:
    """``(named model, resolved model)`` of each model that resolves; the others' problems, each at its field."""
    from ..models import ModelSourceError, resolve_model

    try:
        named = named_models(population, base)
    except ModelSourceError as error:
        problems.append(_located(str(error), ("population",)))
        return []
    if len(named) == 1:
        problems.append((("population",), f"a study needs at least 2 models; got 1 ({named[0].name})"))
    found = []
    for model in named:
        try:
            found.append((model, resolve_model(model.model)))
        except ModelSourceError as error:
            loc = model.loc
            if model.model.revision and "revision" in str(error):
                loc = ("population", "revisions", population.revisions.index(model.model.revision))
            problems.append((loc, f"{model.name}: {_after(str(error), 'model ' + model.model.label)}"))
    return found


def _unknown_layer(tree: Any, selector: str) -> str:
    """An unknown selector's problem, with the closest module paths (digits as wildcards) instead of every name."""
    paths = sorted({re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name) for name, _ in tree.named_modules() if name})
    close = difflib.get_close_matches(selector, [*paths, "hidden_states"], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
        f" (module paths with wildcards such as {paths[-1]!r}, or hidden_states)"
    return f"unknown layer {selector!r}: it matches no module of {type(tree).__name__}{hint}"


def _layer_problems(tree: Any, values: Mapping[str, Any]) -> Problems:
    """Each entry of ``layers`` and ``simple_matches.layers`` that picks nothing in ``tree``, or a layer outside."""
    from ..extract.outputs import entry_parts
    from ..extract.tokens import token_layers

    problems: Problems = []
    chosen: dict[tuple, list[str]] = {}
    simple = values.get("simple_matches")
    for loc, entries in ((("layers",), values.get("layers") or ()),
                         (("simple_matches", "layers"), simple.layers if simple is not None else ())):
        chosen[loc] = []
        for index, entry in enumerate(entries):
            try:
                chosen[loc] += list(token_layers(tree, [entry]))
            except ValueError as error:
                message = str(error).removeprefix("layers[0]: ")
                problems.append(((*loc, index), _unknown_layer(tree, entry_parts(entry)[0])
                                 if "unknown layer" in message else message))
    outside = [name for name in chosen[("simple_matches", "layers")] if name not in chosen[("layers",)]]
    if outside and not problems:
        problems.append((("simple_matches", "layers"), f"selects {', '.join(outside)}, which the study's layers do "
                                                       "not include"))
    return problems


def _positions(config: str) -> int | None:
    from ..models.transformers_source import max_positions

    return max_positions(types.SimpleNamespace(**json.loads(config)))


def _tokenizer(values: Mapping[str, Any], found: list[tuple[Any, Any]], problems: Problems) -> Any:
    """The probe's tokenizer: ``probe.tokenizer`` or the one every model shares; None where there is none yet."""
    from ..probes import TokenizerError, has_tokenizer, same_tokenizer, tokenizer_fingerprint

    probe, population = values["probe"], values["population"]
    fingerprints, tokenizers = {}, {}
    for named, resolved in found:
        if has_tokenizer(resolved.path):
            try:
                tokenizers[named.name] = load_folder_tokenizer(resolved.path)
                fingerprints[named.name] = tokenizer_fingerprint(tokenizers[named.name])
            except TokenizerError as error:
                problems.append((named.loc, f"{named.name}: {error}"))
    if len(fingerprints) > 1:
        try:
            same_tokenizer(fingerprints)
        except TokenizerError as error:
            problems.append((("population",), _after(str(error), "population")))
            return None
    if probe.tokenizer is not None:
        try:
            tokenizer = load_folder_tokenizer(resolve_path(values.get("base"), probe.tokenizer))
        except TokenizerError as error:
            problems.append((("probe", "tokenizer"), str(error)))
            return None
        first = next(iter(fingerprints), None)
        if first is not None and tokenizer_fingerprint(tokenizer) != fingerprints[first]:
            problems.append((("probe", "tokenizer"), f"differs from the tokenizer of model {first} (vocabulary, "
                                                     "merges or special tokens): a row must be the same token in "
                                                     "every model"))
            return None
        return tokenizer
    if tokenizers:
        return next(iter(tokenizers.values()))
    if population.training is None and found:
        problems.append((("probe", "tokenizer"), "required: no model folder holds a tokenizer"))
    return None


def _probe_problems(values: Mapping[str, Any], tokenizer: Any, positions: int | None, label: str) -> Problems:
    """The text probe: its file, ``n_examples``, ``max_length`` against the models' positions, the rows."""
    from ..probes import TextProbeError
    from ..probes.text import check_max_length, choose_texts

    probe = values["probe"]
    problems: Problems = []
    try:
        check_max_length(probe.text_max_length, positions, label)
    except TextProbeError as error:
        problems.append(_located(str(error), ("probe",)))
    try:
        texts = probe_texts(probe, values["store"], values.get("base"))
        choose_texts(texts, probe.n_examples, probe.seed, source=probe.text)
    except TextProbeError as error:
        return [_located(str(error), ("probe",)), *problems]
    if tokenizer is None or problems:
        return problems  # the rows are checked once the tokenizer exists (a study that trains it)
    try:
        text_probe = make_probe(probe, texts, tokenizer)
        for repeat in range(text_probe.tokens.repeats):
            text_probe.rows(repeat)
    except ValueError as error:
        loc, message = _located(str(error), ("probe",))
        return [(("probe", *loc) if loc[0] == "rows" else ("probe", "tokens") if loc == ("probe",) else loc,
                 message)]
    return []


def _pairs_problems(values: Mapping[str, Any], names: list[str]) -> Problems:
    """Pairs along revisions, the reference among the models' names, the null baselines, cross layers."""
    population, pairs = values["population"], values.get("pairs")
    along = len(population.revisions) > 1
    problems: Problems = []
    if isinstance(pairs, dict) and not along:
        problems.append((("pairs",), "{reference: final} compares each seed's revisions with its last one: it needs "
                                     "population.revisions (two or more)"))
    if pairs == "reference" and along:
        problems.append((("pairs",), "reference (one model) does not apply along revisions: use {reference: final}, "
                                     "consecutive or all"))
    reference = values.get("reference")
    if pairs == "reference" and reference is not None and population.training is None and names \
            and reference not in names:
        problems.append((("reference",), f"{reference!r} is not one of the population's models "
                                         f"({', '.join(names)})"))
    if "untrained" in (values.get("null_baseline") or ()) and population.training is None:
        problems.append((("null_baseline",), "untrained initialises the models a study trains (population.training "
                                             "with task: causal-lm); permuted needs none"))
    if values.get("cross_layers") is not None:
        problems.append((("cross_layers",), "not available for language models yet"))
    return problems


def check_lm(values: Mapping[str, Any]) -> Problems:
    """Every check of a language-model study (``architecture.source: transformers``), in one pass."""
    architecture, population, probe, store = (values.get(key) for key in ("architecture", "population", "probe",
                                                                          "store"))
    if population is None or probe is None or store is None or check_population_form(values):
        return []  # (the form's problems are reported by check_population_form)
    if not probe.is_text:
        return [(("probe",), "a transformers architecture's probe is a text: probe: {text: FILE, ...}")]
    problems: Problems = []
    training, found = population.training, []
    if training is not None:
        configs = {training.spec.gpt2_config().to_json_string(): "the GPT-2 of population.training"}
        if training_root(training, store, values.get("base"), "trained") is None:
            problems.append((("population", "training", "folder"), "required with an s3:// store (the "
                                                                   "save_pretrained folders are local)"))
    else:
        found = _models(population, values.get("base"), problems)
        configs = {}
        for named, resolved in found:
            try:
                configs.setdefault(config_json(resolved), named.name)
            except ValueError as error:
                problems.append((named.loc, f"{named.name}: {_after(str(error), 'model ' + named.model.label)}"))
    positions, label = None, "the model"
    for config, name in configs.items():
        try:
            tree = lm_tree_of(config, architecture.model_class)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            problems.append((("architecture", "class"), f"{architecture.model_class} cannot build model {name}: "
                                                        f"{reason}"))
            continue
        problems += [problem for problem in _layer_problems(tree, values) if problem not in problems]
        allowed = _positions(config)
        if allowed is not None and (positions is None or allowed < positions):
            positions, label = allowed, name
    tokenizer = _tokenizer(values, found, problems)
    problems += _probe_problems(values, tokenizer, positions, label)
    return problems + _pairs_problems(values, [named.name for named, _ in found])
