"""Token rows: what is stored equals a forward pass of each sequence alone (sequences of very different lengths,
left and right padding, GPT-2, GPT-NeoX and BERT), padding is never a row, special tokens only when asked, every
model gets the same rows whatever its batches, pooled rows, float32 storage of a bfloat16 model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymatch.extract.tokens import (
    TokenExtractionJob,
    extract_tokens,
    iter_batches,
    run_token_job,
    token_exact_tolerance,
    token_layers,
)
from raymatch.match import exact_tolerance
from raymatch.models import LMModel
from raymatch.probes.text import make_text_probe
from raymatch.probes.token_rows import TokenRows, batch_ranges, padding_share
from raymatch.store import ActivationKey, read_activations, read_manifest
from raymatch.store.token_rows import read_token_rows, rows_sha256

from ..lm_helpers import bert, gpt2, neox, save_model, sentences, write_tokenizer

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("token-rows")
    tokenizers = {"right": write_tokenizer(root / "right"), "left": write_tokenizer(root / "left", padding_side="left"),
                  "bert": write_tokenizer(root / "bert", template=True)}
    texts = root / "texts.txt"
    texts.write_text("\n".join(sentences(40, seed=3)))
    return root, tokenizers, str(texts)


def probe_of(lm, side="right", **tokens):
    _, tokenizers, texts = lm
    return make_text_probe(texts, tokenizer=tokenizers[side], n_examples=24, seed=0, max_length=MAX_LENGTH,
                           tokens=TokenRows(**tokens))


def alone(model, probe, names):
    """Each sequence's outputs of the named modules and hidden states, run alone (no padding, no mask)."""
    captured, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        if name in modules:
            handles.append(modules[name].register_forward_hook(
                lambda _m, _i, output, name=name: captured.__setitem__(name, output[0].double())))
    result = []
    with torch.no_grad():
        for ids in probe.input_ids:
            out = model(input_ids=torch.from_numpy(ids)[None], output_hidden_states=True)
            result.append({**{n: captured[n] for n in captured},
                           **{f"hidden_states.{k}": h[0].double() for k, h in enumerate(out.hidden_states)}})
    for handle in handles:
        handle.remove()
    return result


def expected(reference, probe, name, repeat=0):
    rows = probe.rows(repeat)
    if probe.tokens.pool == "mean":
        out = []
        for sequence, _ in rows:
            keep = np.ones(len(probe.special[sequence]), bool) if probe.tokens.special else ~probe.special[sequence]
            out.append(reference[sequence][name][torch.from_numpy(np.flatnonzero(keep))].mean(dim=0))
        return torch.stack(out).numpy()
    return torch.stack([reference[s][name][p] for s, p in rows]).numpy()


MODELS = {
    "gpt2": (lambda v: gpt2(0, v), "right", ["transformer.h.*.mlp.act", "hidden_states"]),
    "neox": (lambda v: neox(0, v), "right", ["gpt_neox.layers.*.mlp.act", "hidden_states.0"]),
    "bert": (lambda v: bert(0, v), "bert", ["bert.encoder.layer.*.intermediate", "hidden_states.2"]),
}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_stored_rows_equal_each_sequence_alone(lm, local_store, kind, side):
    build, tokenizer, selectors = MODELS[kind]
    _, tokenizers, texts = lm
    base = tokenizers[tokenizer]
    if side == "left":
        base.padding_side = "left"
    try:
        probe = make_text_probe(texts, tokenizer=base, n_examples=24, seed=0, max_length=MAX_LENGTH)
    finally:
        base.padding_side = "right"
    assert probe.padding_side == side
    model = build(len(base))
    assert padding_share(probe.lengths, batch_ranges(probe.lengths, 5)) > 0  # the batches do pad
    layers = token_layers(model, selectors)
    summary = extract_tokens(local_store, model, "m0", probe, layers, batch_size=5)
    reference = alone(model, probe, layers)
    n_real = sum(int((~special).sum()) for special in probe.special)
    for name in layers:
        stored = read_activations(local_store, ActivationKey(probe.id, "m0", name, 0))
        assert stored.shape[0] == n_real == summary[name]["rows"][0]  # one row per real, non-special token
        np.testing.assert_allclose(stored, expected(reference, probe, name), rtol=1e-4, atol=2e-5)
    table = read_token_rows(local_store, probe.id)
    assert len(table) == n_real and (table["position"].to_numpy() < probe.lengths[table["sequence"]]).all()
    if tokenizer == "bert":
        assert not table["token"].isin(["[CLS]", "[SEP]", "[PAD]"]).any()


