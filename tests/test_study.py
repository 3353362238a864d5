"""Study files: the example loads, studies round-trip, the config hash is pinned and blind to how a study runs, pair
policies, and a catalogue of bad files whose every problem is reported at once under its exact field path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from raymatch.models import available_models
from raymatch.probes import ProbeSpec, RowSample
from raymatch.store import Store
from raymatch.study import (
    Architecture,
    Population,
    Resources,
    SimpleMatchesConfig,
    StoreConfig,
    Study,
    StudyError,
    load_study,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "tiny.yaml"
SMALL_CNN_LEAVES = "conv1, relu1, conv2, relu2, pool, flatten, fc1, relu3, fc2"
CREDENTIALS = "credentials do not belong in a study file; pass them through the environment (runtime_env on a cluster)"
TOP_LEVEL_KEYS = (
    "name, store, population, architecture, probe, layers, eps, pairs, reference, simple_matches, cka, measures, "
    "svcca_keep, null_baseline, center, cross_layers, resources, base"
)


@pytest.fixture(scope="module")
def example() -> Study:
    return load_study(EXAMPLE)


def example_data() -> dict:
    """The example study file as plain data, for tests to break."""
    return yaml.safe_load(EXAMPLE.read_text())


def problems_of(data: dict | str) -> list[str]:
    """The problems ``load_study`` reports for a study given as data (dumped to YAML text) or as YAML text."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(StudyError) as caught:
        load_study(text)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def edited(**changes) -> dict:
    """The example's data with ``changes`` applied; a key ``a__b`` sets ``data['a']['b']``, ``None`` deletes."""
    data = example_data()
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return data


# ---------------------------------------------------------------------------------------------------- the example


def test_example_loads(example):
    assert example.name == "tiny-digits"
    assert example.store == StoreConfig("file://./raymatch-store")
    assert example.population == Population(
        checkpoints=tuple(f"checkpoints/tiny/seed{seed}.safetensors" for seed in range(3))
    )
    assert example.architecture == Architecture("small_cnn", in_channels=1, num_classes=10, width=0.5, input_size=8)
    assert example.probe == ProbeSpec("digits", "test", n_examples=200, seed=0, rows="all")
    assert example.layers == ("relu",)
    assert example.layer_names == ("relu1", "relu2", "relu3")
    assert example.eps == (0.15, 0.25, 0.5)
    assert example.pairs == "all"
    assert example.reference is None
    assert example.simple_matches == SimpleMatchesConfig(enabled=True, eps=(0.25,), layers=("relu2",))
    assert example.cka is True and example.center is False


def test_example_builds_its_architecture(example):
    model = example.architecture.build()
    assert [name for name, _ in model.named_children()] == SMALL_CNN_LEAVES.split(", ")
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 8  # 16 channels at width 1


def test_loading_leaves_the_store_and_the_global_rng_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    study = load_study(yaml.safe_dump(edited(architecture__width=0.375)))  # a size no other test builds
    assert study.layer_names == ("relu1", "relu2", "relu3")
    assert torch.equal(torch.rand(3), expected)
    assert list(tmp_path.iterdir()) == []


def test_store_config_opens_a_store(example, tmp_path):
    store = StoreConfig(f"file://{tmp_path}/store").open()
    assert isinstance(store, Store)
    assert store.root == f"{tmp_path}/store"
    assert not (tmp_path / "store").exists()
    assert example.store.open().uri == "file://./raymatch-store"


# ----------------------------------------------------------------------------------------- round trip and hashing


def test_round_trip(example):
    data = example.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Study.from_dict(data) == example
    assert load_study(yaml.safe_dump(data)) == example
    assert data["eps"] == [0.15, 0.25, 0.5]
    assert data["probe"] == {"dataset": "digits", "split": "test", "n_examples": 200, "seed": 0, "rows": "all",
                             "data_dir": None}


