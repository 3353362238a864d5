"""Layer entries as a study file gives them (``layers``): selector strings, or mappings that say more.

A mapping also says how the layer's output becomes neurons over rows (:mod:`.outputs` applies it). No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import TypeAdapter, ValidationError, WrapValidator

from ..config import Config, ConfigError, String, distinct, is_integer, is_list, one_of, optional, shown

__all__ = ["LayerEntries", "LayerEntry", "valid_entries"]

_string = TypeAdapter(String).validate_python


def _output(value: Any, _handler: Any) -> int | str:
    if isinstance(value, str) and value:
        return value
    if is_integer(value) and value >= 0:
        return int(value)
    raise ValueError(f"must be an index (0, 1, …) of a tuple output or a key of a dict output; got {shown(value)}")


class LayerEntry(Config):
    """A layer entry given as a mapping: which layers, which axis holds the neurons, which element of the output.

    Parameters
    ----------
    select : str
        A selector as a plain entry is (module name, glob, type, ``name#k``).
    neurons : {'first', 'last'}, optional
        ``last``: the last axis holds the neurons and every other axis rows ((N, T, D) → D neurons over N·T rows);
        ``first``: axis 1 does ((N, C, L) → C neurons over N·L rows). Required for a 3-D output.
    output : int or str, optional
        The element of a tuple/list (an index) or dict (a key) output to take.
    """

    select: String
    neurons: optional(one_of("first", "last")) = None
    output: optional(Annotated[int | str, WrapValidator(_output)]) = None

    _path: ClassVar[str] = "layers[]"

    def to_dict(self) -> dict[str, Any]:
        """The keys given (options left out are not written).

        Returns
        -------
        dict
        """
        return {key: value for key, value in super().to_dict().items() if value is not None}


def _layer_entry(value: Any, _handler: Any) -> str | LayerEntry:
    if isinstance(value, LayerEntry):
        return value
    if isinstance(value, Mapping):
        try:
            return LayerEntry.from_dict(value)
        except ConfigError as error:
            raise ValueError("; ".join(problem.removeprefix("layers[].") for problem in error.problems)) from None
    return _string(value)  # (a selector string, or what to say of anything else)


def _entry_key(entry: str | LayerEntry) -> str:
    return entry if isinstance(entry, str) else json.dumps(entry.to_dict(), sort_keys=True)


_Entry = Annotated[str | LayerEntry, WrapValidator(_layer_entry)]
#: The study's layers: distinct selector strings or :class:`LayerEntry` mappings, at least one.
LayerEntries = distinct(_Entry, "layer selectors", non_empty=True, key=_entry_key,
                        show=lambda entry: repr(_entry_key(entry)))
_entry = TypeAdapter(_Entry).validate_python


def valid_entries(given: Any) -> list[tuple[int, str | LayerEntry]]:
    """The entries of a ``layers`` list that are valid on their own, with their indices (the others have problems).

    Parameters
    ----------
    given : object
        ``layers`` as given.

    Returns
    -------
    list of (int, str or LayerEntry)
        Empty when ``given`` is no list.
    """
    found = []
    for index, item in enumerate(given if is_list(given) else ()):
        try:
            found.append((index, _entry(item)))
        except ValidationError:
            continue
    return found
