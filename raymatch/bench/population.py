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

from .scale import DriverMemory, compare_kernels, copy_tables, table_objects

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


#: ``--kernel`` names: the batched kernel, or the one-pair kernel before it (``resources.match_kernel``).
KERNELS = {"batched": "batched", "old": "one_pair"}
#: The tables whose objects are counted.
COUNTED = ("curves", "simple_matches", "runs", "models", "tasks")
#: The match stage recorded before the batched kernel (docs/benchmarks.md, 200 models, local store, 2 cores).
RECORDED_MATCH_SECONDS = {200: 194.4}


def _table_config(kind: str, folder: str, endpoint: str, n_models: int, epochs: int, kernel: str) -> dict:
    return {
        "name": f"table-scale-{n_models}", "store": _store_section(kind, folder, endpoint, f"table-scale-{kernel}"),
        "population": {"training": {"seeds": list(range(n_models)), "recipe": "quick", "dataset": "digits",
                                    "epochs": epochs, "milestones": []}},
        "architecture": {"name": "mlp", "in_channels": 1, "input_size": 8},
        "probe": {"dataset": "digits", "split": "all"},
        "layers": ["relu"], "eps": PAPER_EPS,
        "resources": {"gpus_per_actor": 0, "pair_block": 16, "max_in_flight": 4, "match_kernel": KERNELS[kernel]},
    }


def _measure_store(row: dict, study, *, queries: bool) -> dict:
    """``row`` with the objects of every counted table and (``queries``) the query times of ``study``'s store."""
    store = study.store.open()
    row["objects"] = {table: table_objects(store, table) for table in COUNTED}
    if queries:
        row["queries"] = {label: _timed_query(study.store.uri, study.store.endpoint_url, sql)
                          for label, sql in QUERIES.items()}
    return row


def _table_run(config: dict, *, queries: bool, rerun: bool) -> tuple[dict, object]:
    """One run of the table-scale study from what its store holds: stage times, driver memory, objects, queries."""
    from ..engine.run import run_study
    from ..study import Study

    study = Study.from_dict(config)
    with DriverMemory() as memory:
        started = time.perf_counter()
        summary = run_study(study, progress=False)
        wall = time.perf_counter() - started
    match = summary["stages"]["match"]
    row = {"store": "local" if config["store"]["uri"].startswith("/") else "s3",
           "kernel": config["resources"]["match_kernel"], "wall": wall, "memory": memory.as_row(),
           "stages": {name: stage["seconds"] for name, stage in summary["stages"].items()},
           "curves": match["computed"], "match_in_task": match.get("match_seconds", float("nan"))}
    if rerun:
        started = time.perf_counter()
        again = run_study(study, progress=False)
        row["rerun"] = time.perf_counter() - started
        row["rerun_computed"] = sum(stage["computed"] for stage in again["stages"].values())
    return _measure_store(row, study, queries=queries), study


def table_scale(n_models: int, epochs: int, kernels: tuple[str, ...] = ("batched", "old"),
                s3: str = "run") -> dict:
    """The M-model study from empty stores: a local run per kernel (rows compared), then moto S3.

    Each kernel's local run is the whole study in a store of its own, as the figures recorded before the batched
    kernel were (training is deterministic: the same models, the same pairs); the first run's queries and no-op
    rerun are timed. With ``s3='copy'`` the first local run's results tables are copied to the moto bucket and only
    the queries are timed there (a full S3 run of 1,000 models reads every matrix about 63 times through moto);
    ``s3='run'`` runs the batched study on moto S3 too.
    """
    from ..study import Study

    rows, studies, comparison = [], {}, None
    with tempfile.TemporaryDirectory() as folder, moto_server() as endpoint:
        for index, kernel in enumerate(name for name in ("batched", "old") if name in kernels):
            config = _table_config("local", folder, endpoint, n_models, epochs, kernel)
            row, studies[kernel] = _table_run(config, queries=index == 0, rerun=index == 0)
            rows.append(row)
            if index == 0 and s3 == "copy":
                target = Study.from_dict(_table_config("s3", folder, endpoint, n_models, epochs, kernel))
                copied = copy_tables(studies[kernel].store.open(), target.store.open())
                rows.append(_measure_store({"store": "s3", "kernel": "copied", "copied_mb": copied / 1e6}, target,
                                           queries=True))
        if len(studies) == 2:
            comparison = compare_kernels(studies["batched"].store.open(), studies["old"].store.open(),
                                         studies["batched"].name, (0.0, *PAPER_EPS))
        if s3 == "run":
            config = _table_config("s3", folder, endpoint, n_models, epochs, "batched")
            rows.append(_table_run(config, queries=True, rerun=True)[0])
    return {"rows": rows, "comparison": comparison}


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


