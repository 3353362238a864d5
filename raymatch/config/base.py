"""The base of every config model: :class:`Config` (frozen, extra keys forbidden) and its problems, located.

Field checks are plain functions that return the normalised value or raise ``ValueError(message)``; the types of
:mod:`raymatch.config.types` are made of them, and :func:`checked_by` attaches one to a field's type (the type
annotation still gives the JSON Schema). A check that finds several problems at once (one per list item, say)
raises :func:`invalid`.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, WrapValidator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "Config",
    "ConfigError",
    "Loc",
    "checked_by",
    "duplicate",
    "invalid",
    "is_integer",
    "is_number",
    "problem_at",
    "problems_of",
    "relocated",
    "shown",
]

#: Where a problem is, relative to the model being checked: field names and list indices, ``()`` for the model.
Loc = tuple[str | int, ...]

_PROBLEM = "config"  # the pydantic error type of every problem raised with a message of our own
_DUPLICATE = "duplicate"  # a list item equal to an earlier one: the message names the earlier item's full path


class ConfigError(ValueError):
    """A configuration with problems: the message lists every problem found, one per line, under its field path.

    Parameters
    ----------
    problems : sequence of str
        One line per problem, ``field.path: message``, e.g. ``eps[1]: must lie in [0, 1]; got 1.5``.

    Attributes
    ----------
    problems : list of str
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self):
        return type(self), (self.problems,)


