"""Language-model studies through ``raymatch run`` (issue 22, points 3 and 6), on the session's local Ray.

A GPT-2 and its twin with the MLP neurons permuted (the rows of ``c_fc`` and the columns of ``c_proj``: the same
function) match fully in the MLP layers at ε = 0, read from the ``matches`` view and checked the way an outsider
would: the stored activations read with ``read_activations``, ``raymatch.match.max_match`` computed on them, and the
stored token rows read back. A Hub population of seeds × revisions runs its trajectory pairs along the revisions, its
extraction on GPU actors (the session cluster's two fake GPUs), and the ``models`` table names each model with its
revision and step.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from raymatch import max_match
from raymatch.cli import main
from raymatch.models import permuted_mlp_twin
from raymatch.results import load, query
from raymatch.store import ActivationKey, Store, read_activations, read_manifest, read_token_rows

from .lm_helpers import gpt2, lm_study, neox, save_model, sentences, write_hub_repo, write_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

MLP = ("transformer.h.0.mlp.act", "transformer.h.1.mlp.act")


def write(folder, data) -> str:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_a_gpt2_and_its_permuted_twin_match_fully_in_the_mlp_layers(tmp_path, capsys):
    folder = tmp_path / "study"
    tokenizer = write_tokenizer(folder / "tokenizer")
    model = gpt2(0, len(tokenizer), n_embd=32)  # 128 MLP neurons per block
    twin, orders = permuted_mlp_twin(model, seed=1)
    save_model(model, folder / "lm" / "original", tokenizer)
    save_model(twin, folder / "lm" / "twin", tokenizer)
    (folder / "texts.txt").write_text("\n".join(sentences(120, seed=7)))
    store = tmp_path / "store"
    data = lm_study(f"file://{store}", population={"models": ["lm/original", "lm/twin"]}, null_baseline=["permuted"],
                    probe={"text": "texts.txt", "n_examples": 100, "max_length": 48, "rows": {"rows": 1500,
                                                                                              "repeats": 2}})
    assert main(["run", write(folder, data), "--quiet"]) == 0, capsys.readouterr().err

    matches = load(Store(str(store)), "matches", study="lm")
    exact = matches[(matches["eps"] == 0.0) & matches["layer"].isin(MLP) & (matches["population"] == "trained")]
    assert len(exact) == 2 * 2 and (exact["status"] == "ok").all()  # 2 layers × 2 row repeats
    assert (exact["similarity"] == 1.0).all(), exact[["layer", "repeat", "similarity"]]
    permuted = matches[(matches["population"] == "permuted") & matches["layer"].isin(MLP)]
    assert len(permuted) == len(exact) * 2 and (permuted["similarity"] < 0.5).all()  # rows no longer correspond
    models = query(Store(str(store)), "SELECT name, model_id, seed, revision, step, checkpoint, architecture FROM "
                                      "models ORDER BY name")
    assert list(models["name"]) == ["lm/original", "lm/twin"]
    assert set(models["architecture"]) == {"transformers:AutoModelForCausalLM"}

    # as an outsider: the stored activations and the kernel, nothing of the engine
    ids = dict(zip(models["name"], models["model_id"], strict=True))
    (probe_id,) = set(load(Store(str(store)), "curves", study="lm")["probe_id"])
    for layer in MLP:
        for repeat in (0, 1):
            a, b = (read_activations(Store(str(store)), ActivationKey(probe_id, ids[name], layer, repeat))
                    for name in ("lm/original", "lm/twin"))
            assert a.shape == (1500, 128) and a.dtype == np.float32
            block = layer.rsplit(".mlp", 1)[0]
            np.testing.assert_allclose(b, a[:, orders[block]], rtol=1e-4, atol=1e-5)
            assert max_match(a, b, 0.0).similarity == 1.0
    rows = read_token_rows(Store(str(store)), probe_id, 1)
    assert len(rows) == 1500 and (rows["position"] >= 0).all() and rows["token"].str.len().gt(0).all()
    manifest = read_manifest(Store(str(store)), ActivationKey(probe_id, ids["lm/twin"], MLP[0], 1))
    assert manifest["model_dtype"] == "float32" and manifest["token_rows"].startswith("token-rows/")

    assert main(["run", write(folder, data), "--quiet"]) == 0  # a second run computes nothing
    out = capsys.readouterr().out
    assert "extract          0        2" in out and "match            0       16" in out


def test_hub_revisions_run_as_the_trajectory_of_each_seed(tmp_path, capsys, monkeypatch):
    cache, folder = tmp_path / "cache", tmp_path / "study"
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    for seed in (1, 2):
        revisions = {f"step{step}": save_model(neox(10 * seed + step, len(tokenizer)), tmp_path / f"{seed}-{step}",
                                               tokenizer) for step in (100, 200)}
        write_hub_repo(cache, f"org/pythia-seed{seed}", revisions)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # (the driver's; the jobs carry it to the workers)
    folder.mkdir()
    (folder / "texts.txt").write_text("\n".join(sentences(80, seed=8)))
    data = lm_study(f"file://{tmp_path / 'store'}", pairs={"reference": "final"},
                    population={"hub": "org/pythia-seed{seed}", "seeds": [1, 2], "revisions": ["step100", "step200"]},
                    layers=["gpt_neox.layers.*.mlp.act"],
                    resources={"gpus_per_actor": 1, "pair_block": 2, "max_in_flight": 2})  # the fake GPUs' actors
    assert main(["run", write(folder, data), "--quiet"]) == 0, capsys.readouterr().err
    store = Store(str(tmp_path / "store"))
    curves = load(store, "curves", study="lm")
    assert sorted(curves.groupby("population").size().items()) == [("trained", 2), ("trajectory", 4)]
    models = query(store, "SELECT population, name, seed, revision, step FROM models ORDER BY population, name")
    assert models.to_dict("records") == [
        {"population": "trained", "name": "org/pythia-seed1@step200", "seed": 1, "revision": "step200", "step": 200},
        {"population": "trained", "name": "org/pythia-seed2@step200", "seed": 2, "revision": "step200", "step": 200},
        {"population": "trajectory", "name": "org/pythia-seed1@step100", "seed": 1, "revision": "step100",
         "step": 100},
        {"population": "trajectory", "name": "org/pythia-seed2@step100", "seed": 2, "revision": "step100",
         "step": 100}]

    # The report draws the revisions along their training steps: one point per (layer, ε) at step 100, the mean
    # over the two seeds of each revision's similarity to its seed's last revision.
    from raymatch.report.beyond import trajectory_data
    from raymatch.results import connect

    con = connect(store)
    try:
        data, against = trajectory_data(con, "lm", {"reference": "final"})
    finally:
        con.close()
    assert against == "the seed's final weights" and data["by_step"].all()
    assert sorted(set(data["epoch"])) == [100] and sorted(set(data["seed"])) == [1, 2]
    capsys.readouterr()
    assert main(["report", str(store.root), "--out", str(tmp_path / "report")]) == 0, capsys.readouterr().err
    assert (tmp_path / "report" / "trajectory.png").is_file()
