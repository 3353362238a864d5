"""The paper's CIFAR-10 study file, proven end to end on a tiny generated CIFAR-10 (binary format) fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from raymatch.cli import main
from raymatch.results import load
from raymatch.study import load_study

from .probes.formats import write_cifar_batch

PAPER = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "paper-cifar10-vgg16.yaml"


def _tiny_cifar(folder: Path) -> Path:
    """``cifar-10-batches-bin`` with 5 train batches of 12 images and a 600-image test batch (random pixels): the
    probe needs more images than the 512 units of VGG's classifier layers."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for batch in range(1, 6):
        pixels = rng.integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)
        write_cifar_batch(folder / f"data_batch_{batch}.bin", pixels, rng.integers(0, 10, 12).astype(np.uint8))
    pixels = rng.integers(0, 256, size=(600, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch.bin", pixels, rng.integers(0, 10, 600).astype(np.uint8))
    return folder


@pytest.mark.slow
def test_the_paper_study_file_runs_on_a_tiny_cifar_fixture(tmp_path, ray_cluster, capsys):
    data_dir = _tiny_cifar(tmp_path / "cifar-10-batches-bin")
    config = yaml.safe_load(PAPER.read_text())
    # Same file, scaled down: the fixture's size, one epoch, a thin VGG16, CPU only.
    config["store"] = {"uri": f"file://{tmp_path / 'store'}"}
    config["population"]["training"].update(data_dir=str(data_dir), epochs=1, milestones=[1], batch_size=16)
    config["architecture"]["width"] = 0.125
    config["probe"].update(data_dir=str(data_dir), n_examples=600, rows={"rows": 100, "repeats": 2, "seed": 0})
    config["resources"].update(gpus_per_actor=0, cpus_per_task=1, max_in_flight=2)
    study_file = tmp_path / "paper.yaml"
    study_file.write_text(yaml.safe_dump(config))
    study = load_study(study_file)
    assert study.population.training.spec.recipe == "paper-cifar" and study.population.training.spec.augment

    assert main(["run", str(study_file), "--quiet"]) == 0
    capsys.readouterr()
    matches = load(study.store.open(), "matches")
    assert set(matches["status"]) == {"ok"}
    layers = study.layer_names
    sampled = [layer for layer in layers if layer.startswith("features.")]
    for population in ("trained", "untrained"):
        rows = matches[matches["population"] == population]
        per_layer = rows.groupby("layer")["repeat"].nunique()
        # conv layers with more than one position are sampled twice; 1×1 maps and linear layers once
        assert set(per_layer.index) == set(layers)
        assert per_layer[sampled[0]] == 2 and per_layer["classifier.1"] == 1
        assert len(rows) == 3 * len(study.eps) * per_layer.sum()
    assert main(["report", str(tmp_path / "store"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "repeats.png").exists()