def test_special_tokens_are_rows_only_when_asked(lm, local_store):
    model = bert(1, len(lm[1]["bert"]))
    for special in (False, True):
        probe = probe_of(lm, "bert", special=special)
        extract_tokens(local_store, model, "bert1", probe, ["bert.encoder.layer.1.intermediate"], batch_size=4)
        table = read_token_rows(local_store, probe.id)
        stored = read_activations(local_store, ActivationKey(probe.id, "bert1", "bert.encoder.layer.1.intermediate"))
        assert len(table) == stored.shape[0]
        if special:
            assert len(table) == probe.lengths.sum() and table["token"].isin(["[CLS]", "[SEP]"]).sum() == 48
            reference = alone(model, probe, ["bert.encoder.layer.1.intermediate"])
            np.testing.assert_allclose(stored, expected(reference, probe, "bert.encoder.layer.1.intermediate"),
                                       rtol=1e-4, atol=2e-5)
        else:
            assert len(table) == probe.lengths.sum() - 48 and not table["token"].isin(["[CLS]", "[SEP]"]).any()


def test_every_model_gets_the_same_rows_whatever_its_batches(lm, local_store):
    probe = probe_of(lm, rows={"rows": 150, "repeats": 2, "seed": 4})
    vocab = len(lm[1]["right"])
    for model_id, seed, batch_size in (("a", 0, 3), ("b", 1, 7), ("a-again", 0, 24)):
        extract_tokens(local_store, gpt2(seed, vocab), model_id, probe, ["transformer.h.0.mlp.act"],
                       batch_size=batch_size, max_batch_tokens=200)
    for repeat in range(2):
        manifests = [read_manifest(local_store, ActivationKey(probe.id, m, "transformer.h.0.mlp.act", repeat))
                     for m in ("a", "b", "a-again")]
        assert {m["rows_sha256"] for m in manifests} == {rows_sha256(probe.rows(repeat))}
        assert manifests[0]["row_policy"]["rows"] == 150 and manifests[0]["shape"][0] == 150
        table = read_token_rows(local_store, probe.id, repeat)
        assert np.array_equal(table[["sequence", "position"]].to_numpy(), probe.rows(repeat))
        matrices = [read_activations(local_store, ActivationKey(probe.id, m, "transformer.h.0.mlp.act", repeat))
                    for m in ("a", "a-again")]
        np.testing.assert_allclose(matrices[0], matrices[1], rtol=1e-5, atol=1e-6)  # batching changes no row
    assert not np.array_equal(probe.rows(0), probe.rows(1))


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_pooled_rows_are_one_per_sequence(lm, local_store, pool):
    for side in ("right", "left"):
        probe = probe_of(lm, side, pool=pool)
        model = gpt2(2, len(lm[1]["right"]))
        extract_tokens(local_store, model, "p", probe, ["transformer.h.1.mlp.act", "hidden_states.2"], batch_size=5)
        reference = alone(model, probe, ["transformer.h.1.mlp.act"])
        for name in ("transformer.h.1.mlp.act", "hidden_states.2"):
            stored = read_activations(local_store, ActivationKey(probe.id, "p", name))
            assert stored.shape == (24, 128 if "mlp" in name else 32)
            np.testing.assert_allclose(stored, expected(reference, probe, name), rtol=1e-4, atol=2e-5)
        table = read_token_rows(local_store, probe.id)
        assert sorted(table["sequence"]) == list(range(24))
        if pool == "last":
            assert (table["position"].to_numpy() == probe.lengths[table["sequence"]] - 1).all()
        else:
            assert (table["position"] == -1).all() and (table["token"] == "").all()


