"""Probe specs: a content id that is stable and blind to the data's location, strict validation, seeded subsets,
and row samples that depend only on the spec and the layer's spatial shape (so every model gets the same rows)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from raymatch.probes import DatasetError, ProbeSpec, RowSample, load_dataset, load_probe, row_positions, sample_rows

from .formats import write_fashion_mnist

PAPER_SPEC = ProbeSpec("cifar10", "test", n_examples=1000, seed=0, rows=RowSample(rows=10_000, repeats=16, seed=0))


# --------------------------------------------------------------------------------------------------------------- id


def test_id_is_pinned():
    canonical = (
        '{"dataset":"cifar10","n_examples":1000,"rows":{"repeats":16,"rows":10000,"seed":0},"seed":0,"split":"test"}'
    )
    assert PAPER_SPEC.id == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    # Pinned so that a change of the canonical form, which would orphan every stored probe, cannot pass unnoticed.
    assert PAPER_SPEC.id == "f935e6669c6113df"
    assert ProbeSpec("digits").id == "244bbd4a1a1b6acb"


@pytest.mark.parametrize(
    "change",
    [
        {"dataset": "fashion-mnist"},
        {"split": "train"},
        {"n_examples": 999},
        {"n_examples": None},
        {"seed": 1},
        {"rows": "all"},
        {"rows": RowSample(rows=9_999, repeats=16, seed=0)},
        {"rows": RowSample(rows=10_000, repeats=15, seed=0)},
        {"rows": RowSample(rows=10_000, repeats=16, seed=1)},
    ],
)
def test_id_changes_with_every_content_field(change):
    assert PAPER_SPEC.replace(**change).id != PAPER_SPEC.id


def test_id_ignores_where_the_files_live(tmp_path):
    moved = PAPER_SPEC.replace(data_dir=str(tmp_path))
    assert moved.id == PAPER_SPEC.id
    assert moved != PAPER_SPEC  # still a different spec: it reads elsewhere


def test_id_is_sixteen_hex_characters():
    assert len(PAPER_SPEC.id) == 16 and int(PAPER_SPEC.id, 16) >= 0


# ------------------------------------------------------------------------------------------------ to_dict / from_dict


def test_to_dict_is_plain_json_and_round_trips(tmp_path):
    spec = PAPER_SPEC.replace(data_dir=str(tmp_path))
    as_dict = spec.to_dict()
    assert as_dict == {
        "dataset": "cifar10",
        "split": "test",
        "n_examples": 1000,
        "seed": 0,
        "rows": {"rows": 10_000, "repeats": 16, "seed": 0},
        "data_dir": str(tmp_path),
    }
    assert ProbeSpec.from_dict(json.loads(json.dumps(as_dict))) == spec
    assert ProbeSpec.from_dict(ProbeSpec("digits").to_dict()) == ProbeSpec("digits")


def test_from_dict_fills_defaults_and_accepts_both_row_forms():
    assert ProbeSpec.from_dict({"dataset": "digits"}) == ProbeSpec("digits", "test", None, 0, "all", None)
    assert ProbeSpec.from_dict({"dataset": "digits", "rows": "all"}).rows == "all"
    spec = ProbeSpec.from_dict({"dataset": "digits", "rows": {"rows": 100}})
    assert spec.rows == RowSample(rows=100, repeats=1, seed=0)
    assert ProbeSpec("digits", rows={"rows": 100, "repeats": 2, "seed": 3}).rows == RowSample(100, 2, 3)


def test_numpy_integers_become_plain_ints():
    spec = ProbeSpec("digits", n_examples=np.int64(5), seed=np.int32(2), rows=RowSample(np.int64(10)))
    assert type(spec.n_examples) is int and type(spec.seed) is int and type(spec.rows.rows) is int
    json.dumps(spec.to_dict())


def test_specs_are_frozen_and_hashable():
    with pytest.raises(ValidationError, match="frozen"):
        PAPER_SPEC.seed = 1
    assert len({PAPER_SPEC, PAPER_SPEC.replace()}) == 1


# ------------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dataset": "mnist"}, "probe.dataset: must be one of digits, fashion-mnist, cifar10, images, array, table, "
                                "imported, text; got 'mnist'"),
        ({"dataset": 3}, "probe.dataset: must be one of digits, fashion-mnist, cifar10, images, array, table, "
                         "imported, text; got 3"),
        ({"dataset": "digits", "split": "val"}, "probe.split: must be one of train, test, all for digits; got 'val'"),
        ({"dataset": "cifar10", "split": "all"}, "probe.split: must be one of train, test for cifar10; got 'all'"),
        ({"dataset": "digits", "split": None}, "probe.split: must be a non-empty string; got null"),
        ({"dataset": "digits", "n_examples": 0}, "probe.n_examples: must be a positive integer; got 0"),
        ({"dataset": "digits", "n_examples": -5}, "probe.n_examples: must be a positive integer; got -5"),
        ({"dataset": "digits", "n_examples": 1.5}, "probe.n_examples: must be a positive integer; got 1.5"),
        ({"dataset": "digits", "n_examples": True}, "probe.n_examples: must be a positive integer; got true"),
        ({"dataset": "digits", "seed": -1}, "probe.seed: must be a non-negative integer; got -1"),
        ({"dataset": "digits", "seed": "0"}, "probe.seed: must be a non-negative integer; got '0'"),
        ({"dataset": "digits", "rows": "some"}, "probe.rows: must be 'all' or a row sample {rows, repeats, seed}"),
        ({"dataset": "digits", "rows": 10_000}, "probe.rows: must be 'all' or a row sample {rows, repeats, seed}"),
        ({"dataset": "digits", "rows": {"rows": 0}}, "probe.rows.rows: must be a positive integer; got 0"),
        ({"dataset": "digits", "rows": {"rows": 10.0}}, "probe.rows.rows: must be a positive integer; got 10.0"),
        (
            {"dataset": "digits", "rows": {"rows": 10_000, "repeats": 0}},
            "probe.rows.repeats: must be a positive integer; got 0",
        ),
        (
            {"dataset": "digits", "rows": {"rows": 10, "seed": -2}},
            "probe.rows.seed: must be a non-negative integer; got -2",
        ),
        ({"dataset": "digits", "rows": {"repeats": 2}}, "probe.rows.rows: required key is missing"),
        (
            {"dataset": "digits", "rows": {"rows": 10, "count": 2}},
            "probe.rows.count: unknown key (allowed: rows, repeats, seed)",
        ),
        ({"dataset": "digits", "data_dir": 5}, "probe.data_dir: must be a string path; got 5"),
        ({"dataset": "digits", "sed": 1}, "probe.sed: unknown key (allowed: dataset, split"),
        ({"split": "test"}, "probe.dataset: required key is missing"),
    ],
)
def test_validation_names_the_field(fields, message):
    with pytest.raises(ValueError) as error:
        ProbeSpec.from_dict(fields)
    assert message in str(error.value)


def test_from_dict_wants_a_mapping():
    with pytest.raises(ValueError, match="probe: must be a mapping"):
        ProbeSpec.from_dict(["digits"])


def test_constructors_validate_too():
    with pytest.raises(ValueError, match=r"probe\.rows\.repeats: must be a positive integer; got 0"):
        RowSample(rows=10, repeats=0)
    with pytest.raises(ValueError, match=r"probe\.n_examples"):
        ProbeSpec("digits", n_examples=0)


# ------------------------------------------------------------------------------------------------------- load_probe


def test_load_probe_whole_split():
    probe = load_probe(ProbeSpec("digits", "test"))
    images, _ = load_dataset("digits", "test")
    assert isinstance(probe, torch.Tensor) and probe.dtype == torch.float32 and probe.shape == (360, 1, 8, 8)
    np.testing.assert_array_equal(probe.numpy(), images)


def test_load_probe_subset_is_the_documented_seeded_one():
    spec = ProbeSpec("digits", "test", n_examples=50, seed=3)
    images, _ = load_dataset("digits", "test")
    chosen = np.sort(np.random.default_rng(3).permutation(360)[:50])
    np.testing.assert_array_equal(load_probe(spec).numpy(), images[chosen])
    assert torch.equal(load_probe(spec), load_probe(spec))
    assert not torch.equal(load_probe(spec), load_probe(spec.replace(seed=4)))


def test_load_probe_larger_than_the_split():
    with pytest.raises(DatasetError) as error:
        load_probe(ProbeSpec("digits", "test", n_examples=5000))
    assert str(error.value) == "probe asks for 5000 examples but digits/test has 360"
    assert load_probe(ProbeSpec("digits", "test", n_examples=360)).shape[0] == 360


def test_load_probe_reads_from_the_spec_data_dir(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    write_fashion_mnist(tmp_path, "test", pixels, np.array([0, 1, 2, 3], dtype=np.uint8))
    probe = load_probe(ProbeSpec("fashion-mnist", "test", n_examples=2, data_dir=str(tmp_path)))
    assert probe.shape == (2, 1, 28, 28)


# ------------------------------------------------------------------------------------------------------ sample_rows

SAMPLED = ProbeSpec("digits", rows=RowSample(rows=500, repeats=4, seed=7))


def test_all_rows_means_no_sample():
    assert sample_rows(ProbeSpec("digits"), 360, 8, 8, repeat=0) is None


def test_sample_is_sorted_distinct_and_in_range():
    rows = sample_rows(SAMPLED, 100, 6, 6, repeat=0)
    assert rows.dtype == np.int64 and rows.shape == (500,)
    assert np.all(np.diff(rows) > 0)  # strictly increasing: sorted and distinct
    assert rows[0] >= 0 and rows[-1] < 100 * 6 * 6


def test_sample_is_the_documented_draw():
    rows = sample_rows(SAMPLED, 100, 6, 6, repeat=2)
    expected = np.sort(np.random.default_rng([7, 2, 100, 6, 6]).choice(3600, size=500, replace=False))
    np.testing.assert_array_equal(rows, expected)


def test_sample_is_pinned():
    # Stored activations are keyed by the probe id; if numpy ever changed this draw, rows sampled before and after
    # would silently differ for the same id. This test is the alarm.
    rows = sample_rows(ProbeSpec("digits", rows=RowSample(rows=5, repeats=1, seed=0)), 10, 4, 4, repeat=0)
    assert rows.tolist() == [65, 70, 75, 79, 81]


def test_two_models_get_the_same_rows():
    # Two calls stand for two models of a population: nothing model-specific enters the draw.
    first = sample_rows(SAMPLED, 100, 6, 6, repeat=1)
    second = sample_rows(ProbeSpec.from_dict(SAMPLED.to_dict()), 100, 6, 6, repeat=1)
    np.testing.assert_array_equal(first, second)


def test_repeats_draw_different_rows():
    draws = [sample_rows(SAMPLED, 100, 6, 6, repeat=r) for r in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(draws[i], draws[j])


def test_sample_depends_on_the_spatial_shape_and_the_seed():
    base = sample_rows(SAMPLED, 100, 6, 6, repeat=0)
    for shape in [(101, 6, 6), (100, 5, 6), (100, 6, 5), (50, 12, 6)]:
        assert not np.array_equal(sample_rows(SAMPLED, *shape, repeat=0), base)
    reseeded = SAMPLED.replace(rows=RowSample(rows=500, repeats=4, seed=8))
    assert not np.array_equal(sample_rows(reseeded, 100, 6, 6, repeat=0), base)


def test_sample_of_every_row_is_every_row():
    spec = ProbeSpec("digits", rows=RowSample(rows=2 * 3 * 4))
    np.testing.assert_array_equal(sample_rows(spec, 2, 3, 4, repeat=0), np.arange(24))


def test_too_many_rows_names_both_numbers_and_the_shape():
    with pytest.raises(ValueError) as error:
        sample_rows(SAMPLED, 10, 7, 7, repeat=0)
    assert "500" in str(error.value) and "490" in str(error.value) and "10 images × 7×7" in str(error.value)


def test_linear_layer_with_fewer_images_than_rows():
    with pytest.raises(ValueError, match=r"500 rows but a layer of 360 images × 1×1 positions has only 360"):
        sample_rows(SAMPLED, 360, 1, 1, repeat=0)
    assert sample_rows(SAMPLED, 600, 1, 1, repeat=0).max() < 600


@pytest.mark.parametrize("repeat", [-1, 4, 1.0, None])
def test_repeat_out_of_range(repeat):
    with pytest.raises(ValueError, match=r"repeat must be an integer in \[0, 4\)"):
        sample_rows(SAMPLED, 100, 6, 6, repeat=repeat)


@pytest.mark.parametrize("shape", [(0, 6, 6), (100, 0, 6), (100, 6, -1), (100.0, 6, 6)])
def test_bad_layer_shape(shape):
    with pytest.raises(ValueError, match="must be a positive integer"):
        sample_rows(SAMPLED, *shape, repeat=0)


# ---------------------------------------------------------------------------------------------------- row_positions


def test_row_positions_inverts_the_flat_index():
    n_images, height, width = 100, 6, 5
    flat = sample_rows(SAMPLED, n_images, height, width, repeat=3)
    image, y, x = row_positions(flat, height, width)
    assert all(part.dtype == np.int64 for part in (image, y, x))
    np.testing.assert_array_equal((image * height + y) * width + x, flat)
    assert image.max() < n_images and y.max() < height and x.max() < width
    expected = np.unravel_index(flat, (n_images, height, width))
    for got, want in zip((image, y, x), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_flat_rows_index_channels_last_activations():
    """The flat order is that of an (N, C, H, W) activation moved to (N·H·W, C), as conv-layer extraction does."""
    activations = torch.arange(3 * 4 * 5 * 2, dtype=torch.float32).reshape(3, 4, 5, 2)  # (N, C, H, W)
    matrix = activations.permute(0, 2, 3, 1).reshape(-1, 4)  # (N·H·W, C)
    flat = sample_rows(ProbeSpec("digits", rows=RowSample(rows=12)), 3, 5, 2, repeat=0)
    image, y, x = row_positions(flat, 5, 2)
    assert torch.equal(matrix[torch.from_numpy(flat)], activations[image, :, y, x])


def test_row_positions_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        row_positions(np.array([-1, 2]), 3, 3)
    with pytest.raises(ValueError, match="integers"):
        row_positions(np.array([1.0]), 3, 3)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        row_positions(np.array([1]), 3, 0)
    empty = row_positions(np.array([], dtype=np.int64), 3, 3)
    assert all(part.shape == (0,) for part in empty)
