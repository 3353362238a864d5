"""The command line: the demo main job and the benchmark command (smoke sizes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raymatch.bench import main as bench_main
from raymatch.cli import main


def test_demo_prints_the_match_table(capsys):
    assert main(["demo", "--samples", "400", "--neurons", "24"]) == 0
    out = capsys.readouterr().out
    assert "similarity" in out and "0.25" in out


@pytest.mark.slow
def test_bench_match_quick_prints_every_row(capsys):
    assert bench_main(["match", "--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("1 ", "2 ", "3 ", "4 ", "5 ", "6a", "6b", "6c", "6d", "6e", "6f", "7a", "7b", "7c", "8 "):
        assert f"\n{row}" in out
    assert "median s" in out
    # rows 7-8: today's kernel, the batched kernel and the floor, with threads and device, and a verdict per row
    assert "1 thread(s), device cpu" in out and "today ms | batched ms | floor ms" in out
    blocks = out.split("rows 7–8")[1]
    assert blocks.count("met: ") + blocks.count("MISSED: ") == 4  # rows 7a-7c and 8
    assert "where the batched kernel's time goes" in out


def test_bench_match_blocks_alone_and_bad_devices(capsys):
    assert bench_main(["match", "--quick", "--repeats", "1", "--part", "blocks"]) == 0
    out = capsys.readouterr().out
    assert "\n7a" in out and "\n6a" not in out
    assert bench_main(["match", "--quick", "--part", "table"]) == 2
    assert "--part must be core, blocks or measures" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point_runs_as_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "raymatch", "--version"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.startswith("raymatch ")


def test_unknown_command_is_a_usage_error(capsys):
    try:
        main(["nonsense"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "invalid choice" in capsys.readouterr().err
