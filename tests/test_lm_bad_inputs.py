"""A language-model study's bad inputs through the command line (issue 22, point 6): each is refused by ``raymatch
plan`` and ``raymatch run`` with exit code 2 and one line naming its field, before Ray starts, nothing written.

A folder without weights, mixed tokenizers (two models named), a text with fewer non-empty lines than
``n_examples``, ``max_length`` beyond the model's positions, a layer selector that matches no module (a typo in
``transformer.h.*.mlp.act``), a Hub id not in the offline cache, a revision that does not exist; and a class that
cannot build the model, rows beyond the real tokens, an untrained null for models the study does not train.
"""

from __future__ import annotations

import os

import pytest

from .lm_helpers import gpt2, gpt2_folders, lm_study, lm_study_folder, save_model, write_hub_repo, write_tokenizer
from .test_bad_inputs import assert_problem, run_cli, snapshot, write_study
from .test_bad_inputs import ray_starts as ray_starts  # (a fixture)


@pytest.fixture
def folder(tmp_path):
    return lm_study_folder(tmp_path / "study")


def no_weights(folder):
    for name in os.listdir(folder / "lm-seeds" / "seed1"):
        if name.endswith(".safetensors"):
            os.remove(folder / "lm-seeds" / "seed1" / name)
    return {}


def mixed_tokenizers(folder):
    other = write_tokenizer(folder / "other-tokenizer", vocab_size=300)
    save_model(gpt2(5, len(other)), folder / "lm-seeds" / "seed2", other)
    return {}


def few_lines(folder):
    (folder / "texts.txt").write_text("one text\n\n   \ntwo texts\n")
    return {}


def hub(folder, revisions=("step10",)):
    tokenizer = write_tokenizer(folder / "hub-tokenizer")
    for seed in (0, 1):
        model = save_model(gpt2(seed, len(tokenizer)), folder / f"hub-{seed}", tokenizer)
        write_hub_repo(folder / "hub-cache", f"org/lm-seed{seed}", {"step10": model})
    os.environ["HF_HUB_CACHE"] = str(folder / "hub-cache")  # (restored by the test's monkeypatch)
    return {"population": {"hub": "org/lm-seed{seed}", "seeds": [0, 1], "revisions": list(revisions)}}


CASES = {
    "a folder without weights": (no_weights, ["population.glob: seed1: ", "/lm-seeds/seed1 has no weights"]),
    "mixed tokenizers": (mixed_tokenizers, ["population: models seed0 and seed2 have different tokenizers"]),
    "fewer texts than n_examples": (few_lines, ["probe.n_examples: asks for 40 texts but texts.txt has only 2 "
                                                "non-empty texts"]),
    "max_length beyond the positions": (lambda folder: {"probe__max_length": 100},
                                        ["probe.max_length: 100 is beyond the 64 positions of model seed0"]),
    "a selector matching no module": (lambda folder: {"layers": ["transformer.h.*.mlp.actt", "hidden_states"]},
                                      ["layers[0]: unknown layer 'transformer.h.*.mlp.actt': it matches no module of "
                                       "GPT2LMHeadModel; did you mean 'transformer.h.*.mlp.act'"]),
    "a Hub id not in the offline cache": (lambda folder: {**hub(folder), "population": {
        "hub": "org/absent-seed{seed}", "seeds": [0, 1]}}, ["population.hub: org/absent-seed0: Hub id "
                                                            "org/absent-seed0 is not in the offline cache",
                                                            "population.hub: org/absent-seed1: "]),
    "a revision that does not exist": (lambda folder: hub(folder, ("step10", "step99")),
                                       ["population.revisions[1]: org/lm-seed0@step99: revision step99 of "
                                        "org/lm-seed0 does not exist in the offline cache",
                                        "(cached revisions: step10)", "population.revisions[1]: org/lm-seed1@"]),
    "a class that cannot build the model": (lambda folder: {"architecture__class": "AutoModelForMaskedLM"},
                                            ["architecture.class: AutoModelForMaskedLM cannot build model seed0: "
                                             "Unrecognized configuration class"]),
    "more rows than real tokens": (lambda folder: {"probe__rows": {"rows": 10**6}},
                                   ["probe.rows.rows: asks for 1000000 rows but the probe has only"]),
    "an untrained null of given models": (lambda folder: {"null_baseline": True},
                                          ["null_baseline: untrained initialises the models a study trains"]),
}


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_language_model_study_is_refused_before_ray(folder, tmp_path, capsys, ray_starts, monkeypatch,
                                                           case, command):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    make, needles = CASES[case]
    edits = make(folder)
    store = tmp_path / "store"
    path = write_study(folder, lm_study("file://" + str(store), **edits))
    code, err = run_cli(capsys, command, path)
    problems = assert_problem(code, err, path, *needles)
    assert len(problems.splitlines()) == (2 if "Hub" in case or "revision" in case else 1), err  # one per model
    assert not ray_starts and snapshot(store) is None  # refused before Ray, nothing written


def test_every_problem_is_reported_in_one_pass(folder, tmp_path, capsys, ray_starts):
    no_weights(folder)
    few_lines(folder)
    path = write_study(folder, lm_study("file://" + str(tmp_path / "store"), probe__max_length=100,
                                        layers=["transformer.h.*.mlp.actt"]))
    code, err = run_cli(capsys, "plan", path)
    problems = assert_problem(code, err, path, "population.glob: seed1", "layers[0]: unknown layer",
                              "probe.n_examples: asks for 40", "probe.max_length: 100 is beyond")
    assert len(problems.splitlines()) == 4 and not ray_starts


def test_a_probe_tokenizer_must_be_the_models(folder, tmp_path, capsys, ray_starts):
    write_tokenizer(folder / "other", vocab_size=300)
    path = write_study(folder, lm_study("file://" + str(tmp_path / "store"), probe__tokenizer="other"))
    code, err = run_cli(capsys, "plan", path)
    assert_problem(code, err, path, "probe.tokenizer: differs from the tokenizer of model seed0")


def test_models_without_a_tokenizer_need_probe_tokenizer(tmp_path, capsys, ray_starts):
    folder = tmp_path / "study"
    gpt2_folders(folder / "lm-seeds")
    for seed in (0, 1):
        for name in os.listdir(folder / "lm-seeds" / f"seed{seed}"):
            if name.startswith(("tokenizer", "special_tokens")):
                os.remove(folder / "lm-seeds" / f"seed{seed}" / name)
    (folder / "texts.txt").write_text("\n".join(f"text number {i}" for i in range(50)))
    path = write_study(folder, lm_study("file://" + str(tmp_path / "store")))
    code, err = run_cli(capsys, "plan", path)
    assert_problem(code, err, path, "probe.tokenizer: required: no model folder holds a tokenizer")
    path = write_study(folder, lm_study("file://" + str(tmp_path / "store"), probe__tokenizer="lm-seeds-tokenizer"))
    code, err = run_cli(capsys, "plan", path)
    assert code == 0, err
