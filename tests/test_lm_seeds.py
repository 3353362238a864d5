"""The language-model example (issue 22, points 4-5), scaled down: ``jobs/examples/lm-seeds.yaml`` with fewer steps,
seeds and texts trains its tokenizer and GPT-2 seeds on Debian's fortunes through ``raymatch train`` (plus the
untrained null), studies the MLP neurons and the residual stream with ``raymatch run``, and ``raymatch report``
writes the report; the trained seeds match above the untrained null in every layer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from raymatch.cli import main
from raymatch.results import load, query
from raymatch.store import Store
from raymatch.train.causal_lm import FORTUNES, RECORD

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster"),
              pytest.mark.skipif(not os.path.isdir(FORTUNES), reason="Debian's fortunes is not installed")]

EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "examples" / "lm-seeds.yaml"


def test_the_example_scaled_down_trains_seeds_above_the_untrained_null(tmp_path, capsys):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["store"]["uri"] = f"file://{tmp_path / 'store'}"
    data["population"]["training"].update(seeds=[0, 1], steps=40, vocab_size=512)
    data["probe"].update(n_examples=150, rows={"rows": 2000, "repeats": 1, "seed": 0})
    study = tmp_path / "lm-seeds.yaml"
    study.write_text(yaml.safe_dump(data, sort_keys=False))

    assert main(["train", str(study)]) == 0, capsys.readouterr().err
    assert "trained 4 model(s)" in capsys.readouterr().out  # 2 seeds + their untrained null
    root = tmp_path / "store" / "checkpoints" / "lm"
    trained = next(root.glob("trained-*"))
    assert sorted(path.name for path in trained.iterdir()) == ["seed0", "seed1", "tokenizer"]
    assert json.loads((trained / "seed0" / RECORD).read_text())["steps"] == 40

    assert main(["run", str(study), "--quiet"]) == 0, capsys.readouterr().err
    store = Store(str(tmp_path / "store"))
    matches = load(store, "matches", study="lm-seeds")
    assert set(matches["status"]) == {"ok"}
    mean = matches[matches["eps"] == 0.5].groupby(["layer", "population"])["similarity"].mean().unstack()
    assert list(mean.index) == ["hidden_states.1", "hidden_states.2", "transformer.h.0.mlp.act",
                                "transformer.h.1.mlp.act"]
    assert (mean["trained"] > mean["untrained"] + 0.2).all(), mean
    models = query(store, "SELECT population, name, seed, step FROM models ORDER BY population, name")
    assert models.to_dict("records") == [
        {"population": "trained", "name": "seed0", "seed": 0, "step": 40},
        {"population": "trained", "name": "seed1", "seed": 1, "step": 40},
        {"population": "untrained", "name": "seed0", "seed": 0, "step": 0},
        {"population": "untrained", "name": "seed1", "seed": 1, "step": 0}]

    capsys.readouterr()
    assert main(["status", str(tmp_path / "store")]) == 0 and "study lm-seeds: complete" in capsys.readouterr().out
    assert main(["gc", str(tmp_path / "store")]) == 0  # the trained folders are the study's: nothing to delete
    assert "0 object(s) no recorded study references" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "store"), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "transformer.h.0.mlp.act" in summary and (tmp_path / "report" / "similarity.png").stat().st_size > 0
