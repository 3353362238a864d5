"""``raymatch bench population``: the results tables and the factor store at population and layer scale.

Two parts, each run from empty stores in this process, on a local folder and on a moto S3 server on
127.0.0.1 (moto comes with the ``dev`` extra):

- **table scale**: ``M`` ``mlp`` models trained on digits (quick recipe, a few epochs), every pair, both ReLU
  layers, the paper's ε grid. Printed: each stage's wall time, the data objects of every results table, the
  time of three queries through ``raymatch query`` (``count(*)`` of ``matches``, a per-layer, per-ε mean
  similarity, the same at ``matches_at(0.22)``) and of a rerun that computes nothing.
- **layer scale**: 8 randomly initialised ``vgg16_bn`` on generated CIFAR-format images, 10,000 sampled rows,
  every ReLU layer. Printed: bytes of activations and of factors, and each stage's time.

Targets (docs/benchmarks.md): queries ≤ 2 s local and ≤ 5 s on moto S3, a no-op rerun ≤ 15 s on moto S3, ≤ 20 data
objects per results table; factor bytes ≤ 1.1 × activation bytes, CKA work ≤ 10 % of the match work, and the S3
run's factor + match time ≤ 1.5 × the local run's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PAPER_EPS = [0.15, 0.2, 0.25, 0.3, 0.5]
QUERIES = {
    "count(*) of matches": "SELECT count(*) AS n FROM matches",
    "mean similarity per layer and ε": "SELECT layer, eps, avg(similarity) AS s FROM matches GROUP BY ALL",
    "the same at matches_at(0.22)": "SELECT layer, eps, avg(similarity) AS s FROM matches_at(0.22) GROUP BY ALL",
}
BUCKET = "raymatch-bench"
#: Fake credentials of the local moto server: the driver's environment and every Ray worker's (runtime_env).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 in a process of its own (as S3 would be), with one bucket.

    The driver's environment gets the fake credentials (:data:`CREDENTIALS`) while it runs.
    """
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    previous = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for _ in range(100):  # the server starts in a second or two
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the moto server at {endpoint} did not start")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _store_section(kind: str, folder: str, endpoint: str, name: str) -> dict:
    if kind == "local":
        return {"uri": str(Path(folder) / name)}
    return {"uri": f"s3://{BUCKET}/{name}", "endpoint_url": endpoint}


def _timed_query(store_uri: str, endpoint: str | None, sql: str) -> float:
    """Seconds of ``raymatch query STORE SQL`` in a fresh process (what a user waits for), median of three."""
    command = [sys.executable, "-m", "raymatch", "query", store_uri, sql, "--format", "csv"]
    if endpoint:
        command += ["--endpoint-url", endpoint]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        times.append(time.perf_counter() - started)
    return sorted(times)[1]


