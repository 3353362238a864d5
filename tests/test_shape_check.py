"""The load-time shape check: on the meta device, and on the CPU for a model whose forward pass needs values.

Issue 26, point 4: a Hugging Face GPT-2 failed the check with ``Tensor.item() cannot be called on meta tensors``.
A user factory whose forward pass calls ``.item()`` stands in for it: the study loads, its layers are those of a real
forward pass, one warning line says why, and the global RNG is untouched. Also: importing the study layer (and
loading a study that builds no architecture) imports no torch (issue 21, point 6).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from raymatch.extract.shapes import ForwardError, output_shapes
from raymatch.study import Study, StudyError

from .test_bad_inputs import (
    ray_starts,  # noqa: F401 (a fixture)
    run_cli,
    store_root,  # noqa: F401 (a fixture)
    study,
    write_study,
)
from .user_nets import write_package

PACKAGE = "rm_item_nets"
FALLBACK = "cannot run on the meta device"


def _item_study(tmp_path, root, **edits) -> dict:
    code = write_package(tmp_path / "code", PACKAGE)
    architecture = {"factory": f"{PACKAGE}:make_item_net", "code": str(code), "kwargs": {"width": 4}}
    return study(str(root), architecture=architecture, layers=["conv", "relu", "fc"], **edits)


def test_a_forward_pass_that_needs_values_is_checked_on_the_cpu(tmp_path, caplog):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="raymatch"):
        loaded = Study.from_dict(_item_study(tmp_path, tmp_path / "store", probe__rows={"rows": 100}))
    assert torch.equal(torch.rand(3), expected)  # the random initialisation left the global RNG alone
    assert loaded.layer_names == ("conv", "relu", "fc")
    assert output_shapes(loaded.architecture, (1, 8, 8), loaded.probe) == {"conv": (4, 8, 8), "relu": (4, 8, 8),
                                                                          "fc": (10,)}
    warnings = [record.getMessage() for record in caplog.records if FALLBACK in record.getMessage()]
    assert len(warnings) == 1, caplog.records  # once per architecture, however many checks ask
    assert "Tensor.item() cannot be called on meta tensors" in warnings[0]
    assert f"architecture {PACKAGE}:make_item_net" in warnings[0] and "2 probe items on the CPU" in warnings[0]


def test_the_cli_plans_such_a_study_with_one_warning_line(tmp_path, store_root, capsys, monkeypatch,  # noqa: F811
                                                          ray_starts):  # noqa: F811
    monkeypatch.setattr(logging.getLogger("raymatch"), "handlers", [])  # (one on this test's stderr, not a past one's)
    import safetensors.torch
    from torch import nn

    for seed, key in enumerate(("checkpoints/seed0.safetensors", "checkpoints/seed1.safetensors")):
        torch.manual_seed(seed)
        net = nn.Module()
        net.conv, net.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 64, 10)
        (store_root / key).write_bytes(safetensors.torch.save(dict(net.state_dict())))
    study_file = write_study(tmp_path, _item_study(tmp_path, store_root, name="item-net"))
    code, err = run_cli(capsys, "plan", study_file)
    assert code == 0, err
    assert [line for line in err.splitlines() if FALLBACK in line] == err.splitlines()[:1] and ray_starts == []


def test_a_model_that_fails_on_the_cpu_too_is_refused_with_the_cpu_error(tmp_path):
    from PIL import Image

    data = _item_study(tmp_path, tmp_path / "store", probe={"dataset": "images", "path": str(tmp_path / "rgb")})
    (tmp_path / "rgb").mkdir()
    for index in range(4):
        Image.new("RGB", (8, 8), (index, 0, 0)).save(tmp_path / "rgb" / f"{index}.png")
    with pytest.raises(StudyError) as caught:
        Study.from_dict(data)
    problem = next(line for line in caught.value.problems if line.startswith("probe:"))
    assert "cannot take: Given groups=1" in problem and "meta" not in problem  # the CPU's error, not meta's
    assert "it expects 1-channel images (its first layer conv takes 1 channel), the probe's have 3" in problem


def test_forward_errors_are_runtime_errors():
    assert issubclass(ForwardError, RuntimeError)  # (what the checks catch, as before)


def _imports_torch(code: str) -> bool:
    result = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1] == "True"


def test_importing_the_study_layer_imports_no_torch():
    assert not _imports_torch("import raymatch.study, raymatch.config, raymatch.probes, raymatch.train.spec")


def test_loading_a_study_that_builds_no_architecture_imports_no_torch(tmp_path):
    from .test_imported_activations import _write_authors

    folder = _write_authors(tmp_path / "authors")
    data = {"name": "imported", "store": {"uri": str(tmp_path / "store")}, "layers": ["*"], "eps": [0.5],
            "population": {"activations": {"layout": "authors-npz", "dir": str(folder), "prefix": "best_test_relu",
                                           "seeds": [0, 1]}}}
    code = f"import json\nfrom raymatch.study import Study\nStudy.from_dict(json.loads({json.dumps(data)!r}))"
    assert not _imports_torch(code)
