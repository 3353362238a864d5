"""Tests of checkpoint IO: bit-exact round trips, ids, shape checks and refusal of unreadable bytes."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import zipfile

import pytest
import safetensors.torch
import torch
from torch import nn

from raymatch.models import (
    CheckpointError,
    build_model,
    checkpoint_bytes,
    checkpoint_id,
    load_model,
    load_state_dict,
    save_checkpoint,
)

DIGITS = {"in_channels": 1, "input_size": 8}

#: Set by :func:`_record_unpickling` if any test's loader ever executed a pickled payload.
UNPICKLED_PAYLOADS: list[str] = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED_PAYLOADS.append(tag)
    return tag


class _Payload:
    """A pickled object that records it was unpickled: proof that a loader ran pickle on it."""

    def __reduce__(self):
        return (_record_unpickling, ("payload",))


def trained_model(name: str = "vgg11_bn", seed: int = 0, **kwargs) -> nn.Module:
    """A model whose batch-norm running statistics differ from their initial values."""
    kwargs = {"width": 0.25, **DIGITS, **kwargs}
    torch.manual_seed(seed)
    model = build_model(name, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, kwargs["in_channels"], kwargs["input_size"], kwargs["input_size"]))
    return model


def torch_save_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_same_state(first: nn.Module, second: nn.Module) -> None:
    first_state, second_state = first.state_dict(), second.state_dict()
    assert list(first_state) == list(second_state)
    for key, tensor in first_state.items():
        assert tensor.dtype == second_state[key].dtype, key
        assert torch.equal(tensor, second_state[key]), key


@pytest.mark.parametrize("name", ["vgg11_bn", "plain20", "small_cnn", "mlp"])
def test_safetensors_round_trip_is_bit_exact(name):
    model = trained_model(name)
    data = checkpoint_bytes(model)
    loaded, model_id = load_model(name, data, width=0.25, **DIGITS)
    assert_same_state(model, loaded)
    assert checkpoint_bytes(loaded) == data
    assert model_id == checkpoint_id(data)
    assert not loaded.training


def test_torch_save_round_trip_is_bit_exact():
    model = trained_model("vgg11_bn")
    data = torch_save_bytes(model.state_dict())
    assert data.startswith(b"PK\x03\x04")
    loaded, model_id = load_model("vgg11_bn", data, width=0.25, **DIGITS)
    assert_same_state(model, loaded)
    assert model_id == hashlib.sha256(data).hexdigest()[:16]
    state = load_state_dict(data)
    assert list(state) == list(model.state_dict())


def test_checkpoint_bytes_are_safetensors_of_the_state_dict():
    model = trained_model("plain20")
    state = safetensors.torch.load(checkpoint_bytes(model))
    expected = model.state_dict()
    assert set(state) == set(expected)
    assert "stem.bn.num_batches_tracked" in state
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key


def test_checkpoint_bytes_of_non_contiguous_and_tied_tensors():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight = nn.Parameter(model[0].weight.t())  # tied and non-contiguous
    state = load_state_dict(checkpoint_bytes(model))
    assert torch.equal(state["1.weight"], model[0].weight.t())
    assert state["1.weight"].is_contiguous()


def test_id_is_the_sha256_prefix_and_stable():
    data = checkpoint_bytes(trained_model("small_cnn", seed=3))
    model_id = checkpoint_id(data)
    assert model_id == hashlib.sha256(data).hexdigest()[:16]
    assert len(model_id) == 16 and all(char in "0123456789abcdef" for char in model_id)
    # The same weights always give the same bytes, in train or eval mode, built again or loaded back.
    assert checkpoint_id(checkpoint_bytes(trained_model("small_cnn", seed=3))) == model_id
    assert checkpoint_id(checkpoint_bytes(trained_model("small_cnn", seed=3).eval())) == model_id
    loaded, loaded_id = load_model("small_cnn", data, width=0.25, **DIGITS)
    assert loaded_id == model_id
    assert checkpoint_id(checkpoint_bytes(loaded)) == model_id
    assert checkpoint_id(checkpoint_bytes(trained_model("small_cnn", seed=4))) != model_id


def test_another_architecture_is_refused_naming_the_first_mismatch():
    data = checkpoint_bytes(trained_model("vgg11"))
    with pytest.raises(CheckpointError) as excinfo:
        load_model("vgg13", data, name="model.safetensors", width=0.25, **DIGITS)
    # vgg13 has a second 64-channel conv where vgg11 has its first max-pool.
    assert str(excinfo.value) == (
        "checkpoint model.safetensors does not fit vgg13: parameter 'features.2.weight' (shape (16, 16, 3, 3)) "
        "is missing from the checkpoint"
    )


def test_another_width_is_refused_showing_both_shapes():
    torch.manual_seed(0)
    data = checkpoint_bytes(build_model("vgg11_bn", width=0.5, input_size=8))
    with pytest.raises(CheckpointError) as excinfo:
        load_model("vgg11_bn", data, name="model.safetensors", width=1.0, input_size=8)
    assert str(excinfo.value) == (
        "checkpoint model.safetensors does not fit vgg11_bn: parameter 'features.0.weight' has shape "
        "(32, 3, 3, 3) in the checkpoint but (64, 3, 3, 3) in the model"
    )


def test_a_shape_mismatch_in_a_buffer_is_reported():
    state = trained_model("vgg11_bn").state_dict()
    state["features.1.running_var"] = torch.ones(3)
    with pytest.raises(CheckpointError, match=r"'features\.1\.running_var' has shape \(3,\) in the checkpoint but"):
        load_model("vgg11_bn", safetensors.torch.save(state), width=0.25, **DIGITS)


def test_the_first_missing_key_in_model_order_is_reported():
    state = trained_model("plain20").state_dict()
    del state["fc.bias"]
    del state["stage2.block1.bn2.running_mean"]
    with pytest.raises(CheckpointError) as excinfo:
        load_model("plain20", safetensors.torch.save(state), width=0.25, **DIGITS)
    message = str(excinfo.value)
    assert "'stage2.block1.bn2.running_mean'" in message and "missing" in message
    assert "fc.bias" not in message


def test_an_unexpected_key_is_reported():
    state = trained_model("mlp").state_dict()
    state["fc4.weight"] = torch.zeros(2, 2)
    with pytest.raises(
        CheckpointError, match=r"does not fit mlp: the checkpoint has an unexpected parameter 'fc4\.weight'"
    ):
        load_model("mlp", torch_save_bytes(state), width=0.25, **DIGITS)


def test_a_missing_key_is_reported_before_an_unexpected_one():
    state = trained_model("mlp").state_dict()
    state["fc4.weight"] = torch.zeros(2, 2)
    del state["fc3.weight"]
    with pytest.raises(CheckpointError, match=r"'fc3\.weight' \(shape \(10, 16\)\) is missing"):
        load_model("mlp", safetensors.torch.save(state), width=0.25, **DIGITS)


def test_invalid_architecture_arguments_raise_value_error():
    data = checkpoint_bytes(trained_model("mlp"))
    with pytest.raises(ValueError, match="unknown model"):
        load_model("resnet", data)
    with pytest.raises(ValueError, match="width"):
        load_model("mlp", data, width=0)


def _valid_safetensors() -> bytes:
    return checkpoint_bytes(trained_model("small_cnn"))


def _valid_torch_zip() -> bytes:
    return torch_save_bytes(trained_model("small_cnn").state_dict())


def _foreign_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make_data", "reason"),
    [
        (lambda: b"", "it is empty"),
        (lambda: b"abc", "only 3 bytes"),
        (lambda: b"\x00" * 64, "neither a safetensors header nor a torch zip"),
        (lambda: b"\xff" + random.Random(0).randbytes(255), "neither"),
        (lambda: b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1}', "safetensors failed"),
        (lambda: b"\x05\x00\x00\x00\x00\x00\x00\x00{abcd", "safetensors failed"),
        (lambda: _valid_safetensors()[:20], "claims"),
        (lambda: _valid_safetensors()[:-7], "safetensors failed"),
        (lambda: _valid_torch_zip()[:-100], "torch.load failed"),
        (lambda: _valid_torch_zip()[:100], "torch.load failed"),
        (lambda: _foreign_zip(), "torch.load failed"),
        (lambda: b"PK\x03\x04" + b"\x00" * 40, "torch.load failed"),
        (lambda: torch_save_bytes(torch.zeros(3)), "holds an object of type Tensor, not a dict"),
        (lambda: torch_save_bytes({"a": 1}), "entry 'a' is of type int, not a tensor"),
        (lambda: torch_save_bytes({1: torch.zeros(1)}), "non-string key 1"),
        (lambda: pickle.dumps({"weight": torch.zeros(2)}), "neither"),
    ],
    ids=[
        "empty",
        "tiny",
        "zeros",
        "random",
        "bad-safetensors-entry",
        "bad-safetensors-json",
        "safetensors-header-truncated",
        "safetensors-data-truncated",
        "torch-zip-truncated-end",
        "torch-zip-truncated-start",
        "foreign-zip",
        "zip-signature-only",
        "bare-tensor",
        "non-tensor-value",
        "non-string-key",
        "plain-pickle",
    ],
)
def test_unreadable_bytes_are_refused(make_data, reason):
    data = make_data()
    with pytest.raises(CheckpointError) as excinfo:
        load_state_dict(data, name="weights.bin")
    message = str(excinfo.value)
    assert message.startswith("weights.bin is not a readable safetensors or torch state_dict checkpoint: ")
    assert reason in message
    with pytest.raises(CheckpointError, match=r"^checkpoint is not a readable"):
        load_model("small_cnn", data, width=0.25, **DIGITS)


def test_a_pickled_object_in_a_torch_archive_is_refused_by_weights_only():
    data = torch_save_bytes({"weight": torch.zeros(2), "payload": _Payload()})
    with pytest.raises(CheckpointError, match="refused it") as excinfo:
        load_state_dict(data, name="evil.pt")
    assert isinstance(excinfo.value.__cause__, pickle.UnpicklingError)
    assert "_record_unpickling" in str(excinfo.value)
    assert UNPICKLED_PAYLOADS == []


def test_an_arbitrary_object_in_a_torch_archive_is_refused_by_weights_only():
    data = torch_save_bytes({"a": object()})
    with pytest.raises(CheckpointError, match="weights_only=True") as excinfo:
        load_state_dict(data)
    assert isinstance(excinfo.value.__cause__, pickle.UnpicklingError)


def test_a_plain_pickle_is_never_unpickled():
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(CheckpointError):
            load_state_dict(pickle.dumps(_Payload(), protocol=protocol))
    assert UNPICKLED_PAYLOADS == []


def test_checkpoint_error_is_a_value_error_and_non_bytes_are_a_type_error():
    assert issubclass(CheckpointError, ValueError)
    with pytest.raises(TypeError, match="must be bytes"):
        load_state_dict("model.safetensors")


def test_bytes_like_input_is_accepted():
    data = _valid_safetensors()
    assert set(load_state_dict(memoryview(data))) == set(load_state_dict(bytearray(data)))


def test_save_checkpoint_writes_atomically_and_loads_back(tmp_path):
    model = trained_model("vgg11_bn")
    path = tmp_path / "model.safetensors"
    model_id = save_checkpoint(model, path)
    assert os.listdir(tmp_path) == ["model.safetensors"]
    data = path.read_bytes()
    assert data == checkpoint_bytes(model)
    assert model_id == checkpoint_id(data)
    loaded, loaded_id = load_model("vgg11_bn", data, name=str(path), width=0.25, **DIGITS)
    assert loaded_id == model_id
    assert_same_state(model, loaded)

    # Replacing an existing checkpoint works the same way and again leaves nothing else behind.
    other_id = save_checkpoint(trained_model("vgg11_bn", seed=1), str(path))
    assert other_id != model_id
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert checkpoint_id(path.read_bytes()) == other_id


def test_save_checkpoint_cleans_up_when_the_rename_fails(tmp_path, monkeypatch):
    def failing_replace(source, destination):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_checkpoint(trained_model("mlp"), tmp_path / "model.safetensors")
    assert os.listdir(tmp_path) == []


def test_save_checkpoint_into_a_missing_folder_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        save_checkpoint(trained_model("mlp"), tmp_path / "missing" / "model.safetensors")
    assert os.listdir(tmp_path) == []
