"""Errors a new user ran into, from the command line: each names its field and what is expected, all in one pass.

Issue 26, point 3: a folder given as a checkpoint, ``layers`` problems that came in two rounds, a pickled whole
model, and an RGB probe for a one-channel net. Every case exits 2 before Ray starts and writes nothing.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from raymatch.models import build_model

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
    write_study,
)

CHECKPOINT_FILE = "a checkpoint is a file, safetensors or a torch.save state dict"


def _hf_folder(folder):
    """A Hugging Face ``save_pretrained`` folder (its file names; the contents do not matter here)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return folder


def test_a_folder_listed_as_a_checkpoint_names_its_entry(tmp_path, store_root, capsys, ray_starts):  # noqa: F811
    _hf_folder(store_root / "checkpoints" / "gpt2-run")
    outside = _hf_folder(tmp_path / "elsewhere" / "gpt2-run")
    before = snapshot(store_root)
    population = {"checkpoints": [SEEDS[0], "checkpoints/gpt2-run", str(outside)]}
    study_file = write_study(tmp_path, study(str(store_root), population=population))
    code, err = run_cli(capsys, "plan", study_file)
    problems = assert_problem(code, err, study_file,
                              f"population.checkpoints[1]: checkpoints/gpt2-run is a folder; {CHECKPOINT_FILE}",
                              f"population.checkpoints[2]: {outside} is a folder; {CHECKPOINT_FILE}")
    assert "Errno" not in err and len(problems.splitlines()) == 2
    assert snapshot(store_root) == before and ray_starts == []


def test_a_glob_matching_a_folder_that_holds_no_checkpoint_names_the_glob(tmp_path, store_root, capsys,  # noqa: F811
                                                                           ray_starts):  # noqa: F811
    _hf_folder(store_root / "checkpoints" / "gpt2-run")
    before = snapshot(store_root)
    study_file = write_study(tmp_path, study(str(store_root), population={"glob": "checkpoints/*"}))
    code, err = run_cli(capsys, "run", study_file)
    assert_problem(code, err, study_file, "population.glob: 'checkpoints/*' matches checkpoints/gpt2-run/config.json, "
                                          f"which is no checkpoint (it starts with neither a safetensors header nor a "
                                          f"torch zip archive signature); {CHECKPOINT_FILE}")
    assert snapshot(store_root) == before and ray_starts == []
    study_file = write_study(tmp_path, study(str(store_root), population={"glob": "checkpoints/seed*"}))
    assert run_cli(capsys, "plan", study_file)[0] == 0  # a pattern of checkpoints only: planned as before


def test_every_layer_problem_comes_in_one_pass(tmp_path, store_root, capsys, ray_starts):  # noqa: F811
    layers = [{"select": "relu1", "neurons": "middle"}, "features.9", "relu3", "nope"]
    study_file = write_study(tmp_path, study(str(store_root), layers=layers))
    code, err = run_cli(capsys, "run", study_file)
    problems = assert_problem(code, err, study_file, "layers[0]: neurons: must be one of first, last; got 'middle'",
                              "layers[1]: unknown layer 'features.9'", "layers[3]: unknown layer 'nope'")
    assert len(problems.splitlines()) == 3 and ray_starts == []


def test_a_pickled_whole_model_is_told_to_save_its_state_dict(tmp_path, store_root, capsys,  # noqa: F811
                                                              ray_starts):  # noqa: F811
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(build_model("small_cnn", **ARCH), buffer)  # the whole model, pickled
    put(store_root, "checkpoints/whole.pt", buffer.getvalue())
    study_file = write_study(tmp_path, study(str(store_root), population={"checkpoints": [SEEDS[0],
                                                                                          "checkpoints/whole.pt"]}))
    code, err = run_cli(capsys, "plan", study_file)
    assert_one_line(code, err, "checkpoints/whole.pt", "torch.load(weights_only=True) refused it",
                    "a whole model?): save `model.state_dict()` instead")
    assert ray_starts == []


def test_an_rgb_probe_for_a_one_channel_net_says_what_the_net_expects(tmp_path, store_root, capsys,  # noqa: F811
                                                                       ray_starts):  # noqa: F811
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(40):
        pixels = np.random.default_rng(index).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / f"img{index:02d}.png")
    study_file = write_study(tmp_path, study(str(store_root), probe={"dataset": "images", "path": str(folder)}))
    code, err = run_cli(capsys, "run", study_file)
    problems = assert_problem(code, err, study_file, f"probe: the images of {folder} are 3×8×8, which architecture "
                                                     "small_cnn (in_channels 1, input_size 8) cannot take:",
                              "; it expects 1-channel images (its first layer conv1 takes 1 channel), the probe's "
                              "have 3")
    assert "images images" not in problems and ray_starts == []
