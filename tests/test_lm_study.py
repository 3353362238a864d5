"""Language-model study files (issue 22, point 1): the keys of a transformers architecture, a population of folders,
a glob or Hub ids × seeds × revisions, a text probe and a causal-lm training, read from a study file; relative paths
resolve against the study file's folder, the config hash does not depend on where the study is, and the JSON Schema
describes every key. Revisions are the step axis of the trajectory pairs."""

from __future__ import annotations

import shutil

import jsonschema
import pytest
import yaml

from raymatch.cli import main
from raymatch.engine.planning import make_plan
from raymatch.study import Study, StudyError, load_study, study_json_schema
from raymatch.train.causal_lm import FORTUNES

from .lm_helpers import lm_study, lm_study_folder, neox, save_model, write_hub_repo, write_tokenizer


def write(folder, data, name="study.yaml") -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return lm_study_folder(tmp_path_factory.mktemp("lm-study"))


def test_a_study_of_folders_resolves_its_paths_against_the_study_file(folder, tmp_path, monkeypatch):
    path = write(folder, lm_study("file://" + str(tmp_path / "store")))
    monkeypatch.chdir(tmp_path)  # anywhere but the study's folder
    study = load_study(path)
    assert study.is_lm and study.base == str(folder)
    assert study.architecture.to_dict() == {"source": "transformers", "class": "AutoModelForCausalLM",
                                            "torch_dtype": "float32"}
    assert study.layer_names == ("transformer.h.0.mlp.act", "transformer.h.1.mlp.act", "hidden_states.1",
                                 "hidden_states.2")
    assert study.probe.is_text and study.probe.to_dict()["text"] == "texts.txt"  # as written
    assert study.text_probe.texts and study.probe_id == study.text_probe.id
    with pytest.raises(ValueError, match="tokenised texts"):
        study.probe.id  # noqa: B018 - the spec alone does not know the tokenizer
    again = Study.from_dict(study.to_dict())  # the study record: from anywhere
    assert again.config_hash == study.config_hash and again.probe_id == study.probe_id
    groups = make_plan(study, study.store.open()).groups
    assert [named.name for named in groups[0].models] == ["seed0", "seed1"]  # relative to the glob's folder
    assert groups[0].checkpoints == [str(folder / "lm-seeds" / "seed0"), str(folder / "lm-seeds" / "seed1")]


def test_the_config_hash_follows_content_not_location(folder, tmp_path):
    data = lm_study("file://" + str(tmp_path / "store"))
    first = load_study(write(folder, data))
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert load_study(write(moved, data)).config_hash == first.config_hash
    (moved / "texts.txt").write_text((folder / "texts.txt").read_text().replace("cat", "dog"))
    assert load_study(write(moved, data)).config_hash != first.config_hash
    listed = load_study(write(folder, {**data, "population": {"models": ["lm-seeds/seed0", "lm-seeds/seed1"]}}))
    assert listed.config_hash != first.config_hash and listed.layer_names == first.layer_names


