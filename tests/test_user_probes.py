"""Probes from the user's files: a PNG/JPEG folder, a .npy/.npz array and a Parquet column (issue 13, item 5)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import raymatch
from raymatch.cli import main
from raymatch.probes import DatasetError, ProbeSpec, load_probe
from raymatch.results import load
from raymatch.store import ActivationKey, read_activations

from .extract.helpers import digits_model, put_checkpoint

N_IMAGES = 60
MEAN, STD = 0.5, 0.25


def _pixels(seed: int = 0) -> np.ndarray:
    """(N_IMAGES, 8, 8) uint8 greyscale images."""
    return np.random.default_rng(seed).integers(0, 256, size=(N_IMAGES, 8, 8), dtype=np.uint8)


def _png_folder(folder, pixels: np.ndarray):
    """One PNG per image, in two class sub-folders; file names sort in image order."""
    for index, image in enumerate(pixels):
        path = folder / f"class{index % 2}" / f"img{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path)
    return folder


def _sorted_order() -> list[int]:
    """The image indices in sorted path order (class0/… then class1/…)."""
    return sorted(range(N_IMAGES), key=lambda index: (index % 2, index))


def _expected(pixels: np.ndarray) -> np.ndarray:
    """The probe images as float64 (N, 1, 8, 8), recomputed plainly."""
    return ((pixels.astype(np.float64) / 255.0 - MEAN) / STD)[:, np.newaxis]


# ------------------------------------------------------------------------------------------------ loading


def test_an_image_folder_is_read_in_sorted_order_normalised(tmp_path):
    pixels = _pixels()
    folder = _png_folder(tmp_path / "pngs", pixels)
    probe = ProbeSpec.from_dict({"dataset": "images", "path": str(folder), "mean": [MEAN], "std": [STD]})
    images = load_probe(probe)
    assert images.dtype == torch.float32 and images.shape == (N_IMAGES, 1, 8, 8)
    np.testing.assert_allclose(images.numpy(), _expected(pixels[_sorted_order()]), rtol=1e-6, atol=1e-6)
    subset = load_probe(probe.replace(n_examples=10, seed=3))
    chosen = np.sort(np.random.default_rng(3).permutation(N_IMAGES)[:10])
    np.testing.assert_array_equal(subset.numpy(), images.numpy()[chosen])


def test_images_of_mixed_sizes_are_resized_and_centre_cropped(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    wide = np.zeros((8, 16, 3), np.uint8)
    wide[:, 4:12] = 200  # the centre 8×8 of an 8×16 image
    Image.fromarray(wide).save(folder / "a.png")
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(folder / "b.jpg", quality=100)
    images = load_probe(ProbeSpec.from_dict({"dataset": "images", "path": str(folder), "size": [8, 8]}))
    assert images.shape == (2, 3, 8, 8)  # RGB: 3 channels
    np.testing.assert_allclose(images[0].numpy(), 200 / 255, atol=1e-6)  # the crop kept the centre only
    np.testing.assert_allclose(images[1].numpy(), 100 / 255, atol=2 / 255)  # (JPEG)


def test_arrays_in_either_layout_and_a_parquet_table_give_the_same_images(tmp_path):
    pixels = _pixels()
    np.save(tmp_path / "nchw.npy", pixels[:, np.newaxis].astype(np.float32))
    np.savez(tmp_path / "nhwc.npz", images=pixels[..., np.newaxis], labels=np.arange(N_IMAGES))
    flat = pa.array(list(pixels.reshape(N_IMAGES, -1).astype(np.float32)), type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"pixels": flat}), tmp_path / "flat.parquet")
    encoded = []
    for image in pixels:
        Image.fromarray(image, mode="L").save(tmp_path / "one.png")
        encoded.append((tmp_path / "one.png").read_bytes())
    pq.write_table(pa.table({"png": pa.array(encoded, type=pa.binary())}), tmp_path / "png.parquet")
    norm = {"mean": [MEAN], "std": [STD]}
    probes = [
        {"dataset": "array", "path": str(tmp_path / "nchw.npy"), "scale": 1 / 255, **norm},
        {"dataset": "array", "path": str(tmp_path / "nhwc.npz"), "key": "images", "layout": "NHWC",
         "scale": 1 / 255, **norm},
        {"dataset": "table", "path": str(tmp_path / "flat.parquet"), "column": "pixels", "size": [8, 8],
         "scale": 1 / 255, **norm},
        {"dataset": "table", "path": str(tmp_path / "png.parquet"), "column": "png", **norm},
    ]
    for fields in probes:
        images = load_probe(ProbeSpec.from_dict(fields))
        np.testing.assert_allclose(images.numpy(), _expected(pixels), rtol=1e-6, atol=1e-5, err_msg=str(fields))


def test_the_probe_id_hashes_the_files_not_their_path(tmp_path):
    folder = _png_folder(tmp_path / "a", _pixels())
    probe = ProbeSpec.from_dict({"dataset": "images", "path": str(folder)})
    moved = ProbeSpec.from_dict({"dataset": "images", "path": str(shutil.copytree(folder, tmp_path / "b"))})
    assert moved.id == probe.id
    Image.fromarray(_pixels(1)[0], mode="L").save(tmp_path / "b" / "class0" / "img000.png")  # other content
    assert ProbeSpec.from_dict({"dataset": "images", "path": str(tmp_path / "b")}).id != probe.id
    np.save(tmp_path / "x.npy", _pixels()[:, np.newaxis])
    array = ProbeSpec.from_dict({"dataset": "array", "path": str(tmp_path / "x.npy")})
    np.save(tmp_path / "y.npy", _pixels(1)[:, np.newaxis])
    assert ProbeSpec.from_dict({"dataset": "array", "path": str(tmp_path / "y.npy")}).id != array.id
    assert ProbeSpec("digits", n_examples=100).id == "78ce100eaafcbec0"  # built-in probes keep their ids


def test_unreadable_image_names_the_file(tmp_path):
    folder = _png_folder(tmp_path / "pngs", _pixels()[:3])
    (folder / "class0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"probe\.path: cannot read image .*broken\.png"):
        load_probe(ProbeSpec.from_dict({"dataset": "images", "path": str(folder)}))


# ------------------------------------------------------------------------------------------------ bad inputs


STUDY = """
name: user-probe
store: {{uri: "{uri}"}}
population:
  checkpoints: [checkpoints/seed0.safetensors, checkpoints/seed1.safetensors]
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 0.5, input_size: 8}}
probe: {probe}
layers: [relu1, relu3]
eps: [0.25, 0.5]
cka: false
resources: {{gpus_per_actor: 0, pair_block: 2, max_in_flight: 2}}
"""


def _bad_inputs(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mixed / "b.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG but not really")
    np.save(tmp_path / "flat.npy", np.zeros((5, 64)))
    pq.write_table(pa.table({"pixels": pa.array([[0.0] * 64] * 5)}), tmp_path / "t.parquet")
    return [
        ({"dataset": "images", "path": str(mixed)}, r"probe\.size: images of mixed sizes .*give probe\.size"),
        ({"dataset": "images", "path": str(broken)}, r"probe\.path: cannot read image .*x\.png"),
        ({"dataset": "array", "path": str(tmp_path / "flat.npy")},
         r"probe\.path: .*flat\.npy has shape \(5, 64\) \(rank 2\)"),
        ({"dataset": "table", "path": str(tmp_path / "t.parquet"), "column": "image"},
         r"probe\.column: .*t\.parquet has no column 'image'; it has pixels"),
        ({"dataset": "digits", "data_dir": str(mixed)}, r"probe\.data_dir: not used by dataset digits"),
        ({"dataset": "images", "path": str(mixed), "split": "train"}, r"probe\.split: not used by dataset images"),
        ({"dataset": "images", "path": str(tmp_path / "absent")}, r"probe\.path: image folder .* does not exist"),
    ]


def test_bad_probe_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    store = tmp_path / "store"
    for probe, message in _bad_inputs(tmp_path):
        study_file = tmp_path / "study.yaml"
        study_file.write_text(STUDY.format(uri=f"file://{store}", probe=_flow(probe)))
        assert main(["run", str(study_file)]) == 2, probe
        err = capsys.readouterr().err
        problems = [line.strip() for line in err.splitlines()[1:]]
        assert len(problems) == 1 and re.match(message, problems[0]), (probe, err)
        assert not store.exists()


def _flow(mapping: dict) -> str:
    return "{" + ", ".join(f"{key}: {value!r}".replace("'", '"') for key, value in mapping.items()) + "}"


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_each_route_runs_end_to_end_and_equals_max_match_on_stored_activations(local_store, tmp_path, capsys):
    pixels = _pixels()
    order = _sorted_order()
    folder = _png_folder(tmp_path / "pngs", pixels[np.argsort(order)])  # sorted path order = image order
    np.save(tmp_path / "probe.npy", pixels[:, np.newaxis])
    encoded = []
    for image in pixels:
        Image.fromarray(image, mode="L").save(tmp_path / "one.png")
        encoded.append((tmp_path / "one.png").read_bytes())
    pq.write_table(pa.table({"image": pa.array(encoded, type=pa.binary())}), tmp_path / "probe.parquet")
    norm = {"mean": [MEAN], "std": [STD]}
    routes = {
        "images": {"dataset": "images", "path": str(folder), **norm},
        "array": {"dataset": "array", "path": str(tmp_path / "probe.npy"), "scale": 1 / 255, **norm},
        "table": {"dataset": "table", "path": str(tmp_path / "probe.parquet"), "column": "image", **norm},
    }
    for seed in range(2):
        put_checkpoint(local_store, seed)
    # the models' own activations on the images, recomputed without the extractor
    images = torch.from_numpy(_expected(pixels).astype(np.float32))
    want = {}
    for seed in range(2):
        model = digits_model(seed).eval()
        outputs = images
        with torch.no_grad():
            for name, module in model.named_children():  # conv1 … relu3: (N, 32)
                outputs = module(outputs)
                if name == "relu3":
                    break
        want[seed] = outputs.numpy()
    probe_ids = set()
    for name, probe in routes.items():
        study_file = tmp_path / f"{name}.yaml"
        study_file.write_text(STUDY.format(uri=f"file://{local_store.root}", probe=_flow(probe)).replace(
            "name: user-probe", f"name: user-{name}"))
        assert main(["run", str(study_file), "--quiet"]) == 0, capsys.readouterr().err
        matches = load(local_store, "matches", study=f"user-{name}")
        assert len(matches) == 2 * 2 and set(matches["status"]) == {"ok"}  # layers × ε, one pair
        (probe_id,) = set(matches["probe_id"]) if "probe_id" in matches else {ProbeSpec.from_dict(probe).id}
        probe_ids.add(probe_id)
        for row in matches.itertuples():
            A = read_activations(local_store, ActivationKey(probe_id, row.model_a, row.layer)).astype(np.float64)
            B = read_activations(local_store, ActivationKey(probe_id, row.model_b, row.layer)).astype(np.float64)
            expected = raymatch.max_match(A, B, row.eps)
            assert list(row.neurons_a) == expected.a.tolist() and list(row.neurons_b) == expected.b.tolist()
            assert row.similarity == pytest.approx(expected.similarity)
        models = load(local_store, "models", study=f"user-{name}").sort_values("checkpoint")
        for seed, model_id in enumerate(models["model_id"]):
            stored = read_activations(local_store, ActivationKey(probe_id, model_id, "relu3"))
            np.testing.assert_allclose(stored, want[seed], rtol=1e-4, atol=1e-5)
    assert len(probe_ids) == 3  # different files: different probes
