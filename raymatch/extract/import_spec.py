"""A study's ``population.activations``: activations computed elsewhere, imported instead of extracted.

The files themselves are read by :mod:`raymatch.extract.imported`; this module is only their description (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, WrapValidator

from ..config import Config, Loc, OptionalString, Seeds, String, distinct, local_path, one_of, optional
from ..store.store import check_name

__all__ = ["ActivationImport", "ModelNames", "PathTemplate"]

#: Model names of imported activations: distinct, each usable as part of a store key.
ModelNames = distinct(Annotated[String, AfterValidator(lambda name: check_name(name, "model name"))], "model names")


def _path_template(text: str) -> str:
    if text.count("{model}") != 1 or text.count("{layer}") != 1:
        raise ValueError(f"must hold {{model}} and {{layer}} once each (acts/{{model}}/{{layer}}.npy); got {text!r}")
    return text


#: The ``npy`` layout's path template, with ``{model}`` and ``{layer}`` once each (or null).
PathTemplate = optional(Annotated[String, AfterValidator(_path_template)])


def _unless_empty(value: Any, handler: Any) -> Any:
    return () if value == () else handler(value)  # () is the default of layout npy, given back by replace()


class ActivationImport(Config):
    """Activations computed elsewhere, imported instead of extracted (:mod:`raymatch.extract.imported` reads them).

    Parameters
    ----------
    layout : {'authors-npz', 'npy'}
        ``authors-npz``: ``<dir>/rnd_<seed>/<prefix>.npz`` per seed, one array per layer, models named
        ``seed<k>``. ``npy``: one ``.npy`` per (model, layer) at ``path`` with ``{model}`` and ``{layer}`` filled in.
    dir, prefix : str
        ``authors-npz`` only.
    seeds : tuple of int
        ``authors-npz`` only: at least two distinct seeds, in population order.
    path : str
        ``npy`` only: a template such as ``acts/{model}/{layer}.npy`` (in a study file relative paths resolve
        against the file's folder); every file matching it with ``{layer}`` free is a layer.
    models : tuple of str
        ``npy`` only: at least two distinct model names, in population order.
    """

    layout: one_of("authors-npz", "npy")
    dir: local_path(OptionalString) = None
    prefix: OptionalString = None
    seeds: Annotated[Seeds, WrapValidator(_unless_empty)] = ()
    path: local_path(PathTemplate) = None
    models: ModelNames = ()

    _path: ClassVar[str] = "population.activations"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        kind = values.get("layout")
        if kind is None:
            return []
        needed = ("dir", "prefix", "seeds") if kind == "authors-npz" else ("path", "models")
        problems: list[tuple[Loc, str]] = [((key,), f"required with layout {kind}") for key in needed
                                           if not data.get(key)]
        problems += [((key,), f"not used with layout {kind} (it uses {', '.join(needed)})")
                     for key, info in cls.model_fields.items()
                     if key not in ("layout", *needed) and values.get(key) not in (None, info.default)]
        if kind == "npy" and len(values.get("models", ())) == 1:
            problems.append((("models",), "a study needs at least 2 models; got 1"))
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The fields of the layout, as in a study file.

        Returns
        -------
        dict
        """
        needed = ("dir", "prefix", "seeds") if self.layout == "authors-npz" else ("path", "models")
        return {key: value for key, value in super().to_dict().items() if key in ("layout", *needed)}

    @property
    def model_names(self) -> list[str]:
        """The models in population order: ``seed<k>`` (``authors-npz``) or the listed names (``npy``)."""
        return [f"seed{seed}" for seed in self.seeds] if self.layout == "authors-npz" else list(self.models)
