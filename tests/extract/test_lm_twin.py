"""A language model and its twin with the MLP neurons permuted (GPT-2's Conv1D, GPT-NeoX's and BERT's Linear) compute
the same function, so their stored MLP token rows match fully at ε = 0 (the exact tolerance of float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymatch.extract.tokens import extract_tokens, token_layers
from raymatch.match import max_match
from raymatch.models.lm_twins import permuted_mlp_twin
from raymatch.probes.text import make_text_probe
from raymatch.store import ActivationKey, read_activations, read_manifest

from ..lm_helpers import bert, gpt2, neox, sentences, write_tokenizer

CASES = {
    "gpt2": (gpt2, "right", "transformer.h.*.mlp.act"),
    "neox": (neox, "right", "gpt_neox.layers.*.mlp.act"),
    "bert": (bert, "bert", "bert.encoder.layer.*.intermediate"),
}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin")
    path = root / "texts.txt"
    path.write_text("\n".join(sentences(60, seed=5)))
    return root, str(path)


@pytest.mark.parametrize("kind", list(CASES))
def test_a_permuted_twin_matches_fully_at_zero(texts, local_store, kind):
    build, style, selector = CASES[kind]
    root, path = texts
    tokenizer = write_tokenizer(root / style, template=style == "bert")
    model = build(0, len(tokenizer))
    twin, orders = permuted_mlp_twin(model, seed=1)
    assert len(orders) == 2 and all(not np.array_equal(order, np.arange(len(order))) for order in orders.values())
    probe = make_text_probe(path, tokenizer=tokenizer, n_examples=40, max_length=48)
    layers = token_layers(model, [selector, "hidden_states"])
    for model_id, net in (("original", model), ("twin", twin)):
        extract_tokens(local_store, net, model_id, probe, layers, batch_size=8)
    for layer in layers:
        a, b = (read_activations(local_store, ActivationKey(probe.id, m, layer)) for m in ("original", "twin"))
        if layer.startswith("hidden_states"):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # the same function
            continue
        assert a.shape[0] > 3 * a.shape[1]  # far more token rows than neurons: no trivial match
        block = layer.rsplit(".mlp", 1)[0].removesuffix(".intermediate")
        np.testing.assert_allclose(b, a[:, orders[block]], rtol=1e-4, atol=1e-5)
        match = max_match(a, b, 0.0)
        assert match.similarity == 1.0, (layer, match.similarity)
    assert read_manifest(local_store, ActivationKey(probe.id, "twin", next(iter(layers))))["model_dtype"] == "float32"


def test_a_model_without_mlp_blocks_is_refused():
    with pytest.raises(ValueError, match=r"no MLP block"):
        permuted_mlp_twin(torch.nn.Sequential(torch.nn.Linear(2, 2)))
