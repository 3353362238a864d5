"""What a terminal shows (issue 26 points 2, 9, 10): a dead ``--address`` in one line within the timeout, a status
that fits 100 columns, no stray ``ESC[0m``, no Broken pipe error under ``| head``, what each stage did counted in
its own units, and one line while a local Ray starts."""

from __future__ import annotations

import datetime as _dt
import os
import pty
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from raymatch import cli
from raymatch.engine.connect import RayUnreachable, wait_for_address
from raymatch.engine.status import WIDTH, fit_table
from raymatch.results import append_rows
from raymatch.store import Store

from .test_bad_inputs import SEEDS, put, study, tiny_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "examples"
UTC = _dt.timezone.utc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_ADDRESS")}
    return {**env, "RAY_TMPDIR": "/tmp"}


def _study_file(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for seed, key in enumerate(SEEDS):
        put(root, key, tiny_checkpoint(seed))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study(f"file://{root}")))
    return path


# ------------------------------------------------------------------------------------------------ --address


def test_an_address_where_nothing_listens_fails_within_the_timeout_naming_it():
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(RayUnreachable, match=f"no Ray cluster answers at 127.0.0.1:{port} .*tried for 1 s"):
        wait_for_address(f"127.0.0.1:{port}", 1.0)
    assert time.monotonic() - started < 3
    wait_for_address("auto", 0.1)  # Ray finds such clusters itself: nothing to wait for


def test_connect_timeout_must_be_a_positive_number(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["run", "study.yaml", "--connect-timeout", "soon"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--connect-timeout: must be a positive number of seconds" in err


@pytest.mark.slow
def test_raymatch_run_with_a_dead_address_exits_2_in_one_line(tmp_path):
    """Before: no raymatch line for 100 s, only Ray's C++ warnings every 5-30 s."""
    port = _free_port()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "raymatch", "run", str(_study_file(tmp_path)), "--address",
                           f"127.0.0.1:{port}", "--connect-timeout", "5"], env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"raymatch: error: no Ray cluster answers at 127.0.0.1:{port}")
    assert time.monotonic() - started < 5 + 60  # the timeout, and the study's loading and planning


# ------------------------------------------------------------------------------------------------ status


def _run_row(run_id: str, status: str, started: _dt.datetime, ended: _dt.datetime | None, host: str) -> dict:
    return {"run_id": run_id, "study": "a-study-with-a-long-name", "config_hash": "0" * 16, "host": host,
            "code_version": "x", "started_at": started, "ended_at": ended, "status": status, "computed": 123456,
            "skipped": 98765, "failed": 3, "stages": "{}", "error": None,
            "updated_at": ended or started + _dt.timedelta(seconds=2)}


def test_status_fits_100_columns(tmp_path, capsys, monkeypatch):
    """Before: about 200 columns (three full-precision timestamps)."""
    monkeypatch.delenv("RAYMATCH_HEARTBEAT_S", raising=False)
    store = Store(str(tmp_path / "store"))
    now = _dt.datetime.now(UTC)
    host = "a-build-agent-with-a-very-long-host-name.internal.example.org"
    append_rows(store, "runs", [
        _run_row("a-study-with-a-long-name.20260101T120000.0123abcd", "succeeded", now - _dt.timedelta(hours=2),
                 now - _dt.timedelta(hours=1), host),
        _run_row("a-study-with-a-long-name.20260101T130000.4567ef01", "running", now - _dt.timedelta(minutes=9),
                 None, host),
        _run_row("a-study-with-a-long-name.20260101T140000.89abcdef", "running", now - _dt.timedelta(seconds=20),
                 None, "vm")])
    assert cli.main(["status", store.root]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= WIDTH, out
    assert "60 min" in out and "abandoned" in out and "heard" in out and "…" in out  # the long host, cut


def test_a_table_is_cut_to_fit_in_its_text_columns():
    import pandas as pd

    frame = pd.DataFrame({"layer": ["relu1"], "model_a": ["0" * 16], "error": ["ValueError: non-finite " + "x" * 200]})
    text = fit_table(frame)
    assert max(map(len, text.splitlines())) <= WIDTH and "non-finite" in text and text.rstrip().endswith("…")


# ------------------------------------------------------------------------------------------------ pipes


class _ClosedPipe:
    """A stdout whose reader went away (`raymatch plan … | head`, once head has what it wants)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise ValueError("no file")


def test_a_reader_that_goes_away_is_no_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "store").mkdir()
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["status", str(tmp_path / "store")]) == 0
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["plan", "status", "query"])
def test_piped_into_head_a_command_ends_quietly(command, tmp_path):
    """Before: `raymatch: error: [Errno 32] Broken pipe`, exit 2."""
    study_file = _study_file(tmp_path)
    args = {"plan": [str(study_file)], "status": [str(tmp_path / "store")],
            "query": [str(tmp_path / "store"), "SELECT * FROM range(100000)"]}[command]
    process = subprocess.Popen([sys.executable, "-m", "raymatch", command, *args], env=_env(), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written
    err = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 0 and err == "", err


# ------------------------------------------------------------------------------------------------ a run


def _read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the terminal's other side closed
            return
        if not data:
            return
        into.append(data)


@pytest.mark.slow
def test_a_run_on_a_terminal_counts_what_each_stage_did_in_its_units(tmp_path):
    """The custom-model example (its own checkpoints: it trains nothing; three models in one pair task per layer:
    each factor is computed inside it) with the permuted null, stdout on a terminal and stderr in a log.

    Before: `train 0 computed, 3 skipped`, `factor 0 computed`, progress in tasks against totals in curves, nothing
    printed while Ray started, and an `ESC[0m` after the table.
    """
    import importlib.util

    folder = tmp_path / "custom-model"
    shutil.copytree(EXAMPLES / "custom-model", folder)
    spec = importlib.util.spec_from_file_location("_terminal_checkpoints", folder / "make_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.save_checkpoints(tmp_path / "raymatch-store" / "checkpoints" / "custom-model", steps=3)
    data = yaml.safe_load((folder / "study.yaml").read_text())
    data["null_baseline"] = ["permuted"]  # the README: it works with a factory
    (folder / "study.yaml").write_text(yaml.safe_dump(data))

    terminal, child = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(terminal, chunks))
    reader.start()
    done = subprocess.run([sys.executable, "-m", "raymatch", "run", str(folder / "study.yaml"), "--num-cpus", "2",
                           "--quiet"], env=_env(), cwd=tmp_path, stdout=child, stderr=subprocess.PIPE,
                          timeout=300)
    os.close(child)
    reader.join(10)
    os.close(terminal)
    out, err = b"".join(chunks).decode(), done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    assert "\x1b" not in out, repr(out[-300:])
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines()[2:] if line.strip()}
    assert rows["train"] == ["0", "0", "0"]  # nothing to train, nothing skipped
    assert rows["extract"] == ["3", "0", "0"]
    assert rows["factor"] == ["12", "0", "0"]  # 3 models × 4 layers, each factored inside its pair task
    assert rows["match"] == ["24", "0", "0"]  # 3 pairs × 4 layers, trained and permuted
    assert err.splitlines()[0].startswith("raymatch: starting a local Ray")
    assert "match: 24/24 pairs × layers × repeats done" in err and "extract: 3/3 models done" in err