def test_the_json_schema_describes_the_language_model_keys(folder, tmp_path):
    schema = study_json_schema()
    definitions = schema["$defs"]
    for section, keys in {"Architecture": ("class", "torch_dtype"), "Population": ("models", "hub", "seeds",
                                                                                    "revisions"),
                          "ProbeSpec": ("text", "format", "field", "max_length", "tokenizer", "tokens"),
                          "TokenOptions": ("special", "pool"), "Training": ("task", "corpus", "steps", "folder")
                          }.items():
        for key in keys:
            assert definitions[section]["properties"][key].get("description"), (section, key)
    assert schema["properties"]["base"]["description"]
    jsonschema.validate(lm_study("lm-store"), schema)
    jsonschema.validate(lm_study("lm-store", population={"hub": "org/lm-seed{seed}", "seeds": [0, 1],
                                                         "revisions": ["step10", "step20"]},
                                 probe={"text": "t.jsonl", "format": "jsonl", "field": "text",
                                        "tokens": {"pool": "mean"}, "tokenizer": "tok"}), schema)
    training = lm_study("lm-store", population={"training": {"seeds": [0, 1], "task": "causal-lm",
                                                             "corpus": FORTUNES, "steps": 10}})
    jsonschema.validate(training, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(lm_study("lm-store", architecture={"source": "transformers", "class": "AutoModelX"}),
                            schema)
    assert main(["schema"]) == 0


def test_the_training_spec_digests_its_corpus_not_its_path(tmp_path):
    corpus = tmp_path / "a" / "corpus.txt"
    corpus.parent.mkdir()
    corpus.write_text("one text\nanother text\n")
    copy = tmp_path / "b" / "corpus.txt"
    copy.parent.mkdir()
    shutil.copy(corpus, copy)
    store = "file://" + str(tmp_path / "store")

    def study(path):
        data = lm_study(store, population={"training": {"seeds": [0, 1], "task": "causal-lm", "corpus": str(path),
                                                        "steps": 5, "folder": str(tmp_path / "lms")}})
        data["probe"] = {"text": str(path), "n_examples": 2, "max_length": 16}
        return load_study(write(tmp_path, data))

    first, second = study(corpus), study(copy)
    assert first.population.training.spec.id == second.population.training.spec.id
    assert first.config_hash == second.config_hash
    assert first.text_probe is None  # its tokenizer is trained by the study
    with pytest.raises(ValueError, match="raymatch train"):
        first.probe_id  # noqa: B018
    assert first.layer_names == ("transformer.h.0.mlp.act", "transformer.h.1.mlp.act", "hidden_states.1",
                                 "hidden_states.2")
    groups = make_plan(first, first.store.open()).groups
    assert [group.name for group in groups] == ["trained"] and groups[0].train_todo == [0, 1]
    assert groups[0].checkpoints[0].startswith(str(tmp_path / "lms" / "trained-"))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hub cache holding org/lm-seed{0,1} at revisions step10, step20, step30 (tiny GPT-NeoX, one tokenizer)."""
    root = tmp_path_factory.mktemp("hub")
    tokenizer = write_tokenizer(root / "tokenizer")
    for seed in (0, 1):
        revisions = {}
        for step in (10, 20, 30):
            revisions[f"step{step}"] = save_model(neox(100 * seed + step, len(tokenizer)), root / f"s{seed}-{step}",
                                                  tokenizer)
        write_hub_repo(root / "cache", f"org/lm-seed{seed}", revisions)
    return root / "cache"


@pytest.mark.parametrize(("pairs", "trajectory"), [("consecutive", 4), ({"reference": "final"}, 4), ("all", 6)])
def test_hub_revisions_are_the_step_axis_of_the_trajectory_pairs(hub_cache, folder, tmp_path, monkeypatch, pairs,
                                                                   trajectory):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    data = lm_study("file://" + str(tmp_path / "store"), pairs=pairs,
                    population={"hub": "org/lm-seed{seed}", "seeds": [0, 1], "revisions": ["step10", "step20",
                                                                                           "step30"]},
                    layers=["gpt_neox.layers.*.mlp.act"])
    study = load_study(write(folder, data, "hub.yaml"))
    plan = make_plan(study, study.store.open())
    trained, along = plan.groups
    assert trained.checkpoints == ["org/lm-seed0@step30", "org/lm-seed1@step30"]  # each seed's last revision
    assert [named.model.step for named in along.models] == [10, 20, 30, 10, 20, 30]
    assert len(along.position_pairs) == trajectory
    assert all(along.models[i].model.seed == along.models[j].model.seed for i, j in along.position_pairs)
    assert plan.counts()["extract"] == (0, 6)


def test_a_revision_axis_refuses_a_reference_model(hub_cache, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    data = lm_study("file://" + str(tmp_path / "store"), pairs="reference", reference="org/lm-seed0@step30",
                    population={"hub": "org/lm-seed{seed}", "seeds": [0, 1], "revisions": ["step10", "step30"]},
                    layers=["gpt_neox.layers.*.mlp.act"])
    with pytest.raises(StudyError) as caught:
        load_study(write(folder, data, "hub.yaml"))
    assert caught.value.problems == ["pairs: reference (one model) does not apply along revisions: use {reference: "
                                     "final}, consecutive or all"]


def test_a_reference_is_a_models_name(folder, tmp_path):
    data = lm_study("file://" + str(tmp_path / "store"), pairs="reference", reference="seed1")
    study = load_study(write(folder, data))
    assert make_plan(study, study.store.open()).groups[0].reference == 1
    with pytest.raises(StudyError, match=r"reference: 'seed7' is not one of the population's models \(seed0, seed1"):
        load_study(write(folder, {**data, "reference": "seed7"}))


def test_keys_of_one_kind_of_architecture_are_refused_with_the_other(folder, tmp_path):
    store = "file://" + str(tmp_path / "store")
    zoo = {"name": "small_cnn", "in_channels": 1, "input_size": 8}
    with pytest.raises(StudyError) as caught:
        load_study(write(folder, lm_study(store, architecture=zoo, probe={"dataset": "digits"}, layers=["relu"],
                                          population={"models": ["a", "b"]})))
    assert caught.value.problems == ["population.models: only used with architecture: {source: transformers} "
                                     "(language models)"]
    with pytest.raises(StudyError) as caught:
        load_study(write(folder, lm_study(store, population={"checkpoints": ["a.safetensors", "b.safetensors"]})))
    assert caught.value.problems == ["population.checkpoints: a transformers architecture's models are "
                                     "save_pretrained folders or Hub ids: give population.models, glob or hub"]
    with pytest.raises(StudyError) as caught:
        load_study(write(folder, lm_study(store, probe={"dataset": "digits"})))
    assert caught.value.problems == ["probe: a transformers architecture's probe is a text: probe: {text: FILE, ...}"]


def test_the_models_table_has_name_revision_and_step_columns():
    from raymatch.results.schema import MODELS

    names = MODELS.names
    assert names[names.index("model_id") + 1] == "name" and MODELS.field("name").nullable
    assert {"revision", "step"} <= set(names)


def test_a_twin_folder_is_refused_as_the_same_model(tmp_path):
    root = tmp_path / "study"
    lm_study_folder(root)
    shutil.copytree(root / "lm-seeds" / "seed0", root / "lm-seeds" / "seed9")
    study = load_study(write(root, lm_study("file://" + str(tmp_path / "store"))))
    with pytest.raises(ValueError, match="are the same model"):
        make_plan(study, study.store.open())



def test_a_text_on_s3_is_read_through_the_studys_store(folder, s3_store, moto_endpoint, monkeypatch):
    from .conftest import BUCKET, S3_KEY, S3_SECRET

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)  # a study's credentials come from the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    s3_store.write_bytes("probes/texts.txt", (folder / "texts.txt").read_bytes())
    data = lm_study(f"s3://{BUCKET}/study", probe__text=f"s3://{BUCKET}/study/probes/texts.txt")
    data["store"]["endpoint_url"] = moto_endpoint
    local = load_study(write(folder, lm_study("file:///tmp/unused")))
    study = load_study(write(folder, data, "s3.yaml"))
    assert study.text_probe.texts == local.text_probe.texts and study.probe_id == local.probe_id
    missing = {**data, "probe": {**data["probe"], "text": f"s3://{BUCKET}/study/probes/absent.txt"}}
    with pytest.raises(StudyError, match=r"probe.text: s3://.*/absent.txt does not exist"):
        load_study(write(folder, missing, "s3.yaml"))