def test_round_trip_with_every_field_set():
    study = Study(
        name="vgg11.population-2",
        store={"uri": "s3://bucket/studies", "endpoint_url": "http://127.0.0.1:9000"},
        population={"glob": "checkpoints/vgg11/*.safetensors"},
        architecture={"name": "vgg11_bn", "width": 0.25},
        # (3000 images: the 2×2 layers of features.* have 12,000 rows to sample 10,000 from; 1000 had only 4000)
        probe=ProbeSpec("cifar10", "test", n_examples=3000, rows=RowSample(10_000, repeats=16, seed=3)),
        layers=["features.*", "linear"],
        eps=[0.5, 0, 1],
        pairs="reference",
        reference="checkpoints/vgg11/seed0.safetensors",
        simple_matches={"enabled": True, "eps": [0.3, 0.1], "layers": ["classifier.0"], "max_neurons": 64},
        cka=False,
        center=True,
        resources={"gpus_per_actor": 0.25, "cpus_per_task": 2, "pair_block": 16, "max_in_flight": 32},
    )
    assert study.eps == (0.0, 0.5, 1.0)
    assert study.simple_matches.eps == (0.1, 0.3)
    assert isinstance(study.store, StoreConfig) and isinstance(study.resources, Resources)
    assert Study.from_dict(study.to_dict()) == study
    assert load_study(yaml.safe_dump(study.to_dict())) == study


def test_config_hash_is_pinned(example):
    # Pinned so that a change of the canonical form, which would orphan every stored result, cannot pass unnoticed.
    assert example.config_hash == "24e0fdf19e1f9e2b"  # 0.1.0: 8ac510d4803a893e (it hashed the ε grid too)
    assert Study.from_dict(example.to_dict()).config_hash == example.config_hash


@pytest.mark.parametrize(
    "change",
    [
        {"resources": Resources(gpus_per_actor=0.5, cpus_per_task=4, pair_block=32, max_in_flight=2)},
        {"store": StoreConfig("s3://bucket/prefix", endpoint_url="http://127.0.0.1:9000")},
        {"eps": (0.15, 0.25)},  # a row holds the pair's whole ε-curve: any ε is a query
        {"eps": (0.15, 0.25, 0.5, 0.75)},
        {"simple_matches": SimpleMatchesConfig()},  # simple-match rows carry their ε and settings themselves
        {"null_baseline": True},  # the baseline's rows carry population = 'untrained'
    ],
    ids=["resources", "store", "fewer eps", "more eps", "simple_matches", "null_baseline"],
)
def test_config_hash_ignores_what_changes_no_stored_row(example, change):
    assert example.replace(**change).config_hash == example.config_hash


def test_config_hash_ignores_the_probe_data_dir(example):
    fashion = example.replace(architecture=Architecture("small_cnn", in_channels=1, width=0.5, input_size=28),
                              probe=ProbeSpec("fashion-mnist", "test", n_examples=200))
    moved = fashion.replace(probe=fashion.probe.replace(data_dir="/elsewhere"))
    assert moved.config_hash == fashion.config_hash


@pytest.mark.parametrize(
    "change",
    [
        {"layers": ("relu2",)},
        {"layers": ("relu", "conv")},
        {"probe": ProbeSpec("digits", "test", n_examples=200, seed=1)},
        {"architecture": Architecture("small_cnn", in_channels=1, width=1.0, input_size=8)},
        {"population": Population(checkpoints=("checkpoints/tiny/seed0.safetensors", "checkpoints/other.safetensors"))},
        {"pairs": "consecutive"},
        {"center": True},
        {"cka": False},
        {"name": "tiny-digits-2"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_config_hash_follows_what_determines_results(example, change):
    assert example.replace(**change).config_hash != example.config_hash


def test_eps_order_does_not_change_the_study(example):
    reordered = load_study(yaml.safe_dump(edited(eps=[0.5, 0.15, 0.25])))
    assert reordered == example and reordered.config_hash == example.config_hash


# ----------------------------------------------------------------------------------------------------- pair policies

IDS = ["a", "b", "c", "d"]


def test_all_pairs(example):
    assert example.pairs_of(IDS) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]


def test_reference_pairs(example):
    study = example.replace(pairs="reference", reference="checkpoints/tiny/seed1.safetensors")
    keys = [*study.population.checkpoints, "checkpoints/tiny/seed3.safetensors"]
    assert study.pairs_of(keys) == [(keys[1], keys[0]), (keys[1], keys[2]), (keys[1], keys[3])]
    with pytest.raises(ValueError, match=r"reference 'checkpoints/tiny/seed1\.safetensors' is not among the 4"):
        study.pairs_of(IDS)


def test_consecutive_pairs(example):
    study = example.replace(pairs="consecutive")
    assert study.pairs_of(IDS) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert study.pairs_of(IDS[::-1]) == [("d", "c"), ("c", "b"), ("b", "a")]


def test_pairs_of_rejects_repeated_ids(example):
    with pytest.raises(ValueError, match="repeated: 'b'"):
        example.pairs_of(["a", "b", "c", "b"])


# ----------------------------------------------------------------------------------------------------- bad files


def test_malformed_yaml_names_line_and_column(tmp_path):
    text = "name: tiny\nstore:\n  uri: file://./store\n   endpoint_url: x\n"
    assert problems_of(text) == [
        "<study text>: malformed YAML at line 4, column 16: mapping values are not allowed here"
    ]
    path = tmp_path / "study.yaml"
    path.write_text("name: tiny\neps: [0.1, 0.2\nlayers: [relu]\n")
    with pytest.raises(StudyError) as caught:
        load_study(path)
    assert caught.value.problems == [f"{path}: malformed YAML at line 3, column 7: expected ',' or ']', but got ':'"]


def test_repeated_keys_are_rejected():
    assert problems_of("name: tiny\neps: [0.1]\nlayers: [relu]\neps: [0.2]\n") == [
        "<study text>: malformed YAML at line 4, column 1: duplicate key 'eps' (first at line 2)"
    ]


def test_exponents_without_a_dot_read_as_numbers():
    study = load_study(yaml.safe_dump(edited(eps=[0.5])).replace("0.5", "5e-1"))
    assert study.eps == (0.5,)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- name: tiny\n- eps: [0.1]\n", "a list"), ("just a string\n", "a string ('just a string')"),
     ("\n", "an empty document")],
)
def test_top_level_must_be_a_mapping(text, kind):
    assert problems_of(text) == [
        f"<study text>: the top level must be a mapping of study fields ({TOP_LEVEL_KEYS}); got {kind}"
    ]


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_study(tmp_path / "absent.yaml")


