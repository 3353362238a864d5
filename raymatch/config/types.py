"""The field types every config section is made of: each rule stated once, every problem worded one way.

A type is a pydantic annotation. Where pydantic has the rule (``ge=1``, a ``Literal``'s options, a pattern), pydantic
checks it and writes the JSON Schema from it, and :func:`worded` only words the problem. Where pydantic has none
(distinct items; ε in [0, 1], which the kernel's :func:`~raymatch.match.inputs.check_eps` decides), the type's own
check is the one statement of the rule, and its schema is derived from the same parameters. Every problem reads
``must be <what>; got <value>``, the value shown as YAML spells it (``null``, ``true``)::

    resources.pair_block: must be a positive integer; got 0
    eps[1]: must lie in [0, 1]; got 1.5
    eps[2]: duplicate of eps[0] (0.15)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, WithJsonSchema, WrapValidator

from .base import duplicate, is_integer, is_number, problem_at, relocated, shown

__all__ = [
    "Boolean",
    "Eps",
    "NonNegativeInt",
    "NonNegativeNumber",
    "Number",
    "OptionalNonNegativeInt",
    "OptionalPath",
    "OptionalPositiveInt",
    "OptionalPositiveNumber",
    "OptionalString",
    "Path",
    "PositiveInt",
    "PositiveNumber",
    "ProperFraction",
    "Seeds",
    "String",
    "distinct",
    "eps_grid",
    "is_list",
    "one_of",
    "optional",
    "strings",
    "worded",
]


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


def _is_boolean(value: Any) -> bool:
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def worded(what: str | Callable[[Any], str], accept: Callable[[Any], bool] | None = None,
           convert: Callable[[Any], Any] | None = None) -> WrapValidator:
    """Word every problem of the type it follows as ``must be <what>; got <value>``.

    Parameters
    ----------
    what : str or callable
        What a value must be (``'a positive integer'``); or a function of the value giving the whole message.
    accept : callable, optional
        A rule pydantic lacks, checked first: the kind of value taken (integers and not booleans, say).
    convert : callable, optional
        Applied to an accepted value before pydantic checks the rest (``int`` for a numpy integer).

    Returns
    -------
    pydantic.WrapValidator
        To put after the type's pydantic constraints in its ``Annotated[...]`` metadata.
    """
    def problem(value: Any) -> str:
        return what(value) if callable(what) else f"must be {what}; got {shown(value)}"

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        if accept is not None and not accept(value):
            raise ValueError(problem(value))
        try:
            return handler(value if convert is None else convert(value))
        except ValidationError:
            raise ValueError(problem(value)) from None

    return WrapValidator(validate)


def optional(annotation: Any) -> Any:
    """``annotation`` or null: null is None, anything else is checked (and worded) as ``annotation`` alone.

    Parameters
    ----------
    annotation : type
        A field type of this module.

    Returns
    -------
    type
    """
    adapter = TypeAdapter(annotation)
    return Annotated[annotation | None, WrapValidator(lambda value, _: None if value is None
                                                      else adapter.validate_python(value))]


def one_of(*options: str) -> Any:
    """One of ``options`` (a ``Literal``): ``must be one of a, b, c; got 'x'``.

    Parameters
    ----------
    *options : str

    Returns
    -------
    type
    """
    return Annotated[Literal[options], worded(f"one of {', '.join(options)}")]


Boolean = Annotated[bool, worded("true or false", accept=_is_boolean, convert=bool)]
String = Annotated[str, Field(min_length=1), worded("a non-empty string", accept=lambda value: isinstance(value, str))]
PositiveInt = Annotated[int, Field(ge=1), worded("a positive integer", accept=is_integer, convert=int)]
NonNegativeInt = Annotated[int, Field(ge=0), worded("a non-negative integer", accept=is_integer, convert=int)]
Number = Annotated[float, Field(allow_inf_nan=False), worded("a number", accept=is_number, convert=float)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False),
                           worded("a positive number", accept=is_number, convert=float)]
NonNegativeNumber = Annotated[float, Field(ge=0, allow_inf_nan=False),
                              worded("a non-negative number", accept=is_number, convert=float)]
#: A number in [0, 1): a share of something that must leave some over (a holdout, a momentum).
ProperFraction = Annotated[float, Field(ge=0, lt=1), worded("a number in [0, 1)", accept=is_number, convert=float)]
#: A local path (a string or an ``os.PathLike``), kept as a string.
Path = Annotated[str, worded("a string path", accept=lambda value: isinstance(value, (str, os.PathLike)),
                             convert=os.fspath)]
OptionalString = optional(String)
OptionalPositiveInt = optional(PositiveInt)
OptionalNonNegativeInt = optional(NonNegativeInt)
OptionalPositiveNumber = optional(PositiveNumber)
OptionalPath = optional(Path)


def _eps(value: Any, _handler: Any) -> float:
    from ..match.inputs import check_eps  # (the kernel's rule; imported when used: the CLI starts without scipy)

    if not is_number(value):
        raise ValueError(f"must be a number; got {shown(value)}")
    try:
        return check_eps(value, "ε")
    except ValueError as error:
        raise ValueError(str(error).removeprefix("ε ")) from None


#: One ε: a number that :func:`raymatch.match.inputs.check_eps` accepts (the JSON Schema says what it accepts).
Eps = Annotated[float, WithJsonSchema({"type": "number", "minimum": 0, "maximum": 1}), WrapValidator(_eps)]


def _seeds(value: Any, handler: Any) -> tuple[int, ...]:
    if not is_list(value):
        raise ValueError(f"must be a list of non-negative integers; got {shown(value)}")
    try:
        seeds = handler(value)
    except ValidationError as error:
        if any(item["type"] != "too_short" for item in error.errors()):
            raise ValueError(f"must be a list of non-negative integers; got {shown(value)}") from None
        seeds = ()
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ValueError(f"need at least 2 distinct seeds; got {shown(list(value))}")
    return seeds


#: Training seeds: at least two distinct non-negative integers, in population order.
Seeds = Annotated[tuple[NonNegativeInt, ...], Field(min_length=2, json_schema_extra={"uniqueItems": True}),
                  WrapValidator(_seeds)]


def distinct(item: Any, what: str, *, non_empty: bool = False, key: Callable[[Any], Any] = lambda item: item,
             show: Callable[[Any], str] = repr, sort: bool = False) -> Any:
    """A list of distinct items, a tuple once checked; every bad item and every repeat reported under its index.

    Parameters
    ----------
    item : type
        The type of one item (a field type of this module, or a config model).
    what : str
        What the list holds, for a value that is no list (``must be a list of <what>; got …``).
    non_empty : bool, default False
        Whether an empty list is refused (``must not be empty``; ``minItems`` in the schema).
    key : callable, optional
        What makes two checked items the same (the item itself by default).
    show : callable, default repr
        A checked item as the problem of its repeat shows it (``duplicate of eps[0] (0.15)``).
    sort : bool, default False
        Keep the items sorted instead of in the given order.

    Returns
    -------
    type
    """
    adapter = TypeAdapter(item)

    def check(value: Any, _handler: Any) -> tuple:
        if not is_list(value):
            raise ValueError(f"must be a list of {what}; got {shown(value)}")
        if non_empty and not value:
            raise ValueError("must not be empty")
        first: dict[Any, int] = {}
        items, problems = [], []
        for index, given in enumerate(value):
            try:
                checked = adapter.validate_python(given)
            except ValidationError as error:
                problems += relocated(error, index)
                continue
            if key(checked) in first:
                problems.append(problem_at((index,), duplicate(first[key(checked)], show(checked)), given))
            else:
                first[key(checked)] = index
                items.append(checked)
        if problems:
            raise ValidationError.from_exception_data("config", problems)
        return tuple(sorted(items) if sort else items)

    schema = Field(min_length=1 if non_empty else None, json_schema_extra={"uniqueItems": True})
    return Annotated[tuple[item, ...], schema, WrapValidator(check)]


def strings(what: str, *, non_empty: bool = False) -> Any:
    """A list of distinct non-empty strings, in the given order (see :func:`distinct`).

    Parameters
    ----------
    what : str
        What the strings are (``'layer selectors'``).
    non_empty : bool, default False

    Returns
    -------
    type
    """
    return distinct(String, what, non_empty=non_empty)


def eps_grid(*, non_empty: bool) -> Any:
    """An ε grid: distinct :data:`Eps` values, stored sorted (see :func:`distinct`).

    Parameters
    ----------
    non_empty : bool

    Returns
    -------
    type
    """
    return distinct(Eps, "numbers", non_empty=non_empty, show=lambda item: f"{item:g}", sort=True)
