"""Study keys for models from anywhere: layer entries (``layers[i]`` as a mapping) and ``population.checkpoint``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from ..config import Config, ConfigError, checked_by, is_integer, shown
from . import fields

__all__ = ["CheckpointOptions", "LayerEntry", "layer_entries"]


def _neurons(value: Any) -> str | None:
    if value is None or value in ("first", "last"):
        return value
    raise ValueError(f"must be first (axis 1) or last (the last axis); got {shown(value)}")


def _output(value: Any) -> int | str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    if is_integer(value) and not isinstance(value, bool) and value >= 0:
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

    select: Annotated[str, checked_by(fields.string)]
    neurons: Annotated[Literal["first", "last"] | None, checked_by(_neurons)] = None
    output: Annotated[int | str | None, checked_by(_output)] = None

    _path: ClassVar[str] = "layers[]"

    def to_dict(self) -> dict[str, Any]:
        """The keys given (options left out are not written).

        Returns
        -------
        dict
        """
        return {key: value for key, value in super().to_dict().items() if value is not None}


def _layer_entry(value: Any) -> str | LayerEntry:
    if isinstance(value, LayerEntry):
        return value
    if isinstance(value, Mapping):
        try:
            return LayerEntry.from_dict(value)
        except ConfigError as error:
            raise ValueError("; ".join(problem.removeprefix("layers[].") for problem in error.problems)) from None
    return fields.string(value)  # (a selector string, or what to say of anything else)


def _entry_key(entry: str | LayerEntry) -> str:
    return entry if isinstance(entry, str) else json.dumps(entry.to_dict(), sort_keys=True)


def layer_entries(*, non_empty: bool):
    """A check of a list of distinct layer entries: selector strings or :class:`LayerEntry` mappings.

    Parameters
    ----------
    non_empty : bool

    Returns
    -------
    callable
        Returns the entries as a tuple, strings as given and mappings as :class:`LayerEntry`.
    """
    return fields.distinct("layer selectors", non_empty=non_empty, item=_layer_entry, key=_entry_key,
                           show=lambda entry: repr(_entry_key(entry)))


class CheckpointOptions(Config):
    """Where a checkpoint file keeps its state dict: ``population.checkpoint``.

    Parameters
    ----------
    key : str, optional
        A dotted path of nested keys (``state_dict``, ``model.ema``) to the state dict.
    strip_prefix : str, optional
        Removed from the start of every parameter name that has it (DDP's ``module.``).
    """

    key: Annotated[str | None, checked_by(fields.optional_string)] = None
    strip_prefix: Annotated[str | None, checked_by(fields.optional_string)] = None

    _path: ClassVar[str] = "population.checkpoint"

    def to_dict(self) -> dict[str, Any]:
        """The keys given.

        Returns
        -------
        dict
        """
        return {key: value for key, value in super().to_dict().items() if value is not None}
