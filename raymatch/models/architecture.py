"""An architecture as a study file gives it (its ``architecture`` section): the zoo, torchvision, timm, a factory.

Or Hugging Face ``transformers`` (``source: transformers``): the population's models bring their own configs.

Checking one builds it on PyTorch's ``meta`` device (:mod:`raymatch.models.meta`): torch is imported then, not when
this module is.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import WrapValidator
from pydantic_core import InitErrorDetails

from ..config import Config, Loc, OptionalString, PositiveInt, PositiveNumber, local_path, one_of, optional, shown
from ..store import layout

if TYPE_CHECKING:
    from torch import nn

__all__ = ["HF_CLASSES", "SOURCES", "TORCH_DTYPES", "Architecture", "KeywordArguments"]


def _keyword_arguments(value: Any, _handler: Any) -> dict[str, Any]:
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


#: Keyword arguments (or null): a mapping of identifier strings to YAML/JSON values.
KeywordArguments = optional(Annotated[dict[str, Any], WrapValidator(_keyword_arguments)])

#: ``architecture.class``: which ``transformers`` auto class builds a ``source: transformers`` model.
HF_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM")
#: ``architecture.torch_dtype``: the dtype such a model runs in (activations are stored as float32 whatever it is).
TORCH_DTYPES = ("float32", "bfloat16", "float16")
#: ``architecture.source``: where a named model comes from; ``transformers`` models are the population's folders.
SOURCES = ("zoo", "torchvision", "timm", "transformers")
#: The keys of a ``source: transformers`` architecture (besides ``source``).
_TRANSFORMERS_KEYS = ("hf_class", "torch_dtype")


class Architecture(Config):
    """The architecture every model of the population shares: the zoo, torchvision, timm, a factory, transformers.

    Give ``name`` (a zoo model, or one of ``source``) or ``factory``; or ``source: transformers`` alone (with
    ``class`` and ``torch_dtype``): each model of the population is then a ``save_pretrained`` folder or a Hub id
    that brings its own config (:mod:`raymatch.models.transformers_source`).

    Parameters
    ----------
    name : str, optional
        One of :func:`~raymatch.models.available_models` (or ``plain{depth}``); with ``source``, a torchvision or
        timm model name.
    in_channels : int, default 3
    num_classes : int, default 10
    width : float, default 1.0
        Channel multiplier.
    input_size : int, default 32
        Height (= width) of the input images. The four size parameters are the zoo's only.
    source : {'zoo', 'torchvision', 'timm', 'transformers'}, optional
        Where ``name`` comes from (default the zoo); built without pretrained weights. ``transformers``: the models
        are the population's Hugging Face folders or Hub ids (no ``name``).
    factory : str, optional
        ``module:callable`` returning an ``nn.Module`` (``mypkg.nets:make_net``).
    kwargs : dict, optional
        Keyword arguments of the factory or of the torchvision/timm builder (written ``kwargs`` in a study file;
        :attr:`kwargs` is the zoo's size parameters, :attr:`call_kwargs` these).
    code : str, optional
        A local package folder holding the factory's module, shipped to every Ray worker (runtime_env
        ``py_modules``); in a study file a relative path resolves against the file's folder
        (:mod:`raymatch.config.paths`), elsewhere against the working directory. Its files' digest, not its path,
        is part of the config hash.
    class : {'AutoModel', 'AutoModelForCausalLM', 'AutoModelForMaskedLM'}, optional
        ``source: transformers`` only (:attr:`hf_class`): the ``transformers`` auto class that builds
        each model (default ``AutoModel``: the bare model, whose module names lack the head's prefix —
        ``h.0.mlp.act`` rather than ``transformer.h.0.mlp.act``).
    torch_dtype : {'float32', 'bfloat16', 'float16'}, optional
        ``source: transformers`` only: the dtype the models run in (default ``float32``); activations are stored as
        float32 whatever it is.
    """

    name: OptionalString = None
    in_channels: PositiveInt = 3
    num_classes: PositiveInt = 10
    width: PositiveNumber = 1.0
    input_size: PositiveInt = 32
    source: optional(one_of(*SOURCES)) = None
    factory: OptionalString = None
    call_kwargs: KeywordArguments = None
    code: local_path(OptionalString) = None
    hf_class: optional(one_of(*HF_CLASSES)) = None
    torch_dtype: optional(one_of(*TORCH_DTYPES)) = None

    _path: ClassVar[str] = "architecture"
    #: Field name → study-file key where they differ.
    _keys: ClassVar[dict[str, str]] = {"call_kwargs": "kwargs", "hf_class": "class"}
    _zoo_sizes: ClassVar[tuple[str, ...]] = ("in_channels", "num_classes", "width", "input_size")

    def __hash__(self) -> int:
        return hash(layout.canonical_json(self.to_dict()))

    @classmethod
    def _collect(cls, data: Any) -> tuple[dict[str, Any], list[InitErrorDetails]]:
        if isinstance(data, Mapping):
            fields = {written: name for name, written in cls._keys.items() if name not in data}
            data = {fields.get(key, key): value for key, value in data.items()}
        values, problems = super()._collect(data)
        for problem in problems:
            loc = tuple(problem.get("loc", ()))
            if loc[:1] and loc[0] in cls._keys:
                problem["loc"] = (cls._keys[loc[0]], *loc[1:])
        return values, problems

    @classmethod
    def _key_problems(cls, data: Mapping[Any, Any]) -> list[tuple[Loc, str]]:
        allowed = ", ".join(cls._keys.get(name, name) for name in cls.model_fields)
        return [((key,), f"unknown key (allowed: {allowed})") for key in data if key not in cls.model_fields]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler.resolve_ref_schema(handler(core_schema))
        properties = schema.get("properties", {})
        for name, written in cls._keys.items():
            if name in properties:
                properties[name] = {**properties[name], "title": written.capitalize()}
        schema["properties"] = {cls._keys.get(key, key): value for key, value in properties.items()}
        return schema

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        if len(values) < len(cls.model_fields):
            return []
        if values["source"] == "transformers":
            return cls._transformers_problems(values)
        problems: list[tuple[Loc, str]] = [((cls._keys.get(key, key),), "only used with source: transformers")
                                           for key in _TRANSFORMERS_KEYS if values[key] is not None]
        if problems:
            return problems
        if values["factory"] is None and values["name"] is None:
            return [(("name",), "required key is missing")]
        if values["factory"] is not None and values["name"] is not None:
            return [(("factory",), "give name or factory, not both")]
        zoo = values["factory"] is None and values["source"] in (None, "zoo")
        if zoo:
            problems += [((key,), "only used with factory or source: torchvision|timm") for key in
                         ("kwargs", "code") if values[cls._field(key)] is not None]
        else:
            problems += [((key,), "a size parameter of the zoo's models: give it in kwargs") for key in
                         cls._zoo_sizes if values[key] != cls.model_fields[key].default]
            if values["factory"] is None and values["code"] is not None:
                problems.append((("code",), "only used with factory"))
            if values["factory"] is not None and values["source"] is not None:
                problems.append((("source",), "only used with name"))
        return problems or cls._build_problems(values, zoo)

    @classmethod
    def _transformers_problems(cls, values: Mapping[str, Any]) -> list[tuple[Loc, str]]:
        """The keys a ``source: transformers`` architecture does not use (its models bring their configs)."""
        unused = [key for key in ("name", "factory", "call_kwargs", "code") if values[key] is not None]
        unused += [key for key in cls._zoo_sizes if values[key] != cls.model_fields[key].default]
        return [((cls._keys.get(key, key),), "not used with source: transformers (each model of the population "
                                              "brings its own config)") for key in unused]

    @classmethod
    def _build_problems(cls, values: Mapping[str, Any], zoo: bool) -> list[tuple[Loc, str]]:
        """The problem of building the architecture on the ``meta`` device, if any (this imports torch)."""
        from .factory import ArchitectureError
        from .meta import architecture_tree, module_tree

        try:
            if zoo:
                module_tree(values["name"], **{key: values[key] for key in cls._zoo_sizes})
            else:
                architecture_tree(layout.canonical_json(cls._content(values)))
        except ArchitectureError as error:
            return [((error.field,), error.message)]
        except ValueError as error:
            return [(("name",), str(error))]
        return []

    @classmethod
    def _field(cls, key: str) -> str:
        return next((name for name, written in cls._keys.items() if written == key), key)

    @classmethod
    def _content(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The study-file content of validated fields: the zoo's sizes for a zoo model, the new keys otherwise."""
        if values["source"] == "transformers":
            return {"source": "transformers", "class": values["hf_class"] or HF_CLASSES[0],
                    "torch_dtype": values["torch_dtype"] or TORCH_DTYPES[0]}
        if values["factory"] is None and values["source"] in (None, "zoo"):
            content = {"name": values["name"], **{key: values[key] for key in cls._zoo_sizes}}
            if values["source"] is not None:
                content["source"] = values["source"]
            return content
        return {cls._keys.get(key, key): values[key] for key in ("name", "source", "factory", "call_kwargs", "code")
                if values[key] is not None}

    def to_dict(self) -> dict[str, Any]:
        """The fields as in a study file: a zoo model as before (name and sizes), others by the keys given.

        Returns
        -------
        dict
        """
        return self._content({name: getattr(self, name) for name in type(self).model_fields})

    @property
    def is_zoo(self) -> bool:
        """Whether the architecture is a model of raymatch's zoo (trainable by the study, with a null baseline)."""
        return self.factory is None and self.source in (None, "zoo")

    @property
    def is_transformers(self) -> bool:
        """Whether the models are Hugging Face ``transformers`` folders or Hub ids (``source: transformers``)."""
        return self.source == "transformers"

    @property
    def model_class(self) -> str:
        """``class``: the ``transformers`` auto class of a ``source: transformers`` architecture (default AutoModel)."""
        return self.hf_class or HF_CLASSES[0]

    @property
    def dtype(self) -> str:
        """``torch_dtype`` of a ``source: transformers`` architecture (default float32)."""
        return self.torch_dtype or TORCH_DTYPES[0]

    @property
    def label(self) -> str:
        """What to call it: the zoo name, ``torchvision:resnet18``, the factory, or ``transformers:<class>``."""
        if self.factory is not None:
            return self.factory
        if self.is_transformers:
            return f"transformers:{self.model_class}"
        return self.name if self.is_zoo else f"{self.source}:{self.name}"

    @property
    def spec(self) -> dict[str, Any] | None:
        """What a Ray worker builds the model from (:func:`~raymatch.models.factory.build_architecture`).

        None for the zoo (built from :attr:`name` and :attr:`kwargs`).
        """
        return None if self.is_zoo else self.to_dict()

    @functools.cached_property
    def digest(self) -> str | None:
        """:func:`~raymatch.models.factory.architecture_digest`: what, besides the weights, makes a model's id.

        None for the zoo (its models' ids are their weights' digests, as they always were).
        """
        from .factory import architecture_digest

        if self.is_transformers:  # a language model's id digests its own weights and config, class and dtype
            return None
        return architecture_digest(self.spec)

    @functools.cached_property
    def code_digest(self) -> str | None:
        """:func:`~raymatch.models.factory.code_digest` of :attr:`code` (read once), or None without code."""
        from .factory import code_digest

        return code_digest(self.code) if self.code else None

    @property
    def runtime_env(self) -> dict[str, Any]:
        """The Ray runtime_env the workers need: ``py_modules`` with :attr:`code` (absolute), or empty."""
        return {"py_modules": [os.path.abspath(self.code)]} if self.code else {}

    def build(self) -> nn.Module:
        """A freshly initialised model (weights from the global RNG), via :func:`~raymatch.models.build_model`.

        Returns
        -------
        torch.nn.Module
        """
        from .factory import build_architecture

        return build_architecture(self.spec or {"name": self.name, **self.kwargs}, use_code_path=True)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The size parameters, as keyword arguments of :func:`~raymatch.models.build_model`."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "width": self.width,
                "input_size": self.input_size}

    def module_tree(self) -> nn.Module:
        """The architecture's modules on the ``meta`` device (no weights), shared between calls: do not modify.

        Returns
        -------
        torch.nn.Module
        """
        from .meta import architecture_tree, module_tree

        if self.is_transformers:
            raise ValueError("a transformers architecture has no module tree of its own: its models' configs give it "
                             "(raymatch.models.meta.lm_tree)")
        if not self.is_zoo:
            return architecture_tree(layout.canonical_json(self.to_dict()))
        return module_tree(self.name, **self.kwargs)
