"""Training a language-model population offline: the fortunes corpus and its fixed holdout, a deterministic BPE
tokenizer, tiny GPT-2 seeds that are deterministic per seed and learn, the untrained null as their starting point,
and (slow) trained seeds that match each other far above the untrained null."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raymatch.extract.tokens import extract_tokens, token_layers
from raymatch.match import match_curve
from raymatch.models import load_lm, resolve_model
from raymatch.probes import load_tokenizer, tokenizer_fingerprint
from raymatch.probes.text import make_text_probe
from raymatch.probes.token_rows import TokenRows
from raymatch.store import ActivationKey, read_activations
from raymatch.train.causal_lm import (
    FORTUNES,
    RECORD,
    CausalLMRecipe,
    fortune_files,
    read_corpus,
    save_untrained,
    split_corpus,
    train_causal_lm,
    train_tokenizer,
)

from .lm_helpers import sentences

needs_fortunes = pytest.mark.skipif(not os.path.isdir(FORTUNES), reason="Debian's fortunes is not installed")
TINY = CausalLMRecipe(n_layer=2, n_embd=32, n_head=2, n_positions=32, block_size=16, batch_size=4, steps=12,
                      warmup=2)


@needs_fortunes
def test_the_fortunes_corpus_and_its_fixed_holdout():
    files = fortune_files()
    assert files and not any(f.endswith((".dat", ".u8")) or os.path.isdir(f) for f in files)
    texts = read_corpus()
    assert len(texts) > 10_000 and all(text.strip() and "\n%\n" not in text for text in texts)
    assert len(read_corpus(exclude=["art"])) < len(texts)
    train, held = split_corpus(texts, 0.05)
    assert len(held) == round(0.05 * len(texts)) and len(train) + len(held) == len(texts)
    assert split_corpus(texts, 0.05) == (train, held)


def test_a_corpus_file_in_a_probe_format(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"t": text}) for text in ["a", "", "b c"]))
    assert read_corpus(str(path), fmt="jsonl", field_name="t") == ["a", "b c"]
    with pytest.raises(ValueError, match=r"training.corpus.format"):
        read_corpus(str(path), fmt="csv")
    with pytest.raises(FileNotFoundError, match=r"apt-get install fortunes"):
        fortune_files(str(tmp_path / "absent"))


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(sentences(300, seed=2), str(folder), vocab_size=320)
    return str(folder)


def test_the_tokenizer_is_deterministic_and_a_transformers_folder(tokenizer_folder, tmp_path):
    again = train_tokenizer(sentences(300, seed=2), str(tmp_path), vocab_size=320)
    loaded = load_tokenizer(tokenizer_folder)
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(again) and len(loaded) == 320
    assert loaded.eos_token == loaded.pad_token == "<|endoftext|>"
    assert loaded("The cat sat.")["input_ids"] == loaded("The cat sat.", add_special_tokens=False)["input_ids"]


def test_seeds_are_deterministic_learn_and_start_from_the_untrained_null(tokenizer_folder, tmp_path):
    texts = sentences(200, seed=4)
    records = {name: train_causal_lm(texts, tokenizer_folder, str(tmp_path / name), seed, TINY, heldout=texts[:20])
               for name, seed in (("a", 0), ("a-again", 0), ("b", 1))}
    weights = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in records}
    assert all(torch.equal(weights["a"][key], weights["a-again"][key]) for key in weights["a"])
    assert not torch.equal(weights["a"]["transformer.h.0.mlp.c_fc.weight"],
                           weights["b"]["transformer.h.0.mlp.c_fc.weight"])
    record = json.loads((tmp_path / "a" / RECORD).read_text())
    assert record["steps"] == 12 and record["trained"] and record["seconds"] > 0 and record["recipe"] == TINY.to_dict()
    assert record["train_loss"] < record["first_loss"]
    untrained = save_untrained(tokenizer_folder, str(tmp_path / "null-a"), 0, TINY, heldout=texts[:20])
    assert untrained["steps"] == 0 and untrained["heldout_loss"] > record["heldout_loss"]
    start = train_causal_lm(texts, tokenizer_folder, str(tmp_path / "zero-steps"), 0,
                            CausalLMRecipe(**{**TINY.to_dict(), "steps": 0}))
    assert start["steps"] == 0
    null, zero = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("null-a", "zero-steps"))
    assert all(torch.equal(null[key], zero[key]) for key in null)
    model, _ = load_lm(resolve_model(str(tmp_path / "a")), "AutoModelForCausalLM")
    assert model.config.n_embd == 32 and tokenizer_fingerprint(load_tokenizer(str(tmp_path / "a"))) == \
        tokenizer_fingerprint(load_tokenizer(tokenizer_folder))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary folder left


@pytest.mark.slow
@needs_fortunes
def test_trained_seeds_match_far_above_the_untrained_null(tmp_path, local_store):
    train, held = split_corpus(read_corpus(), 0.05)
    tokenizer = train_tokenizer(train, str(tmp_path / "tokenizer"), vocab_size=1024)
    recipe = CausalLMRecipe(n_embd=64, steps=150, vocab_size=1024)
    for seed in (0, 1):
        train_causal_lm(train, str(tmp_path / "tokenizer"), str(tmp_path / f"trained{seed}"), seed, recipe)
        save_untrained(str(tmp_path / "tokenizer"), str(tmp_path / f"untrained{seed}"), seed, recipe)
    probe = make_text_probe("held-out fortunes", texts=held, tokenizer=tokenizer, n_examples=200, max_length=64,
                            tokens=TokenRows(rows={"rows": 3000, "repeats": 1, "seed": 0}))
    ids = {}
    for name in ("trained0", "trained1", "untrained0", "untrained1"):
        model, ids[name] = load_lm(resolve_model(str(tmp_path / name)), "AutoModelForCausalLM")
        extract_tokens(local_store, model, ids[name], probe, token_layers(model, ["transformer.h.*.mlp.act"]))
    for layer in ("transformer.h.0.mlp.act", "transformer.h.1.mlp.act"):
        similarity = {}
        for kind in ("trained", "untrained"):
            a, b = (read_activations(local_store, ActivationKey(probe.id, ids[f"{kind}{s}"], layer)) for s in (0, 1))
            similarity[kind] = match_curve(a, b).at(0.5).similarity
        assert similarity["trained"] > similarity["untrained"] + 0.3, (layer, similarity)
    assert np.isfinite(list(similarity.values())).all()
