"""The field types of a study file's own keys, on those of :mod:`raymatch.config.types`.

Each type checks its value as given and returns it normalised (lists become tuples), or words its problem as the
study file's author reads it after the field's path (``population.glob: must be a pattern of store keys, relative
to the store root; got '/data/*.safetensors'``); a list reports each bad item under its index. Values are shown as
YAML spells them (``null``, ``true``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, WrapValidator

from ..config import (
    Loc,
    NonNegativeInt,
    OptionalString,
    Path,
    String,
    distinct,
    is_list,
    is_number,
    one_of,
    optional,
    shown,
    strings,
    worded,
)
from ..store import StoreURIError, check_endpoint, check_key, check_uri

#: How the models of a population are paired: every unordered pair, every model against one reference, or each
#: checkpoint against the next one in the listed order (along training).
PAIR_POLICIES = ("all", "reference", "consecutive")

#: A study's name: it becomes part of store keys.
NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
#: A key holding one of these words (any case) names a credential, which a study file must not hold.
CREDENTIAL_WORDS = ("key", "secret", "password", "passwd", "token", "credential")
CREDENTIALS_PROBLEM = (
    "credentials do not belong in a study file; pass them through the environment (runtime_env on a cluster)"
)

string = TypeAdapter(String).validate_python
optional_string = TypeAdapter(optional(String)).validate_python


# ------------------------------------------------------------------------------------------------ the store


def credential_locs(data: Any, loc: Loc = ()) -> list[Loc]:
    """Where under ``data`` a key names a credential (``secret``, ``aws_access_key_id``, ``token`` …).

    Parameters
    ----------
    data : object
        Mappings and lists are searched through.
    loc : tuple, optional
        The location of ``data``.

    Returns
    -------
    list of tuple
        Each such key's location, in document order.
    """
    found: list[Loc] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            if any(word in str(key).lower() for word in CREDENTIAL_WORDS):
                found.append((*loc, key))
            found += credential_locs(value, (*loc, key))
    elif is_list(data):
        for index, item in enumerate(data):
            found += credential_locs(item, (*loc, index))
    return found


def _uri_problem(error: StoreURIError) -> str:
    """What a study file's author reads after the field's path; a credential is never echoed."""
    return CREDENTIALS_PROBLEM if error.kind == "credentials" else error.problem


def store_uri(value: Any) -> str:
    """Check a store URI: a local path, ``file://`` or ``s3://bucket``, with no user or password in it.

    Parameters
    ----------
    value : object

    Returns
    -------
    str

    Raises
    ------
    ValueError
        The problem of the URI (:func:`raymatch.store.parse_uri`'s).
    """
    uri = string(value)
    try:
        check_uri(uri)
    except StoreURIError as error:
        raise ValueError(_uri_problem(error)) from None
    return uri


def endpoint(value: Any) -> str | None:
    """Check an S3 endpoint URL (or null), with no user or password in it.

    Parameters
    ----------
    value : object

    Returns
    -------
    str or None

    Raises
    ------
    ValueError
    """
    try:
        return check_endpoint(optional_string(value))
    except StoreURIError as error:
        raise ValueError(_uri_problem(error)) from None


# ------------------------------------------------------------------------------------------------ the population


def _store_key(key: str) -> str:
    return key if "://" in key or key.startswith("/") else check_key(key)


#: Checkpoints: distinct safe store keys (:func:`~raymatch.store.check_key`), absolute paths or URIs.
Checkpoints = distinct(Annotated[String, AfterValidator(_store_key)], "checkpoint keys")


def store_glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is no pattern of store keys (it must be relative to the store root), or None."""
    if "://" in pattern or pattern.startswith("/"):
        return f"must be a pattern of store keys, relative to the store root; got {pattern!r}"
    return None


#: A pattern (or null): of store keys relative to the store root (:func:`store_glob_problem`, checked with the
#: architecture), or of a language-model population's folders.
GlobPattern = OptionalString

#: A language-model population's ``models``: distinct folders or Hub ids.
ModelNames = strings("folders or Hub ids")
#: A Hub population's ``seeds``: distinct non-negative integers.
HubSeeds = distinct(NonNegativeInt, "non-negative integers")
#: A Hub population's ``revisions``: distinct branch, tag or commit names (``step1000``).
Revisions = strings("Hub revisions")


# ------------------------------------------------------------------------------------------------ the study


def _study_name(value: Any, handler: Any) -> str:
    try:
        return handler(value if isinstance(value, str) else None)
    except ValidationError as error:
        if any(item["type"] == "string_pattern_mismatch" for item in error.errors()):
            raise ValueError(f"use letters, digits and _ . - only, not starting with . or -; got {value!r}") from None
        raise ValueError(f"must be a non-empty string; got {shown(value)}") from None


#: A study's name (:data:`NAME`).
StudyName = Annotated[str, Field(min_length=1, pattern=f"^{NAME}$"), WrapValidator(_study_name)]


def _absolute(path: str) -> str:
    if not os.path.isabs(path):
        raise ValueError(f"must be an absolute folder (relative paths of the study resolve against it); got {path!r}")
    return path


#: The folder a study's relative paths resolve against (or null): absolute.
BaseFolder = optional(Annotated[Path, AfterValidator(_absolute)])

#: ``pairs: {reference: final}``: each saved epoch of a seed against the seed's own final (selected) weights.
FINAL_REFERENCE = {"reference": "final"}
_policy = TypeAdapter(one_of(*PAIR_POLICIES)).validate_python


def _pairs(value: Any, _handler: Any) -> str | dict[str, str]:
    if isinstance(value, Mapping) and dict(value) == FINAL_REFERENCE:
        return dict(FINAL_REFERENCE)
    if isinstance(value, Mapping):
        raise ValueError(f"as a mapping, must be {{reference: final}} (with population.training.save_every); "
                         f"got {shown(value)}")
    return _policy(value)


#: One of :data:`PAIR_POLICIES`, or the trajectory policy ``{reference: final}`` (:data:`FINAL_REFERENCE`).
PairPolicy = Annotated[Literal[PAIR_POLICIES] | dict[Literal["reference"], Literal["final"]], WrapValidator(_pairs)]

#: The layer selectors of ``simple_matches`` and ``cross_layers``.
Selectors = strings("layer selectors")


# ------------------------------------------------------------------------------------------------ null baselines

#: The null baselines a study may add beside its trained population: untrained networks of the architecture, and
#: the trained pairs with model b's activation rows permuted (same spectra, no sample correspondence).
NULL_BASELINES = ("untrained", "permuted")


def _null_baselines(value: Any, _handler: Any) -> tuple[str, ...]:
    if isinstance(value, bool):
        return ("untrained",) if value else ()
    if not is_list(value):
        raise ValueError(f"must be true, false or a list of {', '.join(NULL_BASELINES)}; got {shown(value)}")
    problems = [(index, item) for index, item in enumerate(value) if item not in NULL_BASELINES]
    if problems:
        index, item = problems[0]
        raise ValueError(f"[{index}]: must be one of {', '.join(NULL_BASELINES)}; got {shown(item)}")
    if len(set(value)) != len(value):
        raise ValueError(f"must list each baseline once; got {shown(list(value))}")
    return tuple(name for name in NULL_BASELINES if name in value)


#: ``null_baseline``: ``true`` (``[untrained]``), ``false`` or a list of distinct :data:`NULL_BASELINES`, a tuple in
#: their order once checked (empty for ``false``).
NullBaselines = Annotated[bool | Annotated[tuple[Literal[NULL_BASELINES], ...],
                                          Field(json_schema_extra={"uniqueItems": True})],
                          WrapValidator(_null_baselines)]


# ------------------------------------------------------------------------------------------------ measures

#: The measures a study may compute per pair: the subspace match (``max_match``: every pair's ε-curve, always
#: computed) and the standard measures of :data:`raymatch.match.MEASURES`, in that order (the same names:
#: tests/test_measures_study.py checks; spelled here so that loading a study imports no scipy).
MEASURE_NAMES = ("max_match", "cka", "cca", "svcca", "pwcca", "procrustes", "neuron_corr")
#: ``measures`` when a study file leaves it out: the match and linear CKA, as before the key existed.
DEFAULT_MEASURES = ("max_match", "cka")

#: ``measures``: distinct names of :data:`MEASURE_NAMES`, in the given order.
Measures = distinct(one_of(*MEASURE_NAMES), "measure names", non_empty=True)

#: ``svcca_keep``: the share of each layer's variance SVCCA keeps, in (0, 1].
KeepShare = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False),
                      worded("a number in (0, 1]", accept=is_number, convert=float)]
