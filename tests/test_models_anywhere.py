"""Models from anywhere without Ray: factories, checkpoint options, reused modules, layer layouts, bad inputs.

The bad inputs go through the ``raymatch`` command line as in tests/test_bad_inputs.py: exit 2, one line (or a
study file's problem lines) naming the field, Ray never started, nothing written to the store.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from raymatch.extract import extract_model, resolve_layers, select_layers
from raymatch.extract.outputs import LayerOptions, LayerOutputError, as_neuron_matrix, call_counts, neuron_shape
from raymatch.models import build_model, checkpoint_bytes, checkpoint_id, load_state_dict
from raymatch.models.checkpoint import CheckpointError, check_checkpoint, load_model, model_id_of
from raymatch.probes import ProbeSpec
from raymatch.store import ActivationKey, read_activations

from .test_bad_inputs import (
    ARCH,
    SEEDS,
    assert_one_line,
    assert_problem,
    put,
    ray_starts,  # noqa: F401 (a fixture)
    run_cli,
    snapshot,
    store_root,  # noqa: F401 (a fixture)
    study,
    tiny_checkpoint,
    write_study,
)
from .user_nets import write_package

PACKAGE = "rm_user_nets"


# ------------------------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize(("shape", "neurons", "expected"), [
    ((5, 7), None, (7,)),
    ((5, 3, 4, 6), None, (3, 4, 6)),
    ((5, 3, 2, 4, 6), None, (3, 2, 4, 6)),
    ((5, 3, 9), "first", (3, 9)),
    ((5, 9, 3), "last", (3, 9)),
    ((5, 2, 9, 3), "last", (3, 2, 9)),
])
def test_neurons_over_rows_for_every_layout(shape, neurons, expected):
    output = torch.randn(*shape, dtype=torch.float64)
    assert neuron_shape(shape, neurons, "x") == expected
    flat = as_neuron_matrix(output, LayerOptions(neurons), "x")  # (B, C, P)
    moved = output.movedim(-1, 1) if neurons == "last" and len(shape) > 2 else output
    manual = moved.reshape(shape[0], expected[0], -1).permute(0, 2, 1).reshape(-1, expected[0])  # rows (n, pos)
    np.testing.assert_array_equal(flat.permute(0, 2, 1).reshape(-1, expected[0]).numpy(), manual.numpy())
    if neurons == "last":  # (N, T, D) → D neurons over N·T rows, rows in (n, t) order
        np.testing.assert_array_equal(manual.numpy(), output.reshape(-1, shape[-1]).numpy())


def test_ambiguous_and_missing_outputs_are_refused():
    with pytest.raises(LayerOutputError, match="outputs \\(N, A, B\\) = 5×10×24, which is ambiguous"):
        neuron_shape((5, 10, 24), None, "blocks.0")
    with pytest.raises(LayerOutputError, match="output: 3 but it returns a tuple of 2 \\(indices 0 to 1\\)"):
        as_neuron_matrix((torch.zeros(2, 3), torch.zeros(2, 3)), LayerOptions(output=3), "attn")
    with pytest.raises(LayerOutputError, match="returns a tuple of 2: choose one with"):
        as_neuron_matrix((torch.zeros(2, 3), torch.zeros(2, 3)), LayerOptions(), "attn")
    picked = as_neuron_matrix({"hidden": torch.ones(2, 3), "logits": torch.zeros(2, 5)}, LayerOptions(output="logits"),
                              "head")
    assert picked.shape == (2, 5, 1)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(self.relu(x)) + x)


def test_a_reused_module_gives_one_layer_per_call_and_each_call_is_stored(tmp_path):
    from raymatch.store import Store

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Block(), nn.Flatten(), nn.Linear(2 * 16, 3)).eval()
    images = torch.randn(6, 1, 4, 4)
    calls = call_counts(net, images[:1])
    assert calls["1.relu"] == 2 and calls["1.conv"] == 1
    assert select_layers(net, ["relu"], calls=calls) == ["1.relu#0", "1.relu#1"]
    assert select_layers(net, ["1.relu#1", "3"], calls=calls) == ["1.relu#1", "3"]
    assert select_layers(net, ["1.*"], calls=calls) == ["1.conv", "1.relu#0", "1.relu#1"]
    assert select_layers(net, ["relu"]) == ["1.relu"]  # without call counts: the module
    store = Store(str(tmp_path / "store"))
    probe = ProbeSpec(dataset="digits", n_examples=6)
    extract_model(store, net, "m0", images, probe, resolve_layers(net, ["relu"], calls=calls), batch_size=4)
    with torch.no_grad():
        x = net[0](images)
        first = torch.relu(x)
        second = torch.relu(net[1].conv(first) + x)
    for layer, output in (("1.relu#0", first), ("1.relu#1", second)):
        stored = read_activations(store, ActivationKey(probe.id, "m0", layer, 0))
        np.testing.assert_allclose(stored, output.permute(0, 2, 3, 1).reshape(-1, 2).numpy(), rtol=1e-6)
    assert (tmp_path / "store" / "activations" / probe.id / "m0" / "1.relu=1").is_dir()  # '#' is no key character


def test_two_entries_must_agree_on_a_layers_options():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with pytest.raises(ValueError, match="an earlier entry selects with other neurons/output options"):
        resolve_layers(net, ["relu", {"select": "1", "output": 0}])


# ------------------------------------------------------------------------------------------------ checkpoints


def _nested(data: bytes, prefix: str = "module.", key: str = "state_dict") -> bytes:
    state = {f"{prefix}{name}": tensor for name, tensor in safetensors.torch.load(data).items()}
    buffer = io.BytesIO()
    content = {"epoch": 3}
    target = content
    *outer, inner = key.split(".")
    for part in outer:
        target = target.setdefault(part, {})
    target[inner] = state
    torch.save(content, buffer)
    return buffer.getvalue()


def test_nested_and_prefixed_checkpoints_load_and_get_the_id_of_their_state_dict():
    flat = tiny_checkpoint(0)
    model = build_model("small_cnn", **ARCH)
    for key in ("state_dict", "model.ema"):
        nested = _nested(flat, key=key)
        options = {"key": key, "strip_prefix": "module."}
        state = load_state_dict(nested, key=key, strip_prefix="module.")
        assert {name: tensor.tolist() for name, tensor in state.items()} == {
            name: tensor.tolist() for name, tensor in safetensors.torch.load(flat).items()}
        check_checkpoint(model, nested, arch="small_cnn", options=options)
        loaded, model_id = load_model("small_cnn", nested, checkpoint_options=options, **ARCH)
        assert loaded.conv1.weight.tolist() == state["conv1.weight"].tolist()
        # the id is the unwrapped state dict's: another epoch, another wrapper, the same model
        assert model_id == model_id_of(_nested(flat, key="a.b"), {"key": "a.b", "strip_prefix": "module."})
        assert model_id != model_id_of(_nested(tiny_checkpoint(1), key=key), options)
    assert model_id_of(flat) == checkpoint_id(flat)  # without options: the bytes' digest, as before


def test_checkpoint_mismatches_suggest_the_key_and_the_prefix():
    model = build_model("small_cnn", **ARCH)
    flat = tiny_checkpoint(0)
    with pytest.raises(CheckpointError, match=re.escape("not a tensor; set population.checkpoint.key: state_dict")):
        check_checkpoint(model, _nested(flat), arch="small_cnn")
    prefixed = checkpoint_bytes_with_prefix(flat, "module.")
    with pytest.raises(CheckpointError, match=re.escape(
            "parameter 'conv1.weight' (shape (4, 1, 3, 3)) is missing from the checkpoint; the checkpoint's names "
            "start with 'module.': set population.checkpoint.strip_prefix: 'module.'")):
        check_checkpoint(model, prefixed, arch="small_cnn")
    with pytest.raises(CheckpointError, match=re.escape(
            "population.checkpoint.key: 'model' is not in checkpoint c: 'model' is missing (keys there: 'epoch', "
            "'state_dict')")):
        check_checkpoint(model, _nested(flat), arch="small_cnn", name="c", options={"key": "model"})
    with pytest.raises(CheckpointError, match=re.escape(
            "population.checkpoint.strip_prefix: 'net.' starts no parameter name of checkpoint c (the first is "
            "'module.")):
        check_checkpoint(model, _nested(flat), arch="small_cnn", name="c",
                         options={"key": "state_dict", "strip_prefix": "net."})


def checkpoint_bytes_with_prefix(data: bytes, prefix: str) -> bytes:
    return safetensors.torch.save({f"{prefix}{name}": tensor for name, tensor in safetensors.torch.load(data).items()})


# ------------------------------------------------------------------------------------------------ bad inputs


def _factory_cases(code: str) -> dict:
    seq = {"factory": f"{PACKAGE}:make_seq", "code": code}
    return {
        "module not found": ({"factory": "no_such_package.nets:make"},
                             "architecture.factory: module 'no_such_package' not found"),
        "callable not found": ({"factory": f"{PACKAGE}:make_resnet", "code": code},
                               f"architecture.factory: {PACKAGE} has no 'make_resnet'"),
        "kwargs rejected": ({"factory": f"{PACKAGE}:make_cnn", "code": code, "kwargs": {"depth": 3}},
                            f"architecture.kwargs: {PACKAGE}:make_cnn does not take {{'depth': 3}}"),
        "not a module": ({"factory": f"{PACKAGE}:not_a_module", "code": code},
                         f"architecture.factory: {PACKAGE}:not_a_module returned a int, not a torch.nn.Module"),
        "code missing": ({"factory": f"{PACKAGE}:make_cnn", "code": code + "-moved"},
                         "architecture.code: "),
        "3-D output without neurons": ((seq, ["embed"]), "layers[0]: layer embed outputs (N, A, B) = 2×8×16, "
                                                         "which is ambiguous: give {select: embed, neurons: last}"),
        "output: 3 on a 2-tuple": ((seq, [{"select": "attn", "output": 3, "neurons": "last"}]),
                                   "layers[0]: layer attn: output: 3 but it returns a tuple of 2"),
    }


CASES = list(_factory_cases("x"))


@pytest.mark.parametrize("case", CASES)
def test_a_bad_factory_or_layer_entry_is_refused_before_anything_runs(case, tmp_path, capsys, ray_starts):  # noqa: F811
    code = str(write_package(tmp_path / "code", PACKAGE))
    architecture, needle = _factory_cases(code)[case]
    layers = ["relu1"]
    if isinstance(architecture, tuple):
        architecture, layers = architecture
    store = tmp_path / "store"
    study_file = write_study(tmp_path, study(str(store), architecture=architecture, layers=layers))
    err_code, err = run_cli(capsys, "run", study_file)
    problems = assert_problem(err_code, err, study_file, needle)
    assert len(problems.splitlines()) == 1
    assert not store.exists() and ray_starts == []


BAD_OPTIONS = {
    "key absent": ({"key": "model"}, "population.checkpoint.key: 'model' is not in checkpoint"),
    "prefix matching nothing": ({"key": "state_dict", "strip_prefix": "net."},
                                "population.checkpoint.strip_prefix: 'net.' starts no parameter name"),
    "no options for a nested checkpoint": (None, "set population.checkpoint.key: state_dict"),
    "no prefix for a DDP checkpoint": ({"key": "state_dict"}, "set population.checkpoint.strip_prefix: 'module.'"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_checkpoint_options_are_refused_before_ray_starts(case, tmp_path, store_root, capsys,  # noqa: F811
                                                              ray_starts):  # noqa: F811
    options, needle = BAD_OPTIONS[case]
    keys = [key.replace(".safetensors", ".pt") for key in SEEDS]
    for seed, key in enumerate(keys):
        put(store_root, key, _nested(tiny_checkpoint(seed)))
    before = snapshot(store_root)
    population = {"checkpoints": keys, **({"checkpoint": options} if options else {})}
    study_file = write_study(tmp_path, study(str(store_root), population=population))
    code, err = run_cli(capsys, "run", study_file)
    assert_one_line(code, err, keys[0], needle)
    assert snapshot(store_root) == before and ray_starts == []


def test_the_right_options_plan_the_nested_checkpoints(tmp_path, store_root, capsys, ray_starts):  # noqa: F811
    keys = [key.replace(".safetensors", ".pt") for key in SEEDS]
    for seed, key in enumerate(keys):
        put(store_root, key, _nested(tiny_checkpoint(seed)))
    population = {"checkpoints": keys, "checkpoint": {"key": "state_dict", "strip_prefix": "module."}}
    study_file = write_study(tmp_path, study(str(store_root), population=population))
    assert run_cli(capsys, "plan", study_file)[0] == 0
    assert ray_starts == []


def test_torchvision_and_timm_where_they_import(tmp_path):
    from raymatch.study import Study, StudyError

    for source, name in (("torchvision", "resnet18"), ("timm", "resnet18")):
        data = study(str(tmp_path / "store"), architecture={"name": name, "source": source,
                                                            "kwargs": {"num_classes": 10}}, layers=["relu"])
        try:
            __import__("torchvision.models" if source == "torchvision" else "timm")
        except Exception:  # not installed, or built for another torch (torchvision::nms): refused, one line
            with pytest.raises(StudyError, match=f"architecture.source: {source} does not import here"):
                Study.from_dict(data)
            continue
        Study.from_dict({**data, "probe": {**data["probe"], "dataset": "cifar10"}})


def test_the_config_hash_follows_the_codes_content_not_its_folder(tmp_path):
    from raymatch.study import Study

    first = write_package(tmp_path / "a", PACKAGE)
    second = write_package(tmp_path / "b", PACKAGE)

    def hashed(code, **kwargs):
        data = study(str(tmp_path / "store"), layers=["0"], architecture={
            "factory": f"{PACKAGE}:make_cnn", "code": str(code), "kwargs": {"width": 4, **kwargs}})
        return Study.from_dict(data).config_hash

    assert hashed(first) == hashed(second)  # the same files elsewhere
    assert hashed(first) != hashed(first, width=3)  # other kwargs
    (second / "__init__.py").write_text((second / "__init__.py").read_text() + "\n# changed\n")
    assert hashed(first) != hashed(second)


def test_the_same_weights_in_edited_code_are_another_model_and_are_extracted_again(tmp_path):
    """Stored activations belong to weights *and* architecture: an edited factory never reuses them."""
    from raymatch.engine.planning import make_plan
    from raymatch.models.factory import architecture_digest
    from raymatch.store.activations import write_activations
    from raymatch.study import Study

    code = write_package(tmp_path / "code", PACKAGE)
    root = tmp_path / "store"

    for seed, key in enumerate(SEEDS):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
        put(root, key, checkpoint_bytes(net))
    data = study(str(root), layers=["1"], architecture={"factory": f"{PACKAGE}:make_cnn", "code": str(code),
                                                              "kwargs": {"width": 4}})
    first = Study.from_dict(data)
    assert first.architecture.digest == architecture_digest(first.architecture.spec) is not None
    assert Study.from_dict(study(str(root))).architecture.digest is None  # the zoo: ids of the weights alone
    plan = make_plan(first, first.store.open())
    weights = [model_id_of((root / key).read_bytes()) for key in SEEDS]
    assert [plan.model_ids[key] for key in SEEDS] == [model_id_of((root / key).read_bytes(),
                                                                  architecture=first.architecture.digest)
                                                      for key in SEEDS]
    assert set(plan.model_ids.values()).isdisjoint(weights)
    store = first.store.open()
    for model in plan.model_ids.values():  # what extraction stores
        write_activations(store, ActivationKey(first.probe.id, model, "1", 0), np.ones((40 * 64, 4), np.float32))
    assert make_plan(first, store).counts()["extract"] == (2, 0)

    # The factory now doubles its ReLU's input: same parameters, same checkpoints, other activations.
    source = (code / "__init__.py").read_text()
    (code / "__init__.py").write_text(source.replace(
        "def make_cnn(width=4):\n    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),",
        "def make_cnn(width=4):\n    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.Hardtanh(0, 2),"))
    assert (code / "__init__.py").read_text() != source
    edited = Study.from_dict(data)
    assert edited.architecture.digest != first.architecture.digest
    again = make_plan(edited, store)
    assert again.counts()["extract"] == (0, 2)  # extracted again, under new ids
    assert set(again.model_ids.values()).isdisjoint(plan.model_ids.values())
