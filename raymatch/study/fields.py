"""The checks of a study's single fields, as :func:`~raymatch.config.checked_by` functions and annotated types.

Each check takes a value as given and returns it normalised (lists become tuples, numbers floats), or raises
``ValueError`` with the message a study file's author reads after the field's path (``must be a positive integer;
got 0``); a list check reports each bad item under its index (``eps[1]: must lie in [0, 1]; got 1.5``). Values are
shown as YAML spells them (``null``, ``true``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from ..config import Loc, checked_by, duplicate, invalid, is_integer, is_number, shown
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

Check = Callable[[Any], Any]


def is_list(value: Any) -> bool:
    """Whether ``value`` is a list (a sequence that is not a string).

    Parameters
    ----------
    value : object

    Returns
    -------
    bool
    """
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def string(value: Any) -> str:
    """Check a non-empty string.

    Parameters
    ----------
    value : object

    Returns
    -------
    str

    Raises
    ------
    ValueError
        Anything else.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string; got {shown(value)}")
    return value


def optional_string(value: Any) -> str | None:
    """Check a non-empty string or null (see :func:`string`).

    Parameters
    ----------
    value : object

    Returns
    -------
    str or None
    """
    return None if value is None else string(value)


def boolean(value: Any) -> bool:
    """Check ``true`` or ``false`` (not 0 or 1).

    Parameters
    ----------
    value : object

    Returns
    -------
    bool

    Raises
    ------
    ValueError
        Anything else.
    """
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false; got {shown(value)}")
    return value


def positive_int(value: Any) -> int:
    """Check an integer ≥ 1 (not a boolean, not ``2.0``).

    Parameters
    ----------
    value : object

    Returns
    -------
    int

    Raises
    ------
    ValueError
        Anything else.
    """
    if not is_integer(value) or value <= 0:
        raise ValueError(f"must be a positive integer; got {shown(value)}")
    return int(value)


def number(*, positive: bool) -> Check:
    """A check of a finite number, > 0 or ≥ 0.

    Parameters
    ----------
    positive : bool
        Whether 0 is refused.

    Returns
    -------
    callable
        Returns the number as a float; raises ``ValueError`` for anything else.
    """
    def check(value: Any) -> float:
        if not is_number(value) or not math.isfinite(value) or (value <= 0 if positive else value < 0):
            raise ValueError(f"must be a {'positive' if positive else 'non-negative'} number; got {shown(value)}")
        return float(value)

    return check


def distinct(what: str, *, non_empty: bool, item: Check, key: Check, show: Callable[[Any], str]) -> Check:
    """A check of a list of distinct items.

    Parameters
    ----------
    what : str
        What the list holds, for the message about a value that is no list (``'layer selectors'``).
    non_empty : bool
        Whether an empty list is refused.
    item : callable
        Checks one item (returns it normalised or raises ``ValueError``).
    key : callable
        What makes two checked items the same.
    show : callable
        A checked item as the message about its duplicate shows it.

    Returns
    -------
    callable
        Returns the checked items as a tuple, in the given order; raises with every bad item and every repeat,
        each under its index.
    """
    def check(value: Any) -> tuple:
        if not is_list(value):
            raise ValueError(f"must be a list of {what}; got {shown(value)}")
        if non_empty and not value:
            raise ValueError("must not be empty")
        first_index: dict[Any, int] = {}
        items = []
        problems: list[tuple[Loc, Any]] = []
        for index, given in enumerate(value):
            try:
                checked = item(given)
            except ValueError as error:
                problems.append(((index,), str(error)))
                continue
            if key(checked) in first_index:
                problems.append(((index,), duplicate(first_index[key(checked)], show(checked))))
            else:
                first_index[key(checked)] = index
                items.append(checked)
        if problems:
            raise invalid(problems, value)
        return tuple(items)

    return check


def fraction(value: Any) -> float:
    """Check a number in [0, 1].

    Parameters
    ----------
    value : object

    Returns
    -------
    float

    Raises
    ------
    ValueError
        Anything else.
    """
    if not is_number(value):
        raise ValueError(f"must be a number; got {shown(value)}")
    if not 0 <= value <= 1:
        raise ValueError(f"must lie in [0, 1]; got {shown(value)}")
    return float(value)


def fractions(*, non_empty: bool) -> Check:
    """A check of a list of distinct numbers in [0, 1] (an ε grid), returned sorted.

    Parameters
    ----------
    non_empty : bool
        Whether an empty list is refused.

    Returns
    -------
    callable
        See :func:`distinct`.
    """
    check = distinct("numbers", non_empty=non_empty, item=fraction, key=float, show=lambda item: f"{item:g}")
    return lambda value: tuple(sorted(check(value)))


def strings(what: str, *, non_empty: bool) -> Check:
    """A check of a list of distinct non-empty strings, in the given order.

    Parameters
    ----------
    what : str
        What the strings are (``'layer selectors'``).
    non_empty : bool
        Whether an empty list is refused.

    Returns
    -------
    callable
        See :func:`distinct`.
    """
    return distinct(what, non_empty=non_empty, item=string, key=str, show=repr)


#: A list of distinct numbers in [0, 1], stored sorted.
Fractions = Annotated[tuple[Annotated[float, Field(ge=0, le=1)], ...], Field(json_schema_extra={"uniqueItems": True})]
#: A list of distinct strings.
Selectors = Annotated[tuple[str, ...], Field(json_schema_extra={"uniqueItems": True})]
Boolean = Annotated[bool, checked_by(boolean)]
PositiveInt = Annotated[int, Field(ge=1), checked_by(positive_int)]
OptionalString = Annotated[str | None, checked_by(optional_string)]


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