# ------------------------------------------------------------------------------------------------ value helpers


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (Python's or numpy's), and not a boolean.

    Parameters
    ----------
    value : object

    Returns
    -------
    bool
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (integers included, Python's or numpy's), and not a boolean.

    Parameters
    ----------
    value : object

    Returns
    -------
    bool
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def shown(value: Any) -> str:
    """A value as a configuration file's author would recognise it in a message: YAML's null, true and false.

    Parameters
    ----------
    value : object

    Returns
    -------
    str
        ``null``, ``true``/``false``, or the ``repr`` (cut to 80 characters).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------------ problems


def problem_at(loc: Loc, problem: str | PydanticCustomError, value: Any = None) -> InitErrorDetails:
    """One problem, located relative to the model (or value) being checked, as pydantic's error details.

    Parameters
    ----------
    loc : tuple of str or int
        Field names and list indices; ``()`` for the model itself.
    problem : str or pydantic_core.PydanticCustomError
        The message (reported after ``path: ``), or an error such as :func:`duplicate`.
    value : object, optional
        The value checked.

    Returns
    -------
    pydantic_core.InitErrorDetails
    """
    if isinstance(problem, str):
        problem = PydanticCustomError(_PROBLEM, "{message}", {"message": problem})
    return InitErrorDetails(type=problem, loc=tuple(loc), input=value)


def duplicate(first: int, item: str) -> PydanticCustomError:
    """The problem of a list item that repeats the item at index ``first``.

    Parameters
    ----------
    first : int
        Index of the earlier, equal item.
    item : str
        The item as the message shows it, e.g. ``0.25`` or ``'relu'``.

    Returns
    -------
    pydantic_core.PydanticCustomError
        Reported as ``<list>[i]: duplicate of <list>[first] (item)``, the list's full path spelled out.
    """
    return PydanticCustomError(_DUPLICATE, "duplicate of item {first} ({item})", {"first": first, "item": item})


def invalid(problems: Iterable[tuple[Loc, str | PydanticCustomError]], value: Any = None,
            title: str = "config") -> ValidationError:
    """A pydantic ``ValidationError`` holding several problems, to raise from a check that finds more than one.

    Raised inside a field's check, each problem's location is taken relative to that field, so a list check can
    report ``((1,), 'must lie in [0, 1]; got 1.5')`` and have it read ``eps[1]: must lie in [0, 1]; got 1.5``.

    Parameters
    ----------
    problems : iterable of (tuple, str or PydanticCustomError)
        Each problem's location (field names and list indices; ``()`` for the value itself) and message.
    value : object, optional
        The value checked (kept as each problem's input).
    title : str, default 'config'

    Returns
    -------
    pydantic.ValidationError
    """
    return ValidationError.from_exception_data(title, [problem_at(loc, problem, value) for loc, problem in problems])


def relocated(error: ValidationError, *prefix: str | int) -> list[InitErrorDetails]:
    """The problems of ``error``, each located under ``prefix``, ready to raise again (see :func:`invalid`).

    Parameters
    ----------
    error : pydantic.ValidationError
    *prefix : str or int
        Location to put in front of each problem's own.

    Returns
    -------
    list of pydantic_core.InitErrorDetails
    """
    details = []
    for item in error.errors(include_url=False):
        kind, ctx = item["type"], item.get("ctx")
        loc = (*prefix, *item["loc"])
        if kind in (_PROBLEM, _DUPLICATE):
            template = "{message}" if kind == _PROBLEM else "duplicate of item {first} ({item})"
            details.append(InitErrorDetails(type=PydanticCustomError(kind, template, ctx), loc=loc,
                                            input=item["input"]))
        else:
            detail = InitErrorDetails(type=kind, loc=loc, input=item["input"])
            if ctx:
                detail["ctx"] = ctx
            details.append(detail)
    return details


def _dotted(prefix: str, loc: Sequence[str | int]) -> str:
    path = prefix
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}" if path else str(part)
    return path


def problems_of(error: ValidationError, prefix: str = "", root: str = "config") -> list[str]:
    """Every problem of a pydantic ``ValidationError`` as a line ``field.path: message``, in the error's order.

    Parameters
    ----------
    error : pydantic.ValidationError
    prefix : str, optional
        The path of the model that was validated (``'probe'``, ``'population.training'``); its fields' paths
        follow it after a dot.
    root : str, default 'config'
        What a problem of the whole model (an empty path) is reported under.

    Returns
    -------
    list of str
        E.g. ``probe.rows.repeats: must be a positive integer; got 0``, ``eps[2]: duplicate of eps[0] (0.15)``,
        ``store.region: unknown key (allowed: uri, endpoint_url, shared)``, ``name: required key is missing``.
        Pydantic's "Value error, " prefix is dropped.
    """
    lines = []
    for item in error.errors(include_url=False):
        kind, loc, ctx = item["type"], item["loc"], item.get("ctx") or {}
        if kind == "missing":
            message = "required key is missing"
        elif kind == "extra_forbidden":
            message = "unknown key"
        elif kind == _DUPLICATE:
            message = f"duplicate of {_dotted(prefix, loc[:-1]) or root}[{ctx['first']}] ({ctx['item']})"
        elif kind in (_PROBLEM, "value_error", "assertion_error"):
            message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        else:  # one of pydantic's own checks
            message = f"{item['msg'][:1].lower()}{item['msg'][1:]}; got {shown(item['input'])}"
        lines.append(f"{_dotted(prefix, loc) or root}: {message}")
    return lines


def checked_by(check: Callable[[Any], Any]) -> WrapValidator:
    """Validate a field with ``check`` alone, the field's annotated type giving only its JSON Schema.

    Parameters
    ----------
    check : callable
        Takes the value as given, returns it normalised (a tuple for a list, a float for a number …), and raises
        ``ValueError(message)`` for one problem or :func:`invalid` for several.

    Returns
    -------
    pydantic.WrapValidator
        To put in the field's ``Annotated[...]`` metadata, after any schema constraints.
    """
    return WrapValidator(lambda value, _handler: check(value))


# ------------------------------------------------------------------------------------------------ the base model


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter:
    info = model.model_fields[name]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


class Config(BaseModel):
    """A frozen configuration model whose checks report every problem at once, each under its field path.

    Build one from a mapping with :meth:`from_dict`, or with its constructor (keyword arguments, or positional
    ones in field order); both check every field, then the rules that relate fields (:meth:`_check_together`),
    and raise the model's error class (a :class:`ConfigError`) listing every problem. Unknown keys read
    ``<path>: unknown key (allowed: a, b, c)`` and missing required ones ``<path>: required key is missing``.

    Raises
    ------
    ConfigError
        From the constructor, :meth:`from_dict` and :meth:`replace`, listing every problem.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    #: The path of the model's fields when it is checked on its own (``'probe'`` for a probe spec).
    _path: ClassVar[str] = ""
    #: What a problem of the whole model is reported under when its path is empty.
    _root: ClassVar[str] = "config"
    #: The error raised for a model with problems.
    _error: ClassVar[type[ConfigError]] = ConfigError

    def __init__(self, /, *args: Any, **data: Any) -> None:
        names = list(type(self).model_fields)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional arguments ({len(args)} "
                            "given)")
        for name, value in zip(names, args, strict=False):
            if name in data:
                raise TypeError(f"{type(self).__name__} got multiple values for argument {name!r}")
            data[name] = value
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise self._error(problems_of(error, self._path, self._root)) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a mapping of the fields, as written by :meth:`to_dict` (missing fields take their defaults).

        Parameters
        ----------
        data : mapping
            Field names to values; sections may be mappings of their own fields.

        Returns
        -------
        Config
            An instance of the class it is called on.

        Raises
        ------
        ConfigError
            The class's error, listing every unknown key, missing required key, wrong type and bad value.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise cls._error(problems_of(error, cls._path, cls._root)) from None

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain YAML/JSON-able values (lists, dicts, strings, numbers, booleans, null).

        Returns
        -------
        dict
            Field name to value, in field order; nested models as their own :meth:`to_dict`, tuples as lists.
        """
        return {name: _plain(getattr(self, name)) for name in type(self).model_fields}

    def replace(self, **changes: Any):
        """A copy with some fields changed, checked like a new model (``dataclasses.replace`` for configs).

        Parameters
        ----------
        **changes
            Field names to new values.

        Returns
        -------
        Config
            A new instance of the same class.

        Raises
        ------
        ConfigError
            Listing every problem of the changed model.
        """
        return type(self).from_dict({**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @model_validator(mode="wrap")
    @classmethod
    def _check_all(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        if isinstance(data, cls):
            return data
        values, problems = cls._collect(data)
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return handler(values)

    @classmethod
    def _collect(cls, data: Any) -> tuple[dict[str, Any], list[InitErrorDetails]]:
        """Check ``data`` field by field; return the fields that validated and every problem found."""
        names = list(cls.model_fields)
        if not isinstance(data, Mapping):
            return {}, [problem_at((), f"must be a mapping of {', '.join(names)}; got {shown(data)}", data)]
        problems = [problem_at(loc, message, data) for loc, message in cls._key_problems(data)]
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            if name not in data:
                if info.is_required():
                    problems.append(problem_at((name,), "required key is missing", data))
                else:
                    values[name] = info.get_default(call_default_factory=True)
                continue
            try:
                values[name] = _field_adapter(cls, name).validate_python(data[name])
            except ValidationError as error:
                problems += relocated(error, name)
        problems += [problem_at(loc, message, data) for loc, message in cls._check_together(values, data)]
        return values, problems

    @classmethod
    def _key_problems(cls, data: Mapping[Any, Any]) -> list[tuple[Loc, str]]:
        """One problem per key of ``data`` that is not a field."""
        allowed = ", ".join(cls.model_fields)
        return [((key,), f"unknown key (allowed: {allowed})") for key in data if key not in cls.model_fields]

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        """Problems between fields, as ``(location, message)`` pairs; none unless a subclass says otherwise.

        ``values`` holds the fields that validated (defaults filled in), ``data`` what was given: this runs even
        when other fields failed.
        """
        return []


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value