def print_table_scale(result: dict, n_models: int, startup: float) -> None:
    """The table-scale results, one column per run, then the kernels compared and the targets."""
    rows, pairs = result["rows"], n_models * (n_models - 1) // 2
    print(f"\n## table scale: {n_models} mlp models, {pairs} pairs, relu1 (128) + relu2 (64), ε grid {PAPER_EPS}, "
          f"pair_block 16")
    names = [f"{row['store']} {row['kernel'].replace('one_pair', 'old')}" for row in rows]
    print(f"{'':<44} | " + " | ".join(f"{name:>14}" for name in names))

    def line(label: str, key, fmt: str = "{:.1f}") -> None:
        values = []
        for row in rows:
            try:
                values.append(fmt.format(key(row)))
            except (KeyError, TypeError):
                values.append("")
        print(f"{label:<44} | " + " | ".join(f"{value:>14}" for value in values))

    ran = [row for row in rows if "stages" in row]
    for stage in ran[0]["stages"] if ran else ():
        line(f"stage {stage} (s)", lambda row, stage=stage: row["stages"][stage])
    line("whole run (s)", lambda row: row["wall"])
    line("curves computed", lambda row: row["curves"], "{:d}")
    line("match stage, ms per curve (wall)", lambda row: 1e3 * row["stages"]["match"] / row["curves"], "{:.2f}")
    line("… in-task cross products + curves (s)", lambda row: row["match_in_task"])
    line("driver memory before the run (MB)", lambda row: row["memory"]["before"], "{:.0f}")
    line("driver memory, peak during the run (MB)", lambda row: row["memory"]["peak"], "{:.0f}")
    line("driver max RSS so far (MB)", lambda row: row["memory"]["max_rss"], "{:.0f}")
    for table in COUNTED:
        line(f"data objects in {table} (current / stored)",
             lambda row, table=table: "{} / {}".format(*row["objects"][table]), "{}")
    for label in QUERIES:
        line(f"query: {label} (s)", lambda row, label=label: row["queries"][label], "{:.2f}")
    line("rerun that computes nothing (s)", lambda row: row["rerun"])
    line("… rows it computed", lambda row: row["rerun_computed"], "{:d}")
    print(f"(each query time is a fresh `raymatch query` process; `python -c 'import raymatch.cli'` alone takes "
          f"{startup:.2f} s; 'stored' objects include those compaction replaced, kept until raymatch gc removes them; "
          "'s3 copied': the local run's tables copied to moto, queries only)")
    _print_targets(result, n_models)


def _print_targets(result: dict, n_models: int) -> None:
    """The kernels compared on the same pairs, and issue 23's targets at this size."""
    rows = result["rows"]
    by = {(row["store"], row["kernel"]): row for row in rows}
    batched, old = by.get(("local", "batched")), by.get(("local", "one_pair"))
    comparison = result["comparison"]
    if comparison is not None:
        print(f"\nthe two kernels' rows: {comparison['rows'][0]} against {comparison['rows'][1]}, same pairs: "
              f"{comparison['same_pairs']}, largest |Δ critical ε| {comparison['max_difference']:.2e}, (pair, ε, side) "
              f"with different maximum matches at ε = 0 and the grid: {comparison['differing_sets']}")
    print("\n| target | measured | |\n|---|---|---|")
    if batched and old:
        ratio = old["stages"]["match"] / batched["stages"]["match"]
        print(f"| match stage ≥ 3× faster end to end than the old kernel (same command) | "
              f"{batched['stages']['match']:.1f} s against {old['stages']['match']:.1f} s: {ratio:.1f}× | "
              f"{'met' if ratio >= 3 else 'MISSED'} |")
    if batched and n_models in RECORDED_MATCH_SECONDS:
        ratio = RECORDED_MATCH_SECONDS[n_models] / batched["stages"]["match"]
        print(f"| … and than the {RECORDED_MATCH_SECONDS[n_models]} s recorded (docs/benchmarks.md) | {ratio:.1f}× | "
              f"{'met' if ratio >= 3 else 'MISSED'} |")
    if batched and n_models >= 1000:
        seconds = batched["stages"]["match"]
        print(f"| match stage ≤ 30 min | {seconds / 60:.1f} min | {'met' if seconds <= 1800 else 'MISSED'} |")
    for store, bound in (("local", 3.0), ("s3", 6.0)):
        row = next((row for row in rows if row["store"] == store and not row.get("again")), None)
        if row and "queries" in row:
            worst = max(row["queries"].values())
            print(f"| each query ≤ {bound:.0f} s on the {store} store | {worst:.2f} s at most | "
                  f"{'met' if worst <= bound else 'MISSED'} |")
    for row in rows:
        current, stored = (max(counts[i] for counts in row["objects"].values()) for i in (0, 1))
        print(f"| ≤ 20 data objects per table ({row['store']} {row['kernel']}) | {current} current, {stored} stored "
              f"| {'met' if stored <= 20 else ('met for the current version' if current <= 20 else 'MISSED')} |")
    if batched:
        grown = batched["memory"]["peak"] - batched["memory"]["before"]
        print(f"| driver memory bounded | {batched['memory']['peak']:.0f} MB peak, {grown:.0f} MB over its "
              f"{batched['memory']['before']:.0f} MB before the run, for {batched['curves']} curves | "
              "(compare the sizes) |")


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
         parts: tuple[str, ...] = ("table", "layer"), kernels: tuple[str, ...] = ("batched", "old"),
         s3: str = "run") -> int:
    """Run the chosen parts and print their tables."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": CREDENTIALS})  # the moto server's fake credentials, for the workers
    if "table" in parts:
        startup = _python_startup()
        print_table_scale(table_scale(n_models, epochs, kernels, s3), n_models, startup)
    if "layer" in parts:
        print_layer_scale(layer_scale(vgg_models, n_images, rows), vgg_models, n_images, rows)
    return 0
