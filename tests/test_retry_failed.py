"""``raymatch run --retry-failed`` (issue 15, operations 5): failed pairs are computed again, and only they.

A NaN planted in one model's stored activations of one layer makes that model's pairs at that layer failed
``curves`` rows (as in tests/test_faults.py). A plain rerun counts them as done; once the activations are fixed,
``--retry-failed`` computes exactly those pairs again, their new ``"ok"`` rows supersede the failed ones in the
views (one row per pair), and the table equals a clean run's.
"""

from __future__ import annotations

import numpy as np
import pytest

from raymatch import cli
from raymatch.engine.planning import make_plan
from raymatch.engine.run import run_study
from raymatch.extract import ExtractionJob
from raymatch.extract.extractor import run_job
from raymatch.results import load, query
from raymatch.store import ActivationKey, Store, read_activations
from raymatch.store.activations import read_manifest, write_activations

from .test_faults import EPS, N_MODELS, N_TASKS, _assert_same_rows, _content, _study, clean  # noqa: F401 - the fixture


def _write_matrix(store: Store, key: ActivationKey, matrix: np.ndarray, manifest: dict) -> None:
    write_activations(store, key, matrix, metadata={name: manifest[name] for name in
                                                    ("layer_shape", "row_policy", "n_images")})


@pytest.mark.slow
def test_retry_failed_recomputes_only_the_failed_pairs_and_supersedes_their_rows(ray_cluster, clean, tmp_path,  # noqa: F811
                                                                                capsys):
    store = Store(str(tmp_path / "store"))
    study_file, study = _study(tmp_path, store)
    summaries = [run_job(store, ExtractionJob(f"checkpoints/seed{seed}.safetensors", study.architecture.name,
                                              study.probe, tuple(study.layers), study.architecture.kwargs))
                 for seed in range(N_MODELS)]
    bad_model = summaries[0]["model_id"]
    key = ActivationKey(study.probe.id, bad_model, "relu1")
    manifest, good = read_manifest(store, key), read_activations(store, key)
    planted = good.copy()
    planted[3, 1] = np.nan
    _write_matrix(store, key, planted, manifest)

    stages = run_study(study, progress=False)["stages"]
    assert stages["match"]["failed_rows"] == N_MODELS - 1
    failed = load(store, "curves").query("status == 'failed'")
    assert len(failed) == N_MODELS - 1 and set(failed["layer"]) == {"relu1"}

    _write_matrix(store, key, good, manifest)  # the input is fixed
    assert make_plan(study, store).counts()["match"] == (N_TASKS, 0)  # failed rows count as done ...
    assert make_plan(study, store, retry_failed=True).counts()["match"] == (N_TASKS - (N_MODELS - 1), N_MODELS - 1)
    stages = run_study(study, progress=False)["stages"]  # ... so a plain rerun computes nothing
    assert stages["match"]["computed"] == 0 and stages["factor"]["computed"] == 0

    assert cli.main(["run", str(study_file), "--retry-failed", "--quiet"]) == 0
    out = capsys.readouterr().out
    match_line = next(line.split() for line in out.splitlines() if line.startswith("match "))
    assert match_line[1:4] == [str(N_MODELS - 1), str(N_TASKS - (N_MODELS - 1)), "0"], out  # computed skipped failed
    runs = load(store, "runs").sort_values("started_at")
    assert runs["status"].tolist()[-1] == "succeeded" and runs["computed"].tolist()[-1] >= N_MODELS - 1
    curves = load(store, "curves")
    assert len(curves) == N_TASKS and (curves["status"] == "ok").all()  # one row per pair, every one ok
    assert not curves.duplicated(["layer", "repeat", "model_a", "model_b"]).any()
    raw = query(store, "SELECT status, count(*) AS n FROM curves_raw GROUP BY status ORDER BY status")
    assert raw.to_dict("records") == [{"status": "failed", "n": N_MODELS - 1}, {"status": "ok", "n": N_TASKS}]
    _assert_same_rows(_content(store), clean)  # the recomputed pairs are the clean run's
    assert len(load(store, "matches")) == N_TASKS * len(EPS)
    assert make_plan(study, store, retry_failed=True).counts()["match"] == (N_TASKS, 0)  # nothing left to retry
