"""Path fields: local paths in a config file resolve against the file's folder, wherever the program runs.

A field that holds a local path (a folder of code, a probe's files, a data folder, imported activations) carries
the marker :data:`LOCAL_PATH` in its type (:func:`local_path`). :func:`resolve_paths` rewrites every relative path
of such a field in the data of a file, before the data is checked, to ``<base>/<path as written>``; a path that is
absolute, a URI (``s3://…``), ``~``-relative or empty is left as written. Joining without normalising keeps the path
as written recoverable: :func:`unresolved_paths` gives it back, so that what is derived from the text of a path (a
config hash) does not depend on where the file lies or the program runs.

Nested sections are followed through the field types: a :class:`~raymatch.config.Config` model in a field's type
(``ProbeSpec``, ``Architecture | None``) is searched for marked fields in turn, under the key the file spells
(a model's ``_keys`` maps field names to file keys; its ``_inline`` names nested models whose keys sit in its own
mapping, as a training spec's beside the seeds). A marked list holds one path per item.

A marked field is for a section that opens its files itself (a probe digests its files, an architecture its code, a
training spec its corpus), without the study around it. What the study's own code opens — a language-model
population's ``models`` (which may be Hub ids) and ``glob`` (store keys in an image study), a text probe's ``text``
and ``tokenizer`` — is not marked: it stays as written and is resolved where it is read, against the same folder
(``Study.base``), with :func:`resolve_path`.
"""

from __future__ import annotations

import functools
import os
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any

from .base import Config
from .types import OptionalPath

__all__ = ["LOCAL_PATH", "LocalPath", "OptionalLocalPath", "local_path", "path_fields", "resolve_path",
           "resolve_paths", "unresolved_paths"]


class LocalPath:
    """The marker of a field holding a local path (or a list of them); see :mod:`raymatch.config.paths`."""

    def __repr__(self) -> str:
        return "LOCAL_PATH"


#: Put in a field type's ``Annotated[...]`` metadata (or use :func:`local_path`) to mark a path field.
LOCAL_PATH = LocalPath()


def local_path(annotation: Any) -> Any:
    """``annotation`` marked as a local path field (relative values resolve against the file's folder).

    Parameters
    ----------
    annotation : type
        The field's type (a string type, its optional form, or a list of them).

    Returns
    -------
    type
    """
    return Annotated[annotation, LOCAL_PATH]


#: A local path or null (:data:`~raymatch.config.OptionalPath`), resolved against the file's folder.
OptionalLocalPath = local_path(OptionalPath)


def _marked(annotation: Any) -> bool:
    if typing.get_origin(annotation) is Annotated and any(item is LOCAL_PATH for item in annotation.__metadata__):
        return True
    return any(_marked(arg) for arg in typing.get_args(annotation) if not isinstance(arg, (str, int, float)))


def _models(annotation: Any) -> Iterator[type[Config]]:
    if isinstance(annotation, type) and issubclass(annotation, Config):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models(arg)


@functools.cache
def path_fields(model: type[Config]) -> tuple[tuple[str, ...], ...]:
    """Where the path fields of ``model`` sit in its file's data: one tuple of keys per field, nested ones included.

    Parameters
    ----------
    model : type of Config

    Returns
    -------
    tuple of tuple of str
        E.g. ``('architecture', 'code')``, ``('probe', 'path')``; a nested model inlined in its parent's mapping
        contributes its keys without its own.
    """
    keys: Mapping[str, str] = getattr(model, "_keys", {})
    inline = getattr(model, "_inline", ())
    found: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        here = () if name in inline else (keys.get(name, name),)
        if _marked(annotation):
            found.append(here)
        for nested in dict.fromkeys(_models(info.annotation)):
            found += [(*here, *inner) for inner in path_fields(nested)]
    return tuple(dict.fromkeys(found))


def _is_relative(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not (os.path.isabs(value) or "://" in value
                                                            or value.startswith("~"))


def resolve_path(base: str | None, path: str) -> str:
    """One local path made absolute against ``base`` (a study file's folder; None: the working directory).

    URIs (``s3://…``) are returned as they are, ``file://`` paths without the scheme, ``~`` expanded. For a value
    read where it is used; a path field's values are resolved when the file is read (:func:`resolve_paths`).

    Examples
    --------
    >>> resolve_path("/study", "models/seed0"), resolve_path("/study", "s3://bucket/x.txt")
    ('/study/models/seed0', 's3://bucket/x.txt')
    """
    if "://" in path and not path.startswith("file://"):
        return path
    path = os.path.expanduser(path.removeprefix("file://"))
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(base or os.getcwd(), path))


def _rewrite(data: Any, loc: tuple[str, ...], change: Callable[[Any], Any]) -> Any:
    """``data`` with the value at ``loc`` (each item of a list there) changed; ``data`` itself when nothing is.

    A section given as a model (``Study(probe=ProbeSpec(...))``) becomes its :meth:`~Config.to_dict` where it changes.
    """
    if isinstance(data, Config):
        content = data.to_dict()
        changed = _rewrite(content, loc, change)
        return data if changed is content else changed
    if not isinstance(data, Mapping) or not loc or loc[0] not in data:
        return data
    key, rest = loc[0], loc[1:]
    value = data[key]
    if rest:
        new = _rewrite(value, rest, change)
    elif isinstance(value, (list, tuple)):
        new = type(value)(change(item) for item in value)
    else:
        new = change(value)
    return data if new == value else {**data, key: new}


def resolve_paths(model: type[Config], data: Any, base: str) -> Any:
    """``data`` (a file's, before it is checked) with every relative path of a path field joined to ``base``.

    Parameters
    ----------
    model : type of Config
        The model ``data`` is for.
    data : object
        As read from the file; anything but a mapping is given back as is (its problems are the model's to report).
    base : str
        An absolute folder (the file's).

    Returns
    -------
    object
        A new mapping where a path changed (``<base>/<path>``, not normalised); ``data`` otherwise.

    Examples
    --------
    >>> from raymatch.probes import ProbeSpec
    >>> resolve_paths(ProbeSpec, {"dataset": "array", "path": "./x.npy"}, "/study")
    {'dataset': 'array', 'path': '/study/./x.npy'}
    """
    prefix = base.rstrip("/") + "/"
    for loc in path_fields(model):
        data = _rewrite(data, loc, lambda value: prefix + value if _is_relative(value) else value)
    return data


def unresolved_paths(model: type[Config], content: Any, base: str) -> Any:
    """The inverse of :func:`resolve_paths` on a model's :meth:`~raymatch.config.Config.to_dict`: paths as written.

    A path under ``<base>/`` loses that prefix (an absolute path written into the base folder reads as relative).

    Parameters
    ----------
    model : type of Config
    content : object
    base : str

    Returns
    -------
    object

    Examples
    --------
    >>> from raymatch.probes import ProbeSpec
    >>> unresolved_paths(ProbeSpec, {"dataset": "array", "path": "/study/./x.npy"}, "/study")
    {'dataset': 'array', 'path': './x.npy'}
    """
    prefix = base.rstrip("/") + "/"
    for loc in path_fields(model):
        content = _rewrite(content, loc, lambda value: value[len(prefix):] if isinstance(value, str)
                           and value.startswith(prefix) and len(value) > len(prefix) else value)
    return content