def test_missing_required_keys_are_listed_together():
    assert problems_of("cka: true\n") == [
        f"{key}: required key is missing"
        for key in ("name", "store", "population", "layers", "eps", "architecture", "probe")
    ]  # (architecture and probe: optional when population.activations imports activations)


CATALOGUE = {
    # unknown keys
    "unknown top-level key": (edited(frobnicate=1), [f"frobnicate: unknown key (allowed: {TOP_LEVEL_KEYS})"]),
    "unknown architecture key": (
        edited(architecture__depth=11),
        ["architecture.depth: unknown key (allowed: name, in_channels, num_classes, width, input_size, source, "
         "factory, kwargs, code, class, torch_dtype)"],
    ),
    "unknown resources key": (
        edited(resources__gpus=1),
        ["resources.gpus: unknown key (allowed: gpus_per_actor, cpus_per_task, pair_block, max_in_flight, "
         "match_gpus_per_actor, match_kernel)"],
    ),
    "unknown simple_matches key": (
        edited(simple_matches__epsilon=[0.1]),
        ["simple_matches.epsilon: unknown key (allowed: enabled, eps, layers, max_neurons)"],
    ),
    "unknown probe key": (
        edited(probe__sized=10),
        ["probe.sized: unknown key (allowed: dataset, split, n_examples, seed, rows, data_dir, path, size, mean, std, "
         "key, layout, scale, column, text, format, field, max_length, tokenizer, tokens)"],
    ),
    "probe key the dataset does not use": (
        edited(probe__size=[8, 8]),
        ["probe.size: not used by dataset digits (it uses rows, split, n_examples, seed)"],
    ),
    "data_dir with digits": (
        edited(probe__data_dir="/some/png/folder"),
        ["probe.data_dir: not used by dataset digits (it uses rows, split, n_examples, seed)"],
    ),
    "unknown probe.rows key": (
        edited(probe__rows={"rows": 100, "repeat": 2}),
        ["probe.rows.repeat: unknown key (allowed: rows, repeats, seed)"],
    ),
    "missing nested required key": (edited(architecture__name=None), ["architecture.name: required key is missing"]),
    # wrong types
    "eps not a list": (edited(eps="abc"), ["eps: must be a list of numbers; got 'abc'"]),
    "eps item not a number": (edited(eps=[0.1, "x"]), ["eps[1]: must be a number; got 'x'"]),
    "layers not a list": (edited(layers="relu"), ["layers: must be a list of layer selectors; got 'relu'"]),
    "layer not a string": (edited(layers=["relu", 3]), ["layers[1]: must be a non-empty string; got 3"]),
    "name not a string": (edited(name=12), ["name: must be a non-empty string; got 12"]),
    "cka not a boolean": (edited(cka="maybe"), ["cka: must be true or false; got 'maybe'"]),
    "section not a mapping": (
        edited(resources=[1, 2]),
        ["resources: must be a mapping of gpus_per_actor, cpus_per_task, pair_block, max_in_flight, "
         "match_gpus_per_actor, match_kernel; got [1, 2]"],
    ),
    "width not a number": (
        edited(architecture__width="wide"),
        ["architecture.width: must be a positive number; got 'wide'"],
    ),
    "checkpoints not a list": (
        edited(population__checkpoints="checkpoints/tiny/seed0.safetensors"),
        ["population.checkpoints: must be a list of checkpoint keys; got 'checkpoints/tiny/seed0.safetensors'"],
    ),
    # eps
    "eps above 1": (edited(eps=[0.15, 1.5]), ["eps[1]: must lie in [0, 1]; got 1.5"]),
    "eps below 0": (edited(eps=[-0.1, 0.5]), ["eps[0]: must lie in [0, 1]; got -0.1"]),
    "eps empty": (edited(eps=[]), ["eps: must not be empty"]),
    "eps null": ({**example_data(), "eps": None}, ["eps: must be a list of numbers; got null"]),
    "eps duplicate": (edited(eps=[0.25, 0.5, 0.25]), ["eps[2]: duplicate of eps[0] (0.25)"]),
    "eps boolean": (edited(eps=[True]), ["eps[0]: must be a number; got true"]),
    # layers
    "unknown layer": (
        edited(layers=["relu", "features.99"]),
        [f"layers[1]: unknown layer 'features.99'; available: {SMALL_CNN_LEAVES} "
         "(or a glob, or one of the types relu, conv, linear, bn)"],
    ),
    "every unknown layer": (
        edited(layers=["nope", "relu", "fc*", "bn"]),
        [f"layers[0]: unknown layer 'nope'; available: {SMALL_CNN_LEAVES} "
         "(or a glob, or one of the types relu, conv, linear, bn)",
         f"layers[3]: unknown layer 'bn'; available: {SMALL_CNN_LEAVES} "
         "(or a glob, or one of the types relu, conv, linear, bn)"],
    ),
    "duplicate layer": (edited(layers=["relu", "conv", "relu"]), ["layers[2]: duplicate of layers[0] ('relu')"]),
    "layers empty": (edited(layers=[]), ["layers: must not be empty"]),
    "simple_matches layer outside the study's": (
        edited(layers=["relu1", "relu3"]),
        ["simple_matches.layers[0]: 'relu2' selects relu2, which the study's layers do not include (relu1, relu3)"],
    ),
    "simple_matches layer unknown": (
        edited(simple_matches__layers=["relu9"]),
        [f"simple_matches.layers[0]: unknown layer 'relu9'; available: {SMALL_CNN_LEAVES} "
         "(or a glob, or one of the types relu, conv, linear, bn)"],
    ),
    "simple_matches eps out of range": (
        edited(simple_matches__eps=[0.25, 2]),
        ["simple_matches.eps[1]: must lie in [0, 1]; got 2"],
    ),
    "simple_matches enabled without eps or layers": (
        edited(simple_matches={"enabled": True}),
        ["simple_matches.eps: must not be empty when simple matches are enabled",
         "simple_matches.layers: must not be empty when simple matches are enabled"],
    ),
    # architecture: reported once, layers left unchecked
    "unknown architecture": (
        edited(architecture__name="resnet50", layers=["features.99"]),
        [f"architecture.name: unknown model 'resnet50'; available: {', '.join(available_models())} "
         "(and plain{depth} for depth = 6n + 2 from 20 to 110)"],
    ),
    "architecture sizes": (
        edited(architecture__in_channels=0, architecture__input_size=8.5),
        ["architecture.in_channels: must be a positive integer; got 0",
         "architecture.input_size: must be a positive integer; got 8.5"],
    ),
    # probe
    "unknown dataset": (
        edited(probe__dataset="imagenet"),
        ["probe.dataset: must be one of digits, fashion-mnist, cifar10, images, array, table, imported, text; got "
         "'imagenet'"],
    ),
    "probe repeats 0": (
        edited(probe__rows={"rows": 100, "repeats": 0}),
        ["probe.rows.repeats: must be a positive integer; got 0"],
    ),
    "probe without dataset": (edited(probe__dataset=None), ["probe.dataset: required key is missing"]),
    "probe not a mapping": (
        edited(probe="digits"),
        ["probe: must be a mapping of dataset, split, n_examples, seed, rows, data_dir, path, size, mean, std, key, "
         "layout, scale, column, text, format, field, max_length, tokenizer, tokens; got 'digits'"],
    ),
    # pairs
    "unknown pair policy": (edited(pairs="star"), ["pairs: must be one of all, reference, consecutive; got 'star'"]),
    "reference policy without reference": (
        edited(pairs="reference"),
        ["reference: required when pairs is 'reference'"],
    ),
    "reference outside the population": (
        edited(pairs="reference", reference="checkpoints/tiny/seed7.safetensors"),
        ["reference: 'checkpoints/tiny/seed7.safetensors' is not one of population.checkpoints"],
    ),
    "reference without the reference policy": (
        edited(reference="checkpoints/tiny/seed0.safetensors"),
        ["reference: only used with pairs: reference; got pairs: all"],
    ),
    # population
    "checkpoints and glob": (
        edited(population__glob="checkpoints/tiny/*.safetensors"),
        ["population: give one of checkpoints, glob, training and activations, not checkpoints and glob"],
    ),
    "neither checkpoints nor glob": (
        edited(population={}),
        ["population: give checkpoints (a list of store keys), glob (a pattern of store keys), training (seeds "
         "and a recipe) or activations (files to import)"],
    ),
    "one checkpoint": (
        edited(population__checkpoints=["checkpoints/tiny/seed0.safetensors"]),
        ["population.checkpoints: a study needs at least 2 models; got 1"],
    ),
    "duplicate checkpoints": (
        edited(population__checkpoints=["a.safetensors", "b.safetensors", "a.safetensors"]),
        ["population.checkpoints[2]: duplicate of population.checkpoints[0] ('a.safetensors')"],
    ),
    "unsafe checkpoint key": (
        edited(population__checkpoints=["a.safetensors", "../b.safetensors"]),
        ["population.checkpoints[1]: store key '../b.safetensors' has an unsafe part '..' "
         "(allowed: letters, digits, _ . = + -)"],
    ),
    "absolute glob": (
        edited(population={"glob": "/data/*.safetensors"}),
        ["population.glob: must be a pattern of store keys, relative to the store root; got '/data/*.safetensors'"],
    ),
    "training seeds not a list": (
        edited(population={"training": {"seeds": 3}}),
        ["population.training.seeds: must be a list of non-negative integers; got 3"],
    ),
    "training seeds repeated": (
        edited(population={"training": {"seeds": [1, 1]}}),
        ["population.training.seeds: need at least 2 distinct seeds; got [1, 1]"],
    ),
    # credentials
    "store secret": (edited(store__secret="s3cr3t"), [f"store.secret: {CREDENTIALS}"]),
    "store aws keys": (
        edited(store__aws_access_key_id="AKIA", store__aws_secret_access_key="x"),
        [f"store.aws_access_key_id: {CREDENTIALS}", f"store.aws_secret_access_key: {CREDENTIALS}"],
    ),
    "nested store credentials": (
        edited(store__options={"token": "t", "region": "eu"}),
        [f"store.options.token: {CREDENTIALS}",
         "store.options: unknown key (allowed: uri, endpoint_url, shared, timeouts, retries)"],
    ),
    "store password": (edited(store__password="hunter2"), [f"store.password: {CREDENTIALS}"]),
    "credentials in the store uri": (
        edited(store__uri="s3://AKIA:secret@bucket/prefix"),
        [f"store.uri: {CREDENTIALS}"],
    ),
    "unsupported store scheme": (
        edited(store__uri="gs://bucket"),
        ["store.uri: unsupported scheme 'gs' (use a local path, file:// or s3://); got 'gs://bucket'"],
    ),
    "endpoint for a local store": (
        edited(store__endpoint_url="http://127.0.0.1:9000"),
        ["store.endpoint_url: only used with an s3:// store"],
    ),
    # name
    "name with a space": (
        edited(name="my study"),
        ["name: use letters, digits and _ . - only, not starting with . or -; got 'my study'"],
    ),
    "name with a slash": (
        edited(name="a/b"),
        ["name: use letters, digits and _ . - only, not starting with . or -; got 'a/b'"],
    ),
    "name starting with a dot": (
        edited(name=".hidden"),
        ["name: use letters, digits and _ . - only, not starting with . or -; got '.hidden'"],
    ),
    # resources
    "pair_block 0": (edited(resources__pair_block=0), ["resources.pair_block: must be a positive integer; got 0"]),
    "negative gpus": (
        edited(resources__gpus_per_actor=-1),
        ["resources.gpus_per_actor: must be a non-negative number; got -1"],
    ),
    "fractional tasks in flight": (
        edited(resources__max_in_flight=2.5, resources__cpus_per_task=True),
        ["resources.cpus_per_task: must be a positive integer; got true",
         "resources.max_in_flight: must be a positive integer; got 2.5"],
    ),
}