def seeds(value: Any) -> tuple[int, ...]:
    """Check training seeds: at least two distinct non-negative integers.

    Parameters
    ----------
    value : object

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
    """
    if not is_list(value) or not all(is_integer(seed) and seed >= 0 for seed in value):
        raise ValueError(f"must be a list of non-negative integers; got {shown(value)}")
    if len(set(value)) != len(value) or len(value) < 2:
        raise ValueError(f"need at least 2 distinct seeds; got {shown(list(value))}")
    return tuple(int(seed) for seed in value)


def checkpoints(value: Any) -> tuple[str, ...]:
    """Check checkpoints: distinct store keys that are safe (see :func:`~raymatch.store.check_key`), paths or URIs.

    Parameters
    ----------
    value : object

    Returns
    -------
    tuple of str

    Raises
    ------
    ValueError or pydantic.ValidationError
        Every bad or repeated key, under its index.
    """
    keys = strings("checkpoint keys", non_empty=False)(value)
    problems = []
    for index, key in enumerate(keys):
        if "://" in key or key.startswith("/"):
            continue
        try:
            check_key(key)
        except ValueError as error:
            problems.append(((index,), str(error)))
    if problems:
        raise invalid(problems, value)
    return keys


def glob_pattern(value: Any) -> str | None:
    """Check a pattern of store keys (or null), relative to the store root.

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
    pattern = optional_string(value)
    if pattern is not None and ("://" in pattern or pattern.startswith("/")):
        raise ValueError(f"must be a pattern of store keys, relative to the store root; got {pattern!r}")
    return pattern


# ------------------------------------------------------------------------------------------------ the study


def study_name(value: Any) -> str:
    """Check a study's name (:data:`NAME`).

    Parameters
    ----------
    value : object

    Returns
    -------
    str

    Raises
    ------
    ValueError
    """
    name = string(value)
    if not re.fullmatch(NAME, name):
        raise ValueError(f"use letters, digits and _ . - only, not starting with . or -; got {name!r}")
    return name


def optional_positive_int(value: Any) -> int | None:
    """Check a positive integer, or None (null).

    Parameters
    ----------
    value : object

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
    """
    return None if value is None else positive_int(value)


#: ``pairs: {reference: final}``: each saved epoch of a seed against the seed's own final (selected) weights.
FINAL_REFERENCE = {"reference": "final"}


def pair_policy_or_final(value: Any) -> str | dict[str, str]:
    """Check one of :data:`PAIR_POLICIES` or the trajectory policy ``{reference: final}``.

    Parameters
    ----------
    value : object

    Returns
    -------
    str or dict
        The policy name, or :data:`FINAL_REFERENCE` (a new dict).

    Raises
    ------
    ValueError
    """
    if isinstance(value, Mapping) and dict(value) == FINAL_REFERENCE:
        return dict(FINAL_REFERENCE)
    if isinstance(value, Mapping):
        raise ValueError(f"as a mapping, must be {{reference: final}} (with population.training.save_every); "
                         f"got {shown(value)}")
    return pair_policy(value)


def cross_pool(value: Any) -> str:
    """Check a ``cross_layers.pool``: ``'none'`` or ``'mean'``.

    Parameters
    ----------
    value : object

    Returns
    -------
    str

    Raises
    ------
    ValueError
    """
    if value not in ("none", "mean"):
        raise ValueError(f"must be one of none, mean; got {shown(value)}")
    return value


def pair_policy(value: Any) -> str:
    """Check one of :data:`PAIR_POLICIES`.

    Parameters
    ----------
    value : object

    Returns
    -------
    str

    Raises
    ------
    ValueError
    """
    if value not in PAIR_POLICIES:
        raise ValueError(f"must be one of {', '.join(PAIR_POLICIES)}; got {shown(value)}")
    return value


# ------------------------------------------------------------------------------------------------ architectures


def architecture_source(value: Any) -> str | None:
    """Check where a named architecture comes from: ``zoo``, ``torchvision``, ``timm`` or null.

    Parameters
    ----------
    value : object

    Returns
    -------
    str or None
    """
    if value is None or value in ("zoo", "torchvision", "timm"):
        return value
    raise ValueError(f"must be one of zoo, torchvision, timm; got {shown(value)}")


def keyword_arguments(value: Any) -> dict[str, Any] | None:
    """Check keyword arguments: a mapping of identifier strings to YAML/JSON values, or null.

    Parameters
    ----------
    value : object

    Returns
    -------
    dict or None
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of argument names to values; got {shown(value)}")
    bad = [key for key in value if not (isinstance(key, str) and key.isidentifier())]
    if bad:
        raise ValueError(f"argument names must be identifiers; got {', '.join(map(repr, bad))}")
    try:
        json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"values must be plain YAML/JSON data (numbers, strings, lists, mappings): {error}") from None
    return dict(value)


# ------------------------------------------------------------------------------------------------ null baselines

#: The null baselines a study may add beside its trained population: untrained networks of the architecture, and
#: the trained pairs with model b's activation rows permuted (same spectra, no sample correspondence).
NULL_BASELINES = ("untrained", "permuted")


def null_baselines(value: Any) -> tuple[str, ...]:
    """Check ``null_baseline``: ``true`` (``[untrained]``), ``false`` or a list of distinct :data:`NULL_BASELINES`.

    Parameters
    ----------
    value : object

    Returns
    -------
    tuple of str
        The baselines in the order of :data:`NULL_BASELINES`; empty for ``false`` or ``[]``.

    Raises
    ------
    ValueError
        Anything else.
    """
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


#: ``null_baseline``: a boolean or a list in a study file (its JSON Schema), a tuple once checked.
NullBaselines = Annotated[bool | Annotated[tuple[Literal["untrained", "permuted"], ...],
                                          Field(json_schema_extra={"uniqueItems": True})], checked_by(null_baselines)]
