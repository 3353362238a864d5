"""The standard measures through ``raymatch run``: study keys, the ``measures`` and ``neurons`` tables, planning.

The rows a run stores are checked as an outsider would: against :mod:`raymatch.match.reference_measures` computed
on the stored activations (read with ``read_activations``), the permuted null's rows with model b's rows permuted
as the study documents (``row_permutation(n, PERMUTATION_SEED)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from raymatch.cli import main
from raymatch.engine.planning import make_plan
from raymatch.engine.tasks import PERMUTATION_SEED
from raymatch.match import MEASURES
from raymatch.match import reference_measures as oracle
from raymatch.match.factor import row_permutation
from raymatch.results import load, query
from raymatch.store import ActivationKey, read_activations
from raymatch.study import Study, StudyError, load_study
from raymatch.study.fields import MEASURE_NAMES

from .extract.helpers import put_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "examples"
EVERY = ["max_match", "cka", "cca", "svcca", "pwcca", "procrustes", "neuron_corr"]

STUDY = """
name: measured
store: {{uri: "file://{root}"}}
population: {{glob: "checkpoints/seed*.safetensors"}}
architecture: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 0.5, input_size: 8}}
probe: {{dataset: digits, split: test, n_examples: 120, seed: 0, rows: all}}
layers: [relu1, relu3]
eps: [0.25, 0.5]
measures: {measures}
svcca_keep: 0.95
null_baseline: [untrained, permuted]
resources: {{gpus_per_actor: 0, pair_block: 2, max_in_flight: 2}}
"""

#: The stored values agree with the oracle to this: both read the same float32 activations; the factor path
#: differs from the oracle's SVDs of the raw matrices by rounding (docs/measures.md, "Correctness").
TOL = 1e-8


def test_the_study_keys_name_the_measures_of_raymatch_match():
    assert MEASURE_NAMES == ("max_match", *MEASURES)


def _quickstart(**changes) -> Study:
    data = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    return Study.from_dict({**data, **changes})


def test_measures_and_svcca_keep_leave_the_config_hash_as_it_was():
    study = _quickstart()
    assert study.measures == ("max_match", "cka") and study.svcca_keep == 0.99
    assert study.config_hash == "6ce477ac6404d03f"  # the hash before the measures keys existed
    assert _quickstart(measures=EVERY, svcca_keep=0.9).config_hash == study.config_hash  # rows carry their measure
    assert _quickstart(measures=EVERY).table_measures == ("cca", "svcca", "pwcca", "procrustes", "neuron_corr")
    # whether curves carry CKA is part of the hash, as `cka: false` always was
    assert _quickstart(measures=["max_match", "cca"]).config_hash == _quickstart(cka=False).config_hash
    assert _quickstart(cka=False).measure_names == ("max_match",)
    assert _quickstart(cka=False, measures=EVERY).measure_names == tuple(name for name in EVERY if name != "cka")


@pytest.mark.parametrize(("changes", "message"), [
    ({"measures": ["cka", "cca"]}, "measures: must list max_match"),
    ({"measures": ["max_match", "cca", "ssim"]}, "measures[2]: must be one of max_match, cka, cca"),
    ({"measures": ["max_match", "cca", "cca"]}, r"measures[2]: duplicate of measures[1] ('cca')"),
    ({"measures": []}, "measures: must not be empty"),
    ({"svcca_keep": 0}, "svcca_keep: must be a number in (0, 1]; got 0"),
    ({"svcca_keep": 1.5}, "svcca_keep: must be a number in (0, 1]; got 1.5"),
])
def test_bad_measure_keys_are_refused_naming_the_field(changes, message):
    with pytest.raises(StudyError) as raised:
        _quickstart(**changes)
    assert message in str(raised.value)


def _write_study(tmp_path, root, measures) -> Path:
    path = tmp_path / "measured.yaml"
    path.write_text(STUDY.format(root=root, measures=measures))
    return path


def _activations(store, study, model: str, layer: str) -> np.ndarray:
    return read_activations(store, ActivationKey(study.probe.id, model, layer, 0)).astype(np.float64)


def _oracle_values(A: np.ndarray, B: np.ndarray, keep: float) -> dict[str, float]:
    return {"cka": oracle.linear_cka(A, B), "cca": oracle.cca(A, B), "svcca": oracle.svcca(A, B, keep),
            "pwcca": oracle.pwcca(A, B), "procrustes": oracle.procrustes(A, B),
            "neuron_corr": oracle.neuron_corr(A, B)["mean"]}


def _check_against_the_oracle(store, study) -> None:
    """Every ``measures`` and ``neurons`` row of the run, recomputed from the stored activations."""
    measures = load(store, "measures")
    neurons = load(store, "neurons")
    assert set(measures["status"]) == {"ok"}
    checked = 0
    for (population, layer, a, b), rows in measures.groupby(["population", "layer", "model_a", "model_b"]):
        A, B = _activations(store, study, a, layer), _activations(store, study, b, layer)
        if population == "permuted":
            B = B[row_permutation(B.shape[0], PERMUTATION_SEED)]
        expected = _oracle_values(A, B, study.svcca_keep)
        got = dict(zip(rows["measure"], rows["value"], strict=True))
        assert sorted(got) == sorted(expected), (population, layer)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=TOL), (population, layer, name)
        counts = rows.loc[rows["measure"] == "cca"].iloc[0]
        assert (counts["n_samples"], counts["n_a"], counts["n_b"]) == (A.shape[0], A.shape[1], B.shape[1])
        assert counts["kept_a"] == oracle.kept_neurons(A).size
        assert rows.loc[rows["measure"] == "svcca", "svcca_keep"].tolist() == [0.95]

        per_neuron = oracle.neuron_corr(A, B)
        for side, model, partner in (("a", a, b), ("b", b, a)):
            mine = neurons[(neurons["population"] == population) & (neurons["layer"] == layer)
                           & (neurons["model"] == model) & (neurons["partner_model"] == partner)]
            mine = mine.sort_values("neuron")
            assert mine["neuron"].tolist() == list(range(per_neuron[f"best_{side}"].size))
            best, partners = per_neuron[f"best_{side}"], per_neuron[f"partner_{side}"]
            kept = ~np.isnan(best)
            np.testing.assert_allclose(mine["correlation"].to_numpy(dtype=float)[kept], best[kept], atol=TOL)
            assert mine["correlation"][~kept].isna().all() and mine["partner_neuron"][~kept].isna().all()
            # the partner is the oracle's, or one as correlated (ties to rounding)
            corr = np.abs(oracle.correlations(A, B)[0] if side == "a" else oracle.correlations(A, B)[0].T)
            rows_kept = np.flatnonzero(kept)
            got_partner = mine["partner_neuron"].to_numpy()[kept].astype(int)
            other_kept = oracle.kept_neurons(B if side == "a" else A)
            position = {neuron: index for index, neuron in enumerate(other_kept)}
            for row, neuron, want in zip(range(rows_kept.size), got_partner, partners[kept], strict=True):
                assert neuron == want or abs(corr[row, position[neuron]] - corr[row, position[want]]) < TOL
        checked += 1
    assert checked == 3 * 3 * 2  # trained, untrained and permuted: 3 pairs × 2 layers each


@pytest.mark.slow
def test_every_measure_through_raymatch_run_matches_the_oracle_and_a_measure_added_later(
        local_store, tmp_path, ray_cluster, capsys):
    for seed in (10, 11, 12):  # not the untrained null's seeds 0, 1, 2
        put_checkpoint(local_store, seed)
    path = _write_study(tmp_path, local_store.root, "[max_match, cka, cca]")
    assert main(["run", str(path), "--quiet"]) == 0
    study = load_study(path)
    first = load(local_store, "measures")
    assert sorted(first["measure"].unique()) == ["cca", "cka"]
    assert len(first) == 2 * 3 * 3 * 2  # 2 measures × (3 populations × 3 pairs) × 2 layers
    assert len(query(local_store, "SELECT * FROM neurons_raw")) == 0
    curves_before = load(local_store, "curves")

    path = _write_study(tmp_path, local_store.root, f"[{', '.join(EVERY)}]")
    study = load_study(path)
    assert study.config_hash == load_study(path).config_hash
    plan = make_plan(study, local_store)
    kinds = {(task.curve, task.measures) for task in plan["match"].tasks}
    assert kinds == {(False, ("svcca", "pwcca", "procrustes", "neuron_corr"))}  # cca is stored: not again
    capsys.readouterr()
    assert main(["run", str(path), "--quiet"]) == 0
    curves_after = load(local_store, "curves")
    assert len(curves_after) == len(curves_before) == 3 * 3 * 2
    assert sorted(curves_after["created_at"]) == sorted(curves_before["created_at"])  # no curve recomputed
    assert len(query(local_store, "SELECT * FROM measures_raw WHERE measure = 'cca'")) == 3 * 3 * 2  # not again
    _check_against_the_oracle(local_store, study)

    universal = query(local_store, "SELECT * FROM universal_neurons()")
    assert set(universal["others"]) == {2} and set(universal["margin"]) == {0.1} and set(universal["most"]) == {0.5}
    assert (universal["universal"] == (universal["beats"] / universal["others"] > 0.5)).all()
    assert universal["permuted"].notna().any() and universal["untrained"].notna().all()
    strict = query(local_store, "SELECT count_if(universal) AS n FROM universal_neurons(margin := 0.9)")["n"][0]
    assert strict <= universal["universal"].sum()

    capsys.readouterr()
    assert main(["run", str(path), "--quiet"]) == 0  # everything is stored: nothing is computed
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()
            if line.startswith("match ")] == [["match", "0"]]
