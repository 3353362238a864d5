"""The config layer's field types: one message style for every problem, each rule stated once (issue 21, point 6).

Every section of a study file, the probe spec and the training spec are made of the types of
:mod:`raymatch.config.types`; ε is the kernel's own rule (:func:`raymatch.match.inputs.check_eps`).
"""

from __future__ import annotations

import math
import typing

import annotated_types
import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError, WrapValidator

import raymatch.extract.entries
import raymatch.extract.import_spec
import raymatch.models.architecture
import raymatch.probes
import raymatch.study
import raymatch.train.spec  # noqa: F401 (every config model defined)
from raymatch.config import (
    Boolean,
    Config,
    Eps,
    NonNegativeInt,
    NonNegativeNumber,
    OptionalPositiveInt,
    OptionalString,
    Path,
    PositiveInt,
    PositiveNumber,
    ProperFraction,
    Seeds,
    String,
    eps_grid,
    one_of,
    strings,
)
from raymatch.match.inputs import check_eps


def problems(annotation, value) -> list[tuple[tuple, str]]:
    """``(location, message)`` of each problem of ``value`` as ``annotation``."""
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(annotation).validate_python(value)
    return [(item["loc"], item["msg"].removeprefix("Value error, ")) for item in caught.value.errors()]


@pytest.mark.parametrize(("annotation", "value", "message"), [
    (PositiveInt, 0, "must be a positive integer; got 0"),
    (PositiveInt, True, "must be a positive integer; got true"),
    (PositiveInt, 2.0, "must be a positive integer; got 2.0"),
    (OptionalPositiveInt, -3, "must be a positive integer; got -3"),
    (NonNegativeInt, "1", "must be a non-negative integer; got '1'"),
    (PositiveNumber, math.inf, "must be a positive number; got inf"),
    (NonNegativeNumber, -0.5, "must be a non-negative number; got -0.5"),
    (ProperFraction, 1, "must be a number in [0, 1); got 1"),
    (Boolean, 1, "must be true or false; got 1"),
    (String, "", "must be a non-empty string; got ''"),
    (OptionalString, 3, "must be a non-empty string; got 3"),
    (Path, None, "must be a string path; got null"),
    (one_of("none", "mean"), "max", "must be one of none, mean; got 'max'"),
    (Eps, True, "must be a number; got true"),
    (Eps, 1.5, "must lie in [0, 1]; got 1.5"),
    (Seeds, [3], "need at least 2 distinct seeds; got [3]"),
    (strings("layer selectors"), "relu", "must be a list of layer selectors; got 'relu'"),
])
def test_every_problem_is_worded_one_way(annotation, value, message):
    assert problems(annotation, value) == [((), message)]


def test_a_list_reports_every_bad_item_and_every_repeat_under_its_index():
    assert problems(eps_grid(non_empty=True), [0.5, 1.5, "x", 0.5]) == [
        ((1,), "must lie in [0, 1]; got 1.5"), ((2,), "must be a number; got 'x'"),
        ((3,), "duplicate of item 0 (0.5)")]
    assert problems(eps_grid(non_empty=True), []) == [((), "must not be empty")]
    assert TypeAdapter(eps_grid(non_empty=False)).validate_python([0.5, np.float32(0.25), 0]) == (0.0, 0.25, 0.5)


def test_numpy_values_are_taken_as_python_values():
    assert TypeAdapter(PositiveInt).validate_python(np.int64(3)) == 3
    assert TypeAdapter(Boolean).validate_python(np.bool_(True)) is True
    assert TypeAdapter(PositiveNumber).validate_python(np.float32(0.5)) == 0.5


def test_the_eps_schema_says_what_check_eps_accepts():
    schema = TypeAdapter(Eps).json_schema()
    low, high = schema["minimum"], schema["maximum"]
    assert check_eps(low) == low and check_eps(high) == high
    for outside in (np.nextafter(low, -1), np.nextafter(high, 2)):
        with pytest.raises(ValueError, match="must lie in"):
            check_eps(outside)
        assert problems(Eps, outside)[0][1].startswith("must lie in [0, 1]; got")


def _models(base: type = Config) -> list[type]:
    found = []
    for model in base.__subclasses__():
        found += [model, *_models(model)]
    return found


def _metadata(annotation) -> list:
    """Every ``Annotated`` metadata item inside a type (unions, tuples and optionals included)."""
    found = list(getattr(annotation, "__metadata__", ()))
    for argument in typing.get_args(annotation):
        if argument is not Ellipsis and not isinstance(argument, (str, int)):
            found += _metadata(argument)
    return found


def _is_checked_by(item) -> bool:
    return isinstance(item, WrapValidator) and item.func.__qualname__.startswith("checked_by.")


def test_no_field_states_a_rule_twice():
    """No field has a pydantic constraint beside a ``checked_by`` function that would check it again."""
    constraints = (annotated_types.BaseMetadata,)
    twice = []
    models = _models()
    assert {"Study", "Architecture", "ProbeSpec", "TrainingSpec", "Training", "ActivationImport"} <= {
        model.__name__ for model in models}
    for model in models:
        for name, info in model.model_fields.items():
            items = [*info.metadata, *_metadata(info.annotation)]
            if any(_is_checked_by(item) for item in items) and any(isinstance(item, constraints) for item in items):
                twice.append(f"{model.__name__}.{name}")
    assert twice == []
