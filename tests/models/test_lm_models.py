"""Hugging Face models as a population: folders and offline Hub ids, model ids, tokenizers and their fingerprints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from raymatch.models.lm_population import LMModel, ModelSourceError, expand_population
from raymatch.models.transformers_source import (
    hub_cache_dir,
    lm_model_id,
    load_config,
    load_lm,
    max_positions,
    resolve_model,
)
from raymatch.probes.tokenizer import TokenizerError, load_tokenizer, same_tokenizer, tokenizer_fingerprint

from ..lm_helpers import bert, gpt2, save_model, write_hub_repo, write_tokenizer


@pytest.fixture(scope="module")
def lm_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    tokenizer = write_tokenizer(root / "tokenizer")
    folders = {seed: save_model(gpt2(seed, len(tokenizer)), root / f"seed{seed}", tokenizer) for seed in (0, 1)}
    return root, tokenizer, folders


def test_a_folder_loads_as_each_class_and_dtype(lm_folders):
    _, _, folders = lm_folders
    resolved = resolve_model(str(folders[0]))
    assert resolved.commit is None and resolved.model.seed == 0
    causal, causal_id = load_lm(resolved, "AutoModelForCausalLM", "float32")
    assert type(causal).__name__ == "GPT2LMHeadModel" and not causal.training
    base, base_id = load_lm(resolved, "AutoModel", "bfloat16")
    assert type(base).__name__ == "GPT2Model" and next(base.parameters()).dtype == torch.bfloat16
    assert len({causal_id, base_id, lm_model_id(resolved, "AutoModel", "float32"),
                lm_model_id(resolved, "AutoModel", "float16")}) == 4
    reference = gpt2(0, causal.config.vocab_size)
    assert torch.equal(causal.transformer.h[1].mlp.c_fc.weight, reference.transformer.h[1].mlp.c_fc.weight)


def test_the_model_id_follows_the_folder_content_not_its_place(lm_folders, tmp_path):
    _, _, folders = lm_folders
    original = lm_model_id(resolve_model(str(folders[0])))
    copy = shutil.copytree(folders[0], tmp_path / "copy")
    assert lm_model_id(resolve_model(str(copy))) == original
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "transformers_version": "0.0.1"}))
    assert lm_model_id(resolve_model(str(copy))) == original  # who wrote it is no content
    (copy / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    assert lm_model_id(resolve_model(str(copy))) != original
    (copy / "config.json").write_text(json.dumps(config))
    shutil.copy(folders[1] / "model.safetensors", copy / "model.safetensors")
    assert lm_model_id(resolve_model(str(copy))) == lm_model_id(resolve_model(str(folders[1])))
    assert lm_model_id(resolve_model(str(folders[1]))) != original


def test_bad_folders_get_one_error_naming_them(lm_folders, tmp_path):
    _, _, folders = lm_folders
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(folders[0] / "config.json", empty / "config.json")
    with pytest.raises(ModelSourceError, match=r"no-weights has no weights"):
        resolve_model(str(empty))
    with pytest.raises(ModelSourceError, match=r"has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelSourceError, match=r"folder ./missing-folder does not exist"):
        resolve_model("./missing-folder")
    with pytest.raises(ModelSourceError, match=r"a revision applies to a Hub id"):
        resolve_model(LMModel(str(folders[0]), "step10"))
    with pytest.raises(ModelSourceError, match=r"architecture.class: must be one of"):
        lm_model_id(resolve_model(str(folders[0])), "AutoModelForSeq2SeqLM")
    with pytest.raises(ModelSourceError, match=r"architecture.torch_dtype: must be one of"):
        load_lm(resolve_model(str(folders[0])), "AutoModel", "float64")
    with pytest.raises(ModelSourceError, match=r"AutoModelForMaskedLM cannot load"):
        load_lm(resolve_model(str(folders[0])), "AutoModelForMaskedLM")


def test_a_hub_id_resolves_through_the_offline_cache_only(lm_folders, tmp_path, monkeypatch):
    _, _, folders = lm_folders
    cache = tmp_path / "hf" / "hub"
    commits = write_hub_repo(cache, "org/tiny-seed0", {"main": folders[1], "step1000": folders[0]})
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == str(cache)  # read at each call
    resolved = resolve_model(LMModel("org/tiny-seed0", "step1000", 0, 1000))
    assert resolved.commit == commits["step1000"] and resolved.path.endswith(commits["step1000"])
    model, _ = load_lm(resolved, "AutoModelForCausalLM")
    assert torch.equal(model.transformer.wte.weight, gpt2(0, model.config.vocab_size).transformer.wte.weight)
    main = resolve_model("org/tiny-seed0")
    assert main.commit == commits["main"] and lm_model_id(main) != lm_model_id(resolved)
    assert resolve_model(LMModel("org/tiny-seed0", commits["main"])).commit == commits["main"]
    with pytest.raises(ModelSourceError, match=r"Hub id org/absent is not in the offline cache"):
        resolve_model("org/absent")
    with pytest.raises(ModelSourceError, match=r"revision step2000 of org/tiny-seed0 does not exist in the offline "
                                               r"cache .*cached revisions: main, step1000"):
        resolve_model(LMModel("org/tiny-seed0", "step2000"))
    with pytest.raises(ModelSourceError, match=r"not a Hub id"):
        resolve_model("bad name!")


def test_tokenizer_fingerprints_ignore_padding_and_see_vocabulary_and_special_tokens(lm_folders, tmp_path):
    _, tokenizer, folders = lm_folders
    fingerprint = tokenizer_fingerprint(load_tokenizer(str(folders[0])))
    assert fingerprint == tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(load_tokenizer(str(folders[1])))
    left = write_tokenizer(tmp_path / "left", padding_side="left")
    assert left.padding_side == "left" and tokenizer_fingerprint(left) == fingerprint
    tokenizer(["a b", "a"], padding=True)  # leaves padding settings in the backend: still the same tokens
    assert tokenizer_fingerprint(tokenizer) == fingerprint
    other_vocabulary = tokenizer_fingerprint(write_tokenizer(tmp_path / "v", vocab_size=320))
    other_special = tokenizer_fingerprint(write_tokenizer(tmp_path / "s", extra_special=("<|sep|>",)))
    assert len({fingerprint, other_vocabulary, other_special}) == 3
    assert same_tokenizer({"a": fingerprint, "b": fingerprint}) == fingerprint
    with pytest.raises(TokenizerError, match=r"models a and c have different tokenizers"):
        same_tokenizer({"a": fingerprint, "b": fingerprint, "c": other_special})
    no_tokenizer = tmp_path / "bare"
    save_model(gpt2(0, 50), no_tokenizer)
    with pytest.raises(TokenizerError, match=r"tokenizer of .*bare"):
        load_tokenizer(str(no_tokenizer))


def test_population_forms(lm_folders, monkeypatch):
    root, _, _ = lm_folders
    monkeypatch.chdir(root)
    assert [m.name for m in expand_population(glob="seed*")] == ["seed0", "seed1"]
    assert [(m.name, m.seed) for m in expand_population(models=["seed1", "org/x"])] == [("seed1", 1), ("org/x", None)]
    hub = expand_population(hub="EleutherAI/pythia-14m-seed{seed}", seeds=[1, 2], revisions=["step1000", "main"])
    assert [(m.label, m.seed, m.revision, m.step) for m in hub] == [
        ("EleutherAI/pythia-14m-seed1@step1000", 1, "step1000", 1000),
        ("EleutherAI/pythia-14m-seed1@main", 1, "main", None),
        ("EleutherAI/pythia-14m-seed2@step1000", 2, "step1000", 1000),
        ("EleutherAI/pythia-14m-seed2@main", 2, "main", None)]
    assert hub[0].to_dict() == {"name": "EleutherAI/pythia-14m-seed1", "revision": "step1000", "seed": 1,
                                "step": 1000}
    assert expand_population(hub="google/multiberts-seed_{seed}", seeds=[3], revisions=["step_20k"])[0].step == 20_000
    problems = [
        (dict(models=["a"], glob="b"), r"exactly one of models, glob or hub \(got models, glob\)"),
        (dict(models=["a"], seeds=[1]), r"seeds and revisions go with hub"),
        (dict(hub="org/m-seed{seed}"), r"population.seeds: required"),
        (dict(hub="org/m", seeds=[1]), r"has no \{seed\}"),
        (dict(hub="org/m-{step}", seeds=[1]), r"the only placeholder is \{seed\}"),
        (dict(hub="org/m-seed{seed}", seeds=[1, -1]), r"population.seeds\[1\]"),
        (dict(models=["a", "a"]), r"a is listed twice"),
        (dict(models=[]), r"population.models: must be a non-empty list"),
        (dict(glob="nothing-*"), r"population.glob: 'nothing-\*' matches no folder"),
    ]
    for kwargs, message in problems:
        with pytest.raises(ModelSourceError, match=message):
            expand_population(**kwargs)


def test_max_positions_and_a_masked_lm(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tok", template=True)
    folder = save_model(bert(0, len(tokenizer)), tmp_path / "bert", tokenizer)
    model, _ = load_lm(resolve_model(str(folder)), "AutoModelForMaskedLM")
    assert type(model).__name__ == "BertForMaskedLM" and max_positions(model.config) == 64
    assert max_positions(gpt2(0, 50, n_positions=48).config) == 48
    assert max_positions(load_config(resolve_model(str(folder)))) == 64
