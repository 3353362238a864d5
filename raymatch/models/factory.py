"""Architectures from anywhere: a user's ``module:callable``, torchvision or timm, besides the zoo.

An architecture is described by a plain mapping (a study's ``architecture`` section, as
:meth:`Architecture.to_dict <raymatch.study.Architecture.to_dict>` writes it), so that it travels to Ray workers
and is built there: :func:`build_architecture`.

- ``{factory: "mypkg.nets:make_net", kwargs: {...}, code: ./mypkg}``: ``make_net(**kwargs)`` must return an
  ``nn.Module``. ``code`` is a local package folder; on the driver its parent folder goes on ``sys.path`` (see
  :func:`import_factory`), on Ray workers it arrives through the runtime_env's ``py_modules``.
- ``{name: resnet18, source: torchvision | timm, kwargs: {...}}``: ``torchvision.models.get_model(name,
  weights=None, **kwargs)`` or ``timm.create_model(name, pretrained=False, **kwargs)`` (no weights are downloaded).
- ``{name: tiny, in_channels: …, …}``: :func:`~raymatch.models.build_model`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .zoo import build_model

__all__ = ["SOURCES", "ArchitectureError", "architecture_digest", "build_architecture", "code_digest", "import_factory",
           "import_source"]

#: Where a named architecture may come from.
SOURCES = ("zoo", "torchvision", "timm")

#: The zoo's size parameters.
ZOO_KEYS = ("in_channels", "num_classes", "width", "input_size")


class ArchitectureError(ValueError):
    """An architecture that cannot be built; ``field`` names the key of ``architecture`` at fault.

    Parameters
    ----------
    field : str
        ``factory``, ``kwargs``, ``code``, ``source`` or ``name``.
    message : str
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"architecture.{field}: {message}")
        self.field, self.message = field, message

    def __reduce__(self):
        return type(self), (self.field, self.message)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def add_code_path(code: str) -> None:
    """Make the package folder ``code`` importable in this process (its parent folder first on ``sys.path``).

    Raises
    ------
    ArchitectureError
        When ``code`` is not a folder.
    """
    folder = os.path.abspath(code)
    if not os.path.isdir(folder):
        raise ArchitectureError("code", f"{code} is not a folder (a Python package to ship to the workers)")
    parent = os.path.dirname(folder.rstrip(os.sep))
    if parent not in sys.path:
        sys.path.insert(0, parent)


