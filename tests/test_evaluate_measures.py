"""``raymatch evaluate-measures STORE``: Ding et al.'s tests on a study's models, stored and drawn by the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raymatch.cli import main
from raymatch.report.evaluation import _cross_matrix, read_evaluation
from raymatch.results import query
from raymatch.store import ActivationKey, layout, read_activations
from raymatch.store.activations import read_manifest
from raymatch.study import load_study

from .extract.helpers import put_checkpoint

STUDY = """
name: evaluated
store: {{uri: "file://{root}"}}
population: {{glob: "checkpoints/seed*.safetensors"}}
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 0.5, input_size: 8}}
probe: {{dataset: digits, split: test, n_examples: 100, seed: 0, rows: all}}
layers: [relu1, relu2, relu3]
eps: [0.25, 0.5]
measures: [max_match, cka, neuron_corr]
resources: {{gpus_per_actor: 0, pair_block: 3, max_in_flight: 2}}
"""

TESTS = ("deletion_spearman", "deletion_stops_noticing", "depth_spearman", "specificity")


@pytest.mark.slow
def test_evaluate_measures_stores_the_table_and_the_report_draws_it(local_store, tmp_path, ray_cluster, capsys):
    for seed in (20, 21, 22):
        put_checkpoint(local_store, seed)
    path = tmp_path / "evaluated.yaml"
    path.write_text(STUDY.format(root=local_store.root))
    assert main(["run", str(path), "--quiet"]) == 0
    study = load_study(path)
    capsys.readouterr()

    assert main(["evaluate-measures", str(local_store.root)]) == 0
    out = capsys.readouterr().out
    assert "measure " in out and "max_match@0.25" in out and "specificity" in out
    content = read_evaluation(local_store, "evaluated", study.config_hash)
    assert content is not None and layout.evaluation_key("evaluated", study.config_hash) in out
    assert content["layers"] == ["relu1", "relu2", "relu3"] and len(content["models"]) == 3
    table = {row["measure"]: row for row in content["table"]}
    assert list(table) == ["cka", "cca", "svcca", "pwcca", "procrustes", "neuron_corr", "max_match@0.25",
                           "max_match@0.5"]
    # every layer with all its positions is averaged over them: every two layers compare, every layer has a next
    assert all(content["depth_pairs_compared"].values()) and len(content["depth_pairs_compared"]) == 9
    assert content["specificity_layers"] == ["relu1", "relu2"]
    # mean CCA of a layer and itself with components deleted is 1 at every k (a span inside the other): never moves
    assert table["cca"]["deletion_moved"] == 0.0 and table["cca"]["deletion_spearman"] == 0.0
    assert table["cca"]["deletion_stops_noticing"] == 0.0
    assert table["cka"]["deletion_spearman"] == pytest.approx(1.0)  # it sees every deletion of the top components
    assert table["cka"]["deletion_moved"] == 1.0
    for row in table.values():
        assert row["specificity"] is None or 0.0 <= row["specificity"] <= 1.0
        assert row["depth_spearman"] is None or -1.0 <= row["depth_spearman"] <= 1.0
        assert 0.0 <= row["deletion_stops_noticing"] <= 1.0

    out_dir = tmp_path / "report"
    assert main(["report", str(local_store.root), "--out", str(out_dir)]) == 0
    summary = (out_dir / "summary.md").read_text()
    assert "## What each measure sees" in summary and "## Universal neurons" in summary
    assert "## Standard measures per layer" in summary and "| relu3 | neuron_corr |" in summary
    assert (out_dir / "measure_evaluation.png").exists() and (out_dir / "universal_neurons.png").exists()

    assert main(["evaluate-measures", str(local_store.root), "--study", "nope"]) == 2
    assert "study 'nope' has no match results" in capsys.readouterr().err


@pytest.mark.slow
def test_a_conv_layer_with_every_position_pools_to_the_stored_per_example_means(local_store, tmp_path, ray_cluster):
    """The evaluation's own pooling of a layer stored with ``rows: all`` equals extraction's ``<layer>+mean``."""
    for seed in (20, 21):
        put_checkpoint(local_store, seed)
    path = tmp_path / "evaluated.yaml"
    text = STUDY.format(root=local_store.root).replace("layers: [relu1, relu2, relu3]", "layers: [relu1, relu2]")
    path.write_text(text + "cross_layers: {layers: [relu1, relu2], pool: mean}\n")
    assert main(["run", str(path), "--quiet"]) == 0
    study = load_study(path)
    model = query(local_store, "SELECT any_value(model_a) AS m FROM curves")["m"][0]
    key = ActivationKey(study.probe.id, model, "relu1", 0)
    stored = read_activations(local_store, key).astype(np.float64)
    pooled, rows = _cross_matrix(local_store, study.probe.id, model, "relu1", stored, read_manifest(local_store, key))
    extracted = read_activations(local_store, ActivationKey(study.probe.id, model, layout.pooled_layer("relu1"), 0))
    assert rows == "all:100" and pooled.shape == extracted.shape == (100, 8)
    np.testing.assert_allclose(pooled, extracted, rtol=1e-5, atol=1e-6)
    assert json.loads(json.dumps(read_manifest(local_store, key)))["row_policy"] == "all"


def test_depth_order_puts_the_residual_stream_between_the_blocks_it_separates():
    from raymatch.report.evaluation import depth_order

    lm = ["gpt_neox.embed_in", "gpt_neox.layers.0.mlp.act", "gpt_neox.layers.1.mlp.act", "embed_out",
          "hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert depth_order(lm) == ["gpt_neox.embed_in", "hidden_states.0", "gpt_neox.layers.0.mlp.act", "hidden_states.1",
                               "gpt_neox.layers.1.mlp.act", "hidden_states.2", "embed_out"]
    assert depth_order(["relu1", "features.10", "classifier.1"]) == ["relu1", "features.10", "classifier.1"]