@pytest.mark.parametrize(("data", "expected"), list(CATALOGUE.values()), ids=list(CATALOGUE))
def test_bad_study_file(data, expected):
    assert problems_of(data) == expected


def test_every_problem_is_reported_together():
    data = edited(
        frobnicate=True,
        name="bad name",
        eps=[0.15, 1.5, 0.15],
        layers=["relu", "features.99"],
        pairs="reference",
        store__secret="x",
        population__checkpoints=["checkpoints/tiny/seed0.safetensors"],
        probe__rows={"rows": 10, "repeats": 0},
        resources__pair_block=0,
        simple_matches__max_neurons=-1,
    )
    problems = problems_of(data)
    assert problems == [
        f"frobnicate: unknown key (allowed: {TOP_LEVEL_KEYS})",
        "name: use letters, digits and _ . - only, not starting with . or -; got 'bad name'",
        f"store.secret: {CREDENTIALS}",
        "population.checkpoints: a study needs at least 2 models; got 1",
        "probe.rows.repeats: must be a positive integer; got 0",
        "eps[1]: must lie in [0, 1]; got 1.5",
        "eps[2]: duplicate of eps[0] (0.15)",
        "simple_matches.max_neurons: must be a positive integer; got -1",
        "resources.pair_block: must be a positive integer; got 0",
        "reference: required when pairs is 'reference'",
        f"layers[1]: unknown layer 'features.99'; available: {SMALL_CNN_LEAVES} "
        "(or a glob, or one of the types relu, conv, linear, bn)",
    ]