def import_factory(path: Any, code: str | None = None) -> Callable[..., Any]:
    """The callable that ``path`` (``"package.module:callable"``, the callable may be dotted) names.

    Parameters
    ----------
    path : str
    code : str, optional
        A local package folder made importable first (:func:`add_code_path`).

    Returns
    -------
    callable

    Raises
    ------
    ArchitectureError
        A malformed path, a module that does not import, a callable that is not there or not callable.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ArchitectureError("factory", f"must be 'module:callable' (e.g. mypkg.nets:make_net); got {path!r}")
    if code is not None:
        add_code_path(code)
    module_name, attribute = path.split(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        where = f" (code: {code})" if code else " (give code: a package folder, or install it)"
        raise ArchitectureError("factory", f"module {error.name or module_name!r} not found{where}") from None
    except Exception as error:  # the user's module fails while importing
        raise ArchitectureError("factory", f"importing {module_name} failed: {_first_line(error)}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ArchitectureError("factory", f"{module_name} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ArchitectureError("factory", f"{path} is a {type(target).__name__}, not a callable")
    return target


def import_source(source: str) -> Any:
    """The ``torchvision.models`` module or the ``timm`` package, whichever ``source`` names.

    Raises
    ------
    ArchitectureError
        When it does not import here (not installed, or built against another torch).
    """
    try:
        return importlib.import_module("torchvision.models" if source == "torchvision" else "timm")
    except Exception as error:  # torchvision built for another torch fails with RuntimeError, not ImportError
        raise ArchitectureError("source", f"{source} does not import here ({_first_line(error)}); install a "
                                          f"{source} built for this torch, or use a factory") from None


def _call(function: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> nn.Module:
    try:
        inspect.signature(function).bind(**kwargs)
    except TypeError as error:
        raise ArchitectureError("kwargs", f"{what} does not take {dict(kwargs)}: {error}") from None
    except ValueError:  # no signature to inspect (a builtin): calling it will tell
        pass
    try:
        model = function(**kwargs)
    except TypeError as error:
        raise ArchitectureError("kwargs", f"{what}(**{dict(kwargs)}) failed: {_first_line(error)}") from None
    except Exception as error:
        raise ArchitectureError("factory", f"{what}(**{dict(kwargs)}) failed: {_first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ArchitectureError("factory", f"{what} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_architecture(spec: Mapping[str, Any], *, use_code_path: bool = False) -> nn.Module:
    """A freshly initialised model (weights from the global RNG) of an architecture given as a mapping.

    Parameters
    ----------
    spec : mapping
        ``factory`` (+ ``kwargs``, ``code``), ``name`` + ``source`` (+ ``kwargs``), or a zoo ``name`` with its
        size parameters.
    use_code_path : bool, default False
        Put ``code``'s parent folder on ``sys.path`` first (the driver; Ray workers get ``code`` as a py_module).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ArchitectureError
        When the architecture cannot be built; ``ValueError`` from the zoo for a bad zoo name.
    """
    kwargs = dict(spec.get("kwargs") or {})
    if spec.get("factory"):
        function = import_factory(spec["factory"], spec.get("code") if use_code_path else None)
        return _call(function, kwargs, spec["factory"])
    source = spec.get("source") or "zoo"
    if source == "zoo":
        return build_model(spec["name"], **{key: spec[key] for key in ZOO_KEYS if key in spec})
    module = import_source(source)
    if source == "torchvision":
        try:
            builder = module.get_model_builder(spec["name"])
        except ValueError as error:
            raise ArchitectureError("name", f"torchvision has no model {spec['name']!r} ({error})") from None
        return _call(builder, {"weights": None, **kwargs}, f"torchvision.models.{spec['name']}")
    if not module.is_model(spec["name"]):
        raise ArchitectureError("name", f"timm has no model {spec['name']!r}")
    return _call(lambda **given: module.create_model(spec["name"], pretrained=False, **given), kwargs,
                 f"timm.create_model({spec['name']!r})")


def code_digest(code: str) -> str:
    """SHA-256 of a package folder's ``.py`` files (relative paths and bytes, in sorted order), as 16 hex digits.

    The code's content decides the results, not where the folder lies: the digest goes into the config hash.

    Parameters
    ----------
    code : str
        A folder.

    Returns
    -------
    str
    """
    digest = hashlib.sha256()
    folder = os.path.abspath(code)
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, folder).encode() + b"\0")
                with open(path, "rb") as handle:
                    digest.update(handle.read() + b"\0")
    return digest.hexdigest()[:16]


def architecture_digest(spec: Mapping[str, Any] | None) -> str | None:
    """What besides the weights decides a non-zoo model's activations, as 16 hex digits; None for the zoo.

    Folded into model ids (:func:`~raymatch.models.checkpoint.model_id_of`), so that stored activations are never
    reused for the same weights in an edited architecture. It covers the factory or name and its kwargs, and:

    - with ``code``: :func:`code_digest` of the folder (not its path);
    - a factory without ``code``: the bytes of the factory module's source file (not what that module imports);
    - ``source: torchvision | timm``: the installed package's version.

    Parameters
    ----------
    spec : mapping or None
        :meth:`Architecture.to_dict <raymatch.study.Architecture.to_dict>` of a non-zoo architecture; None (the zoo)
        gives None.

    Returns
    -------
    str or None
    """
    if spec is None:
        return None
    content = {key: value for key, value in spec.items() if key != "code"}
    if spec.get("code"):
        content["code"] = code_digest(spec["code"])
    elif spec.get("factory"):
        content["module_source"] = _module_source_digest(spec["factory"].split(":")[0])
    elif spec.get("source") in ("torchvision", "timm"):
        from importlib import metadata

        try:
            content["version"] = metadata.version(spec["source"])
        except metadata.PackageNotFoundError:
            content["version"] = None
    data = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _module_source_digest(module_name: str) -> str | None:
    """SHA-256 (16 hex digits) of the file a module is loaded from, or None where it has none (a namespace)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    if not origin or not os.path.isfile(origin):
        return None
    with open(origin, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]
