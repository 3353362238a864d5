"""The JSON Schema of a study file: valid JSON Schema, every example study validates against it, and files with
problems it can see (an unknown key, a value out of range) do not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from raymatch.study import load_study, study_json_schema

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "jobs" / "examples").glob("**/*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = study_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors_of(validator: jsonschema.Draft202012Validator, data: dict) -> list[tuple[str, str]]:
    """``(path, validator keyword)`` of each schema error, e.g. ``('resources.pair_block', 'minimum')``."""
    return sorted((".".join(map(str, error.absolute_path)), error.validator) for error in validator.iter_errors(data))


def test_schema_is_plain_json():
    schema = study_json_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert schema["properties"]["eps"]["description"]


def test_there_are_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_validates(validator, path, tmp_path):
    data = yaml.safe_load(path.read_text())
    if "activations" in data["population"]:  # the files it imports are generated (none are shipped)
        from .test_imported_activations import _write_authors

        data["population"]["activations"]["dir"] = str(_write_authors(tmp_path / "authors"))
        path = tmp_path / path.name
        path.write_text(yaml.safe_dump(data))
    hub, corpus = data["population"].get("hub"), data["population"].get("training", {}).get("corpus")
    if not hub and (corpus is None or os.path.exists(corpus)):  # (Hub ids need a cache: test_lm_cluster_studies)
        load_study(path)  # (a study file the loader accepts …)
    assert errors_of(validator, data) == []  # (… is one the schema accepts)


def test_a_study_written_back_validates(validator):
    study = load_study(EXAMPLES[0]).replace(
        population={"training": {"seeds": [0, 1, 2], "recipe": "quick", "epochs": 2, "milestones": [1]}},
        probe={"dataset": "digits", "n_examples": 100, "rows": {"rows": 500, "repeats": 2}},
        architecture={"name": "small_cnn", "in_channels": 1, "width": 0.5, "input_size": 8},
        layers=["relu"], simple_matches={"enabled": False}, reference=None, pairs="consecutive",
    )
    assert errors_of(validator, study.to_dict()) == []


def test_a_bad_file_fails(validator):
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "jobs" / "examples" / "tiny.yaml").read_text())
    data["frobnicate"] = 1
    data["resources"] = {"pair_block": 0}
    assert errors_of(validator, data) == [("", "additionalProperties"), ("resources.pair_block", "minimum")]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"eps": [0.1, 1.5]}, ("eps.1", "maximum")),
        ({"eps": []}, ("eps", "minItems")),
        ({"probe": {"dataset": "mnist"}}, ("probe.dataset", "enum")),
        ({"probe": {"dataset": "digits", "rows": "some"}}, ("probe.rows", "anyOf")),
        ({"probe": {"dataset": "digits", "rows": {"rows": 10, "repeat": 2}}}, ("probe.rows", "anyOf")),
        ({"population": {"training": {"seeds": [0, 1], "lr": -1}}}, ("population.training", "anyOf")),
        ({"population": {"training": {"seeds": [0], "recipe": "quick"}}}, ("population.training", "anyOf")),
        ({"pairs": "star"}, ("pairs", "anyOf")),
        ({"name": "my study"}, ("name", "pattern")),
        ({"store": {"uri": "file://x", "secret": "s"}}, ("store", "additionalProperties")),
    ],
    ids=lambda value: str(value)[:40],
)
def test_schema_sees_types_ranges_and_keys(validator, change, expected):
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "jobs" / "examples" / "tiny.yaml").read_text())
    assert expected in errors_of(validator, {**data, **change})
