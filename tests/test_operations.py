"""Operating studies as a cluster user would: regression tests of defects found in review (issue 15).

- a study that trains on a cluster without GPUs falls back to CPUs instead of waiting for ever;
- a task lost with its worker (``WorkerCrashedError``) becomes a failed outcome, not an untidy abort;
- a one-slash URI (``s3:/bucket/x``) is refused instead of becoming the local folder ``./s3:/bucket/x``;
- ``raymatch plan`` on a population still to train says the later stages are not known yet;
- ``raymatch run``'s printed table shows the study's current configuration only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raymatch import cli
from raymatch.engine.bounded import run_bounded

from .test_bad_inputs import SEEDS, put, run_cli, snapshot, study, tiny_checkpoint, write_study

ROOT = Path(__file__).resolve().parents[1]


def _crash_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)  # the worker process dies: Ray reports WorkerCrashedError once its retries are spent
    return x * x


@pytest.mark.slow
def test_a_task_whose_worker_dies_is_a_failed_outcome_and_the_others_complete(ray_cluster):
    outcomes = run_bounded(_crash_on_three, range(6), max_in_flight=2, max_retries=0, progress=False)
    assert [o.item for o in outcomes] == list(range(6))
    assert [o.result for o in outcomes if o.ok] == [0, 1, 4, 16, 25]
    (failed,) = [o for o in outcomes if not o.ok]
    assert failed.item == 3 and failed.error.startswith("WorkerCrashedError")


def test_a_one_slash_s3_uri_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study_file = write_study(tmp_path, study("s3:/my-bucket/store"))
    code, err = run_cli(capsys, "run", study_file)
    assert code == 2 and "store.uri: malformed: write s3://my-bucket/store" in err, err
    assert not (tmp_path / "s3:").exists()
    code, err = run_cli(capsys, "status", "s3:/my-bucket/store")
    assert code == 2 and err.startswith("raymatch: error: store URI 's3:/my-bucket/store' is malformed"), err


def test_plan_of_a_population_still_to_train_counts_only_what_is_known(tmp_path, capsys):
    data = study(str(tmp_path / "store"), population={"training": {"seeds": [0, 1, 2], "recipe": "quick",
                                                                    "epochs": 1}})
    study_file = write_study(tmp_path, data)
    code = cli.main(["plan", study_file])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "train         0      3" in out  # three seeds to train
    assert "extract       ?      ?" in out and "match         ?      ?" in out  # not "extract 3 done"
    assert "counted once the stages before them have stored what they need" in out


DRIVER = """
import os, sys
sys.path.insert(0, {root!r})
os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
from raymatch import cli
sys.exit(cli.main(["run", {study!r}, "--num-cpus", "2", "--quiet"]))
"""


@pytest.mark.slow
def test_a_training_study_without_gpus_falls_back_to_cpus(tmp_path):
    """A local Ray without GPUs and a study that leaves ``resources.gpus_per_actor`` at its default (1): training
    runs on CPUs with one warning line, as extraction does, instead of waiting for a GPU for ever."""
    data = study(str(tmp_path / "store"), population={"training": {"seeds": [0, 1], "recipe": "quick",
                                                                    "epochs": 1, "n_train": 200}})
    data.pop("resources")
    study_file = write_study(tmp_path, data)
    driver = [sys.executable, "-c", DRIVER.format(root=str(ROOT), study=study_file)]
    done = subprocess.run(driver, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the cluster has no GPU for resources.gpus_per_actor = 1: training on CPUs" in done.stderr
    assert re.search(r"^train\s+2\s+0\s+0\s", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.slow
def test_the_printed_table_shows_the_current_configuration_only(ray_cluster, tmp_path, capsys):
    root = tmp_path / "store"
    for index, key in enumerate(SEEDS):
        put(root, key, tiny_checkpoint(index))
    first = study(str(root))
    assert cli.main(["run", write_study(tmp_path, first), "--allow-few-samples"]) == 0
    capsys.readouterr()
    edited = {**first, "probe": {**first["probe"], "n_examples": 60}}  # another probe: other numbers
    assert cli.main(["run", write_study(tmp_path, edited, "edited.yaml"), "--allow-few-samples"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("mean maximum-match similarity"):]
    from raymatch.results import query
    from raymatch.store import Store

    current = query(Store(str(root)), "SELECT count(*) AS n FROM matches")["n"].iloc[0]
    every = query(Store(str(root)), "SELECT count(DISTINCT config_hash) AS n FROM curves_all")["n"].iloc[0]
    assert every == 2 and current == 1 * 2 * 2  # one pair × 2 layers × 2 ε: the edited configuration's rows
    assert table.count("relu1") == 1 and table.count("relu3") == 1


@pytest.mark.parametrize("uri", ["s3:/bucket/x", "file:relative/x"])
def test_malformed_schemes_never_become_local_folders(tmp_path, monkeypatch, uri):
    from raymatch.store import Store

    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="is malformed"):
        Store(uri)
    assert snapshot(tmp_path) == before


def test_a_store_of_raymatch_0_1_0_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    root = tmp_path / "store"
    for index, key in enumerate(SEEDS):
        put(root, key, tiny_checkpoint(index))
    put(root, "results/matches/relu1.r0.0123456789abcdef.parquet", b"PAR1")  # a 0.1.0 task object
    started = []
    monkeypatch.setattr(cli, "_connect_ray", lambda *args: started.append(args))
    before = snapshot(root)
    code, err = run_cli(capsys, "run", write_study(tmp_path, study(str(root))), "--allow-few-samples")
    assert code == 2 and "was written by raymatch 0.1.0" in err and len(err.strip().splitlines()) == 1, err
    assert started == [] and snapshot(root) == before  # no Ray, no study record, nothing written