def test_a_bfloat16_model_is_stored_as_float32_with_its_dtype(lm, local_store):
    probe = probe_of(lm)
    model = gpt2(0, len(lm[1]["right"]))
    reference = alone(model, probe, ["transformer.h.1.mlp.act"])
    extract_tokens(local_store, model.to(torch.bfloat16), "bf", probe, ["transformer.h.1.mlp.act"], batch_size=6)
    key = ActivationKey(probe.id, "bf", "transformer.h.1.mlp.act")
    stored = read_activations(local_store, key)
    manifest = read_manifest(local_store, key)
    assert stored.dtype == np.float32 and manifest["dtype"] == "float32" and manifest["model_dtype"] == "bfloat16"
    np.testing.assert_allclose(stored, expected(reference, probe, "transformer.h.1.mlp.act"), atol=0.1)
    assert token_exact_tolerance(manifest["model_dtype"]) == exact_tolerance(np.float32)
    with pytest.raises(ValueError, match=r"model_dtype: not a torch floating dtype: 'int8'"):
        token_exact_tolerance("int8")


def test_layer_selectors(lm):
    model = gpt2(0, 100)
    assert list(token_layers(model, ["hidden_states"])) == ["hidden_states.1", "hidden_states.2"]
    assert list(token_layers(model, ["hidden_states.*", "transformer.h.1.mlp.act"])) == [
        "transformer.h.1.mlp.act", "hidden_states.0", "hidden_states.1", "hidden_states.2"]
    with pytest.raises(ValueError, match=r"layers\[1\]: 'hidden_states.5' matches no hidden state .*hidden_states.0 "
                                         r"… hidden_states.2"):
        token_layers(model, ["hidden_states", "hidden_states.5"])
    with pytest.raises(ValueError, match=r"layers\[1\]: unknown layer 'transformer.h.\*.mlp.gelu'"):
        token_layers(model, ["hidden_states", "transformer.h.*.mlp.gelu"])
    with pytest.raises(ValueError, match=r"layers\[1\]: 'transformer.h.\*' selects transformer.h.0, which an earlier"):
        token_layers(model, ["transformer.h.0", {"select": "transformer.h.*", "output": 0}])
    with pytest.raises(ValueError, match=r"layers\[0\]: unknown layer 'encoder.layer.\*.intermediate'"):
        token_layers(model, ["encoder.layer.*.intermediate"])


def test_a_job_skips_what_is_stored_and_refuses_another_tokenizer(lm, local_store, tmp_path):
    _, tokenizers, _ = lm
    folder = save_model(gpt2(5, len(tokenizers["right"])), tmp_path / "seed5", tokenizers["right"])
    probe = probe_of(lm)
    job = TokenExtractionJob(LMModel(str(folder)), probe, ("transformer.h.*.mlp.act",), "AutoModelForCausalLM")
    first = run_token_job(local_store, job)
    assert first["computed"] == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    assert run_token_job(local_store, job)["computed"] == []
    other = save_model(gpt2(5, len(tokenizers["bert"])), tmp_path / "bert-tokenizer", tokenizers["bert"])
    with pytest.raises(ValueError, match=r"bert-tokenizer: its tokenizer is not the probe's"):
        run_token_job(local_store, TokenExtractionJob(LMModel(str(other)), probe, ("hidden_states",)))


def test_batches_pad_on_the_tokenizer_side(lm):
    for side in ("right", "left"):
        probe = probe_of(lm, side)
        for batch in iter_batches(probe, 4):
            members = probe.order[batch.start : batch.stop]
            for b, sequence in enumerate(members):
                real = batch.attention_mask[b].nonzero().flatten()
                assert real[0].item() == batch.offsets[b] and len(real) == probe.lengths[sequence]
                full = probe.lengths[sequence] == batch.input_ids.shape[1]
                assert (batch.offsets[b] == 0) == (side == "right" or full)
                assert batch.position_ids[b, real].tolist() == list(range(len(real)))