def test_nested_specs_report_every_problem_under_its_full_path():
    data = edited(
        probe={"dataset": "digits", "n_examples": 0, "seed": -1},
        population={"training": {"seeds": [0, 1], "lr": -1, "epochs": 1.5, "learning_rate": 0.1}},
    )
    assert problems_of(data) == [
        "population.training.learning_rate: unknown key (allowed: seeds, save_every, dataset, recipe, epochs, "
        "batch_size, lr, momentum, weight_decay, milestones, gamma, augment, holdout, n_train, data_dir, select)",
        "population.training.epochs: must be a non-negative integer; got 1.5",
        "population.training.lr: must be a positive number; got -1",
        "probe.n_examples: must be a positive integer; got 0",
        "probe.seed: must be a non-negative integer; got -1",
    ]


def test_a_trained_population_round_trips(example):
    study = example.replace(population={"training": {"seeds": [0, 1], "recipe": "quick", "epochs": 2}})
    assert study.population.training.seeds == (0, 1) and study.population.training.spec.epochs == 2
    assert study.to_dict()["population"]["training"] == {"seeds": [0, 1], **study.population.training.spec.to_dict()}
    assert Study.from_dict(study.to_dict()) == study
    assert study.population.training.prefix(study.architecture).startswith("checkpoints/small_cnn/trained-")


def test_direct_construction_is_checked_too(example):
    with pytest.raises(StudyError) as caught:
        Resources(pair_block=0, max_in_flight=0)
    assert caught.value.problems == [
        "resources.pair_block: must be a positive integer; got 0",
        "resources.max_in_flight: must be a positive integer; got 0",
    ]
    with pytest.raises(StudyError, match=r"^eps\[0\]: must lie in \[0, 1\]; got 2$"):
        example.replace(eps=(2,))
    with pytest.raises(StudyError, match=r"^population: give checkpoints"):
        Population()


def test_study_error_survives_pickling():
    error = pickle.loads(pickle.dumps(StudyError(["a: one", "b: two"])))
    assert isinstance(error, StudyError) and error.problems == ["a: one", "b: two"] and str(error) == "a: one\nb: two"


def test_from_dict_rejects_a_non_mapping():
    with pytest.raises(StudyError, match=r"^study: must be a mapping of name, store, "):
        Study.from_dict([1, 2])  # type: ignore[arg-type]

