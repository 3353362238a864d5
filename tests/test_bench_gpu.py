"""``raymatch bench gpu --device cpu``: the prepared GPU check runs every step with the CPU in the GPU's place, so
that the script is known to work before a GPU is there (issue 23, point 5)."""

from __future__ import annotations

import pytest

from raymatch.bench import main as bench
from raymatch.bench.gpu import oracle_cases


def test_the_oracle_cases_agree_on_the_cpu():
    import torch

    rows = oracle_cases(torch.device("cpu"))
    assert len(rows) == 6 and all(row["ok"] for row in rows), rows
    assert sum(row["vs_oracle"] is not None for row in rows) == 5  # the float32 twins: exact at 2^-13 only


@pytest.mark.slow
def test_bench_gpu_on_the_cpu_writes_its_table(ray_cluster, tmp_path, capsys):  # the cluster's GPUs are fake
    assert bench(["gpu", "--device", "cpu", "--quick", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "out" / "bench-gpu.md").read_text()
    assert "| check" in table and table.splitlines()[-1] in printed
    assert "FAILED" not in table and table.count("| oracle case:") == 6 and table.count("| timed") == 4
    assert "study on GPU extraction and match actors" in table and "match on cpu × " in table


def test_bench_gpu_without_cuda_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is there")
    assert bench(["gpu"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
