"""The JSON Schema of a config model, each field described by the Parameters section of its model's docstring.

The numpy-style docstrings that document the models in code also document the files users write: an editor's
YAML language server shows a field's entry as its description, with docstring markup as plain backquotes.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

__all__ = ["describe", "described_schema"]


def _numpy_doc(model: type) -> tuple[str, dict[str, str]]:
    """A numpy-style docstring's summary paragraph, and each entry of its Parameters section as one line."""
    lines = inspect.cleandoc(model.__doc__ or "").splitlines()
    summary = " ".join(_first_paragraph(lines))
    parameters: dict[str, str] = {}
    if "Parameters" in lines:
        start = lines.index("Parameters") + 2
        name = None
        for line in lines[start:]:
            if line and not line.startswith(" "):
                if set(line) == {"-"}:  # the underline of the next section: its title was taken as a name
                    parameters.pop(name or "", None)
                    break
                name = line.split(" : ")[0].split(":")[0].strip()
                parameters[name] = ""
            elif line.strip() and name is not None:
                parameters[name] = f"{parameters[name]} {line.strip()}".strip()
    return summary, parameters


def _first_paragraph(lines: list[str]) -> list[str]:
    paragraph = []
    for line in lines:
        if not line.strip():
            break
        paragraph.append(line.strip())
    return paragraph


def _text(docstring: str) -> str:
    """Docstring markup as an editor shows it: a role ``:func:`~a.b``` as `b`, a double-backquoted literal as `x`."""
    role = re.compile(r":[\w:]+:`(~?)([^`]*)`")
    docstring = role.sub(lambda match: f"`{match[2].rsplit('.', 1)[-1] if match[1] else match[2]}`", docstring)
    return docstring.replace("``", "`")


def describe(schema: dict[str, Any], model: type) -> None:
    """Describe a model's JSON Schema from its numpy-style docstring, in place.

    Parameters
    ----------
    schema : dict
        The JSON Schema of ``model`` (or of a definition of its).
    model : type
        Its docstring's summary describes the model, each entry of its Parameters section the field of that name
        (a field that has a description keeps it).
    """
    summary, parameters = _numpy_doc(model)
    schema["description"] = _text(summary)
    for name, field_schema in schema.get("properties", {}).items():
        if parameters.get(name):
            field_schema.setdefault("description", _text(parameters[name]))


def described_schema(model: type[BaseModel], documented: Iterable[type[BaseModel]] = ()) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``model``, it and its definitions of ``documented`` described.

    Parameters
    ----------
    model : type
        A pydantic model.
    documented : iterable of type
        The models of its definitions to describe, found by the name pydantic gives their definitions (the class's).

    Returns
    -------
    dict
        JSON-able, with ``$schema`` first.
    """
    schema = model.model_json_schema(mode="validation")
    describe(schema, model)
    by_name = {item.__name__: item for item in documented}
    for name, definition in schema.get("$defs", {}).items():
        if name in by_name:
            describe(definition, by_name[name])
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
