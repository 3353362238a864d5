"""Training populations: the spec, deterministic training, holdout selection, and the Ray fan-out to a store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import raymatch.probes.datasets as datasets
from raymatch.engine.training import train_population
from raymatch.models import checkpoint_id, load_model
from raymatch.probes import load_dataset
from raymatch.train import (
    HOLDOUT_SEED,
    TrainingSpec,
    holdout_split,
    pending_seeds,
    population_keys,
    recipe,
    record_key,
    train_model,
    untrained_model,
)
from raymatch.train.loop import _augment

ARCH = "small_cnn"
ARCH_KWARGS = {"in_channels": 1, "input_size": 8, "width": 0.5}
#: A few dozen SGD steps on 400 digits: well above chance in a few hundredths of a second.
SMALL = recipe("quick", epochs=3, batch_size=32, n_train=400)
DIGITS_TRAIN_SIZE = 1437


def accuracy(data: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    model, _ = load_model(ARCH, data, **ARCH_KWARGS)
    with torch.no_grad():
        predicted = model(torch.tensor(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


# ------------------------------------------------------------------------------------------------------ the spec


def test_spec_round_trips_through_json_with_the_same_id():
    spec = recipe("quick", epochs=5, milestones=(2, 4), n_train=100, data_dir="/somewhere")
    again = TrainingSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.id == spec.id and len(spec.id) == 16 and int(spec.id, 16) >= 0
    assert isinstance(again.milestones, tuple)


def test_spec_id_ignores_data_dir_but_not_hyperparameters():
    spec = recipe("quick")
    assert recipe("quick", data_dir="/elsewhere").id == spec.id
    assert recipe("quick", lr=0.01).id != spec.id
    assert recipe("quick", select="last").id != spec.id
    assert recipe("quick", lr=1).id == recipe("quick", lr=1.0).id  # numbers are normalised before hashing


def test_from_dict_fills_missing_fields_from_the_named_recipe():
    spec = TrainingSpec.from_dict({"recipe": "paper-cifar", "lr": 0.05})
    assert spec == recipe("paper-cifar", lr=0.05)
    assert TrainingSpec.from_dict({"epochs": 2}) == recipe("quick", epochs=2)


def test_paper_cifar_recipe_has_the_papers_numbers():
    spec = recipe("paper-cifar")
    assert (spec.dataset, spec.recipe) == ("cifar10", "paper-cifar")
    assert (spec.epochs, spec.batch_size, spec.lr, spec.momentum, spec.weight_decay) == (160, 128, 0.1, 0.9, 5e-4)
    assert (spec.milestones, spec.gamma, spec.augment) == ((80, 120), 0.1, True)
    assert (spec.holdout, spec.select) == (0.1, "best-holdout")


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="learning_rate: unknown key"):
        TrainingSpec.from_dict({"dataset": "digits", "learning_rate": 0.1})
    with pytest.raises(ValueError, match="epoch: unknown key"):
        recipe("quick", epoch=3)
    with pytest.raises(ValueError, match="unknown training recipe 'fast'"):
        recipe("fast")
    with pytest.raises(ValueError, match="recipe"):
        TrainingSpec.from_dict({"recipe": "fast"})


def test_every_bad_value_is_named_in_one_error():
    with pytest.raises(ValueError) as caught:
        recipe("quick", epochs=-1, batch_size=0, lr=0.0, momentum=1.0, weight_decay=-1, milestones=(5, 3),
               gamma="x", augment=1, holdout=1.0, n_train=0, select="best", dataset="mnist")
    message = str(caught.value)
    for name in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "augment",
                 "holdout", "n_train", "select", "dataset"):
        assert f"{name}: " in message, name


@pytest.mark.parametrize(("overrides", "field"), [
    ({"epochs": 2.5}, "epochs"),
    ({"epochs": True}, "epochs"),
    ({"lr": float("nan")}, "lr"),
    ({"milestones": "80"}, "milestones"),
    ({"data_dir": 3}, "data_dir"),
    ({"holdout": 0.0}, "holdout: must be > 0 with select='best-holdout'"),
])
def test_wrong_types_and_ranges_are_refused(overrides, field):
    with pytest.raises(ValueError, match=field):
        recipe("quick", **overrides)


def test_holdout_zero_is_allowed_with_select_last():
    assert recipe("quick", holdout=0.0, select="last").holdout == 0.0


# --------------------------------------------------------------------------------------------- the holdout split


def test_holdout_split_is_fixed_disjoint_and_independent_of_n_train():
    train, held = holdout_split(DIGITS_TRAIN_SIZE, 0.1)
    assert len(held) == 144 and len(train) == DIGITS_TRAIN_SIZE - 144
    assert not np.intersect1d(train, held).size
    assert np.array_equal(np.union1d(train, held), np.arange(DIGITS_TRAIN_SIZE))
    capped, held_again = holdout_split(DIGITS_TRAIN_SIZE, 0.1, n_train=100)
    assert np.array_equal(held_again, held) and len(capped) == 100 and np.isin(capped, train).all()
    expected = np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(DIGITS_TRAIN_SIZE)[:144])
    assert np.array_equal(held, expected)
    with pytest.raises(ValueError, match="none to train on"):
        holdout_split(1, 0.5)


def test_holdout_images_come_from_the_train_split_not_the_test_split():
    train_images, _ = load_dataset("digits", "train")
    test_images, _ = load_dataset("digits", "test")
    _, held = holdout_split(len(train_images), 0.1)
    test_rows = {image.tobytes() for image in test_images}
    assert not any(image.tobytes() in test_rows for image in train_images[held])


# -------------------------------------------------------------------------------------------------- training


def test_same_seed_gives_identical_checkpoint_and_other_seeds_differ():
    first = train_model(ARCH, ARCH_KWARGS, SMALL, 0)
    again = train_model(ARCH, ARCH_KWARGS, SMALL, 0)
    other = train_model(ARCH, ARCH_KWARGS, SMALL, 1)
    assert first.checkpoint == again.checkpoint
    assert first.record["checkpoint_id"] == checkpoint_id(first.checkpoint) == again.record["checkpoint_id"]
    assert other.checkpoint != first.checkpoint


def test_augmented_training_is_deterministic_too():
    spec = recipe("quick", epochs=1, batch_size=32, n_train=200, augment=True)
    assert train_model(ARCH, ARCH_KWARGS, spec, 3).checkpoint == train_model(ARCH, ARCH_KWARGS, spec, 3).checkpoint


def test_augmentation_crops_a_padded_image_and_maybe_flips_it():
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((16, 2, 5, 6)).astype(np.float32)
    pad_values = np.array([-7.0, -9.0], dtype=np.float32)
    out = _augment(batch, np.random.default_rng(1), pad_values)
    assert out.shape == batch.shape and out.dtype == np.float32
    padded = np.empty((16, 2, 13, 14), dtype=np.float32)
    padded[...] = pad_values[None, :, None, None]
    padded[:, :, 4:9, 4:10] = batch
    flips = 0
    for index in range(16):
        candidates = [(padded[index, :, top:top + 5, left:left + 6], flip) for top in range(9) for left in range(9)
                      for flip in (False, True)]
        found = [flip for crop, flip in candidates if np.array_equal(crop[..., ::-1] if flip else crop, out[index])]
        assert found, index
        flips += found[0]
    assert 0 < flips < 16


def test_trained_accuracy_is_well_above_chance():
    record = train_model(ARCH, ARCH_KWARGS, SMALL, 0).record
    assert record["test_accuracy"] > 0.5 and record["holdout_accuracy"] > 0.5
    assert record["train_loss"][-1] < record["train_loss"][0]
    assert (record["epochs"], record["n_train"], record["n_holdout"], record["n_test"]) == (3, 400, 144, 360)


def test_quick_recipe_reaches_90_percent_on_full_digits():
    record = train_model(ARCH, ARCH_KWARGS, recipe("quick"), 0).record
    assert record["test_accuracy"] > 0.9
    assert record["n_train"] == DIGITS_TRAIN_SIZE - 144


def test_selection_picks_best_holdout_epoch_and_reports_its_accuracies(monkeypatch):
    loaded = []
    original = datasets.load_dataset

    def spy(name, split="test", data_dir=None):
        loaded.append(split)
        return original(name, split, data_dir)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    # A learning rate this high makes the holdout accuracy rise and then fall (epochs 3 then 4 for seed 0).
    spec = recipe("quick", epochs=4, milestones=(), lr=0.3, n_train=300)
    trained = train_model(ARCH, ARCH_KWARGS, spec, 0)
    record = trained.record
    history = record["holdout_accuracy_history"]
    assert record["selected_epoch"] == int(np.argmax(history)) + 1
    assert record["holdout_accuracy"] == max(history)
    assert loaded == ["train", "test"]  # the test split is read once, after selection

    train_images, train_labels = original("digits", "train")
    test_images, test_labels = original("digits", "test")
    _, held = holdout_split(len(train_labels), spec.holdout)
    assert accuracy(trained.checkpoint, train_images[held], train_labels[held]) == pytest.approx(
        record["holdout_accuracy"])
    assert accuracy(trained.checkpoint, test_images, test_labels) == pytest.approx(record["test_accuracy"])

    # The same seed follows the same trajectory whatever the number of epochs: the selected checkpoint is
    # the one training stops at after `selected_epoch` epochs.
    stopped = train_model(ARCH, ARCH_KWARGS, recipe("quick", epochs=record["selected_epoch"], milestones=(), lr=0.3,
                                                    n_train=300, select="last"), 0)
    assert stopped.checkpoint == trained.checkpoint


def test_select_last_keeps_the_final_epoch():
    best = train_model(ARCH, ARCH_KWARGS, recipe("quick", epochs=4, milestones=(), lr=0.3, n_train=300), 0)
    last = train_model(ARCH, ARCH_KWARGS, recipe("quick", epochs=4, milestones=(), lr=0.3, n_train=300,
                                                 select="last"), 0)
    assert last.record["selected_epoch"] == 4
    assert last.record["holdout_accuracy_history"] == best.record["holdout_accuracy_history"]
    assert last.record["holdout_accuracy"] == last.record["holdout_accuracy_history"][-1]
    assert (best.record["selected_epoch"] < 4) == (best.checkpoint != last.checkpoint)
    assert best.record["selected_epoch"] < 4  # the point of this configuration: holdout accuracy falls at the end


def test_training_leaves_the_callers_torch_settings_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    train_model(ARCH, ARCH_KWARGS, recipe("quick", epochs=1, n_train=64), 0, threads=1)
    untrained_model(ARCH, ARCH_KWARGS, 0)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_a_model_that_does_not_fit_the_images_is_refused_by_name():
    with pytest.raises(ValueError, match=r"does not take digits images of shape \(1, 8, 8\)"):
        train_model(ARCH, {"input_size": 8}, SMALL, 0)  # in_channels defaults to 3
    with pytest.raises(ValueError, match="10 classes"):
        train_model(ARCH, {**ARCH_KWARGS, "num_classes": 5}, SMALL, 0)


def test_cuda_falls_back_to_cpu_with_a_warning_when_there_is_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.warns(UserWarning, match="no GPU"):
        record = train_model(ARCH, ARCH_KWARGS, recipe("quick", epochs=1, n_train=64), 0, device="cuda").record
    assert record["device"] == "cpu"


def test_untrained_model_is_deterministic_and_is_where_training_starts():
    init = untrained_model(ARCH, ARCH_KWARGS, 5, dataset="digits")
    assert init.checkpoint == untrained_model(ARCH, ARCH_KWARGS, 5).checkpoint
    assert init.checkpoint != untrained_model(ARCH, ARCH_KWARGS, 6).checkpoint
    trained = train_model(ARCH, ARCH_KWARGS, SMALL, 5)
    assert trained.checkpoint != init.checkpoint
    assert train_model(ARCH, ARCH_KWARGS, recipe("quick", epochs=0), 5).checkpoint == init.checkpoint
    record = init.record
    assert (record["kind"], record["epochs"], record["spec_id"], record["n_test"]) == ("untrained", 0, None, 360)
    assert record["test_accuracy"] < trained.record["test_accuracy"]
    json.dumps(record)


# ------------------------------------------------------------------------------------------ populations on Ray


def test_keys_are_in_seed_order():
    assert population_keys("pop/", [2, 0]) == ["pop/seed2.safetensors", "pop/seed0.safetensors"]
    assert record_key("pop", 3) == "pop/seed3.json"
    with pytest.raises(ValueError, match="distinct"):
        population_keys("pop", [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        population_keys("pop", [-1])


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_population_writes_checkpoint_and_record_per_seed_and_skips_done_seeds(store):
    spec = recipe("quick", epochs=1, batch_size=32, n_train=200)
    seeds = [3, 1]
    outcomes = train_population(store, ARCH, ARCH_KWARGS, spec, seeds, prefix="pop/small", max_in_flight=2,
                                progress=False)
    assert [outcome.item for outcome in outcomes] == seeds and all(outcome.ok for outcome in outcomes)
    assert store.list("pop/small") == ["pop/small/seed1.json", "pop/small/seed1.safetensors",
                                       "pop/small/seed3.json", "pop/small/seed3.safetensors"]
    for seed, key in zip(seeds, population_keys("pop/small", seeds), strict=True):
        record = store.read_json(record_key("pop/small", seed))
        data = store.read_bytes(key)
        _, model_id = load_model(ARCH, data, **ARCH_KWARGS)
        assert record["checkpoint_id"] == model_id and record["checkpoint_key"] == key
        assert (record["seed"], record["spec_id"], record["kind"]) == (seed, spec.id, "trained")
        assert data == train_model(ARCH, ARCH_KWARGS, spec, seed).checkpoint  # the same model as trained here

    assert pending_seeds(store, "pop/small", seeds) == []
    assert train_population(store, ARCH, ARCH_KWARGS, spec, seeds, prefix="pop/small", progress=False) == []

    # A checkpoint without its record (a task killed between the writes) is trained again; only that seed.
    store.delete(record_key("pop/small", 1))
    assert pending_seeds(store, "pop/small", seeds) == [1]
    redone = train_population(store, ARCH, ARCH_KWARGS, spec, seeds, prefix="pop/small", progress=False)
    assert [outcome.item for outcome in redone] == [1] and redone[0].ok
    # Listed, not store.exists(): on S3 that can answer from the listing cached by the previous list().
    assert record_key("pop/small", 1) in store.list("pop/small")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_population_refuses_to_mix_models_made_another_way(local_store):
    spec = recipe("quick", epochs=1, batch_size=32, n_train=100)
    train_population(local_store, ARCH, ARCH_KWARGS, spec, [0], prefix="pop", progress=False)
    with pytest.raises(ValueError, match="spec_id"):
        train_population(local_store, ARCH, ARCH_KWARGS, recipe("quick", epochs=2, n_train=100), [0, 1],
                         prefix="pop", progress=False)
    with pytest.raises(ValueError, match="kind"):
        train_population(local_store, ARCH, ARCH_KWARGS, spec, [0], prefix="pop", untrained=True, progress=False)
    assert local_store.list("pop") == ["pop/seed0.json", "pop/seed0.safetensors"]  # nothing was submitted


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_untrained_population_writes_initialisations(local_store):
    spec = recipe("quick")
    outcomes = train_population(local_store, ARCH, ARCH_KWARGS, spec, [0, 1], prefix="null", untrained=True,
                                progress=False)
    assert all(outcome.ok for outcome in outcomes)
    for seed, key in zip([0, 1], population_keys("null", [0, 1]), strict=True):
        assert local_store.read_bytes(key) == untrained_model(ARCH, ARCH_KWARGS, seed).checkpoint
        record = local_store.read_json(record_key("null", seed))
        assert (record["kind"], record["epochs"], record["dataset"]) == ("untrained", 0, "digits")
        assert 0.0 <= record["test_accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_failing_seed_is_reported_and_stays_pending(local_store):
    outcomes = train_population(local_store, ARCH, {"input_size": 8}, SMALL, [0], prefix="bad", progress=False)
    assert len(outcomes) == 1 and not outcomes[0].ok and "does not take digits images" in outcomes[0].error
    assert pending_seeds(local_store, "bad", [0]) == [0] and local_store.list("bad") == []