def _python_startup() -> float:
    """Seconds a bare ``python -c 'import raymatch.cli'`` takes: the floor of every query time above."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import raymatch.cli"], check=True, timeout=120)
    return time.perf_counter() - started


def _data_objects(store, table: str) -> int:
    """Parquet objects under the table's folder: the current version's and those it replaced (until vacuum)."""
    from ..store.layout import table_prefix

    return sum(1 for key in store.list(table_prefix(table)) if key.endswith(".parquet") and "_delta_log" not in key)


def table_scale(n_models: int, epochs: int) -> list[dict]:
    """The M-model study on a local store and on moto S3: stage times, objects, query and rerun times."""
    from ..engine.run import run_study
    from ..study import Study

    rows = []
    with tempfile.TemporaryDirectory() as folder, moto_server() as endpoint:
        for kind in ("local", "s3"):
            config = {
                "name": f"table-scale-{n_models}", "store": _store_section(kind, folder, endpoint, "table-scale"),
                "population": {"training": {"seeds": list(range(n_models)), "recipe": "quick", "dataset": "digits",
                                            "epochs": epochs, "milestones": []}},
                "architecture": {"name": "mlp", "in_channels": 1, "input_size": 8},
                "probe": {"dataset": "digits", "split": "all"},
                "layers": ["relu"], "eps": PAPER_EPS,
                "resources": {"gpus_per_actor": 0, "pair_block": 16, "max_in_flight": 4},
            }
            study = Study.from_dict(config)
            started = time.perf_counter()
            summary = run_study(study, progress=False)
            wall = time.perf_counter() - started
            started = time.perf_counter()
            again = run_study(study, progress=False)
            rerun = time.perf_counter() - started
            store = study.store.open()
            row = {"store": kind, "wall": wall, "rerun": rerun,
                   "rerun_computed": sum(stage["computed"] for stage in again["stages"].values()),
                   "stages": {name: stage["seconds"] for name, stage in summary["stages"].items()},
                   "objects": {table: _data_objects(store, table) for table in
                               ("curves", "simple_matches", "runs", "models", "tasks")},
                   "queries": {label: _timed_query(study.store.uri, study.store.endpoint_url, sql)
                               for label, sql in QUERIES.items()}}
            rows.append(row)
    return rows


def _cifar_folder(folder: Path, n_images: int) -> Path:
    """``cifar-10-batches-bin/test_batch.bin`` of ``n_images`` random images (CIFAR-10 binary records)."""
    import numpy as np

    rng = np.random.default_rng(0)
    batches = folder / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    labels = rng.integers(0, 10, n_images).astype(np.uint8).reshape(-1, 1)
    pixels = rng.integers(0, 256, (n_images, 3 * 32 * 32)).astype(np.uint8)
    (batches / "test_batch.bin").write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    return batches


def _prefix_bytes(store, prefix: str) -> int:
    return sum(store.fs.size(store.path(key)) for key in store.list(prefix))


def layer_scale(n_models: int, n_images: int, rows: int) -> list[dict]:
    """Random-init vgg16_bn at paper layer sizes on a local store and on moto S3: bytes and stage times."""
    import torch

    from ..engine.run import run_study
    from ..models import build_model, checkpoint_bytes
    from ..study import Study

    results = []
    with tempfile.TemporaryDirectory() as folder, moto_server() as endpoint:
        data_dir = _cifar_folder(Path(folder) / "data", n_images)
        checkpoints = []
        for seed in range(n_models):
            torch.manual_seed(seed)
            checkpoints.append(checkpoint_bytes(build_model("vgg16_bn")))
        for kind in ("local", "s3"):
            config = {
                "name": "layer-scale", "store": _store_section(kind, folder, endpoint, "layer-scale"),
                "population": {"glob": "checkpoints/*.safetensors"},
                "architecture": {"name": "vgg16_bn"},
                "probe": {"dataset": "cifar10", "split": "test", "data_dir": str(data_dir),
                          "rows": {"rows": rows, "repeats": 1, "seed": 0}},
                "layers": ["relu"], "eps": PAPER_EPS,
                "resources": {"gpus_per_actor": 0, "pair_block": 8, "max_in_flight": 4},
            }
            study = Study.from_dict(config)
            store = study.store.open()
            for seed, data in enumerate(checkpoints):
                store.write_bytes(f"checkpoints/seed{seed}.safetensors", data)
            summary = run_study(study, progress=False)
            stages = summary["stages"]
            results.append({"store": kind, "activation_bytes": _prefix_bytes(store, "activations"),
                            "factor_bytes": _prefix_bytes(store, "factors"),
                            "stages": {name: stage["seconds"] for name, stage in stages.items()},
                            "cka_seconds": stages["match"].get("cka_seconds", float("nan")),
                            "match_seconds": stages["match"].get("match_seconds", float("nan"))})
    return results


def print_table_scale(rows: list[dict], n_models: int, startup: float) -> None:
    """The table-scale results, one column per store."""
    print(f"\n## table scale: {n_models} mlp models, {n_models * (n_models - 1) // 2} pairs, relu1 + relu2, "
          f"ε grid {PAPER_EPS}")
    stores = [row["store"] for row in rows]
    print(f"{'':<42} | " + " | ".join(f"{store:>10}" for store in stores))

    def line(label: str, values: list[str]) -> None:
        print(f"{label:<42} | " + " | ".join(f"{value:>10}" for value in values))

    for stage in rows[0]["stages"]:
        line(f"stage {stage} (s)", [f"{row['stages'][stage]:.1f}" for row in rows])
    line("whole run (s)", [f"{row['wall']:.1f}" for row in rows])
    for table in rows[0]["objects"]:
        line(f"data objects in {table}", [str(row["objects"][table]) for row in rows])
    for label in QUERIES:
        line(f"query: {label} (s)", [f"{row['queries'][label]:.2f}" for row in rows])
    line("rerun that computes nothing (s)", [f"{row['rerun']:.1f}" for row in rows])
    line("… rows it computed", [str(row["rerun_computed"]) for row in rows])
    print(f"(each query time is a fresh `raymatch query` process; `python -c 'import raymatch.cli'` alone takes "
          f"{startup:.2f} s)")


def print_layer_scale(rows: list[dict], n_models: int, n_images: int, n_rows: int) -> None:
    """The layer-scale results, one column per store, with the targets' ratios."""
    print(f"\n## layer scale: {n_models} random-init vgg16_bn, {n_images} generated CIFAR images, {n_rows} rows, "
          "all ReLU layers")
    stores = [row["store"] for row in rows]
    print(f"{'':<42} | " + " | ".join(f"{store:>10}" for store in stores))
    for label, key in (("activations (MB)", "activation_bytes"), ("factors (MB)", "factor_bytes")):
        print(f"{label:<42} | " + " | ".join(f"{row[key] / 1e6:>10.1f}" for row in rows))
    print(f"{'factor bytes / activation bytes':<42} | "
          + " | ".join(f"{row['factor_bytes'] / row['activation_bytes']:>10.2f}" for row in rows))
    for stage in rows[0]["stages"]:
        print(f"{'stage ' + stage + ' (s)':<42} | " + " | ".join(f"{row['stages'][stage]:>10.1f}" for row in rows))
    print(f"{'CKA work / match work (in-task)':<42} | "
          + " | ".join(f"{row['cka_seconds'] / row['match_seconds']:>10.3f}" for row in rows))
    local, s3 = rows

    def pair_work(row: dict) -> float:
        return row["stages"]["factor"] + row["stages"]["match"]

    print(f"S3 / local factor + match time: {pair_work(s3) / pair_work(local):.2f}")


def main(n_models: int = 200, epochs: int = 3, vgg_models: int = 8, n_images: int = 2600, rows: int = 10_000,
         parts: tuple[str, ...] = ("table", "layer")) -> int:
    """Run the chosen parts and print their tables."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": CREDENTIALS})  # the moto server's fake credentials, for the workers
    if "table" in parts:
        startup = _python_startup()
        print_table_scale(table_scale(n_models, epochs), n_models, startup)
    if "layer" in parts:
        print_layer_scale(layer_scale(vgg_models, n_images, rows), vgg_models, n_images, rows)
    return 0
