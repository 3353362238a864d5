"""Store URIs from the user's side (issue 26, point 1): ``raymatch plan`` / ``run`` / ``status`` with a store URI
that names no folder exit 2 with one problem naming what to write, and create nothing; the relative and home
forms the README uses keep working."""

from __future__ import annotations

import os

import pytest

from .test_bad_inputs import (  # noqa: F401 - ray_starts is a fixture
    SEEDS,
    assert_one_line,
    assert_problem,
    put,
    ray_starts,
    run_cli,
    snapshot,
    study,
    tiny_checkpoint,
    write_study,
)


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working directory (the study file is written beside it, never in it)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.parametrize("command", ["plan", "run"])
@pytest.mark.parametrize(("uri", "needle"), [
    ("file:/abs/path/store", "store.uri: malformed: write file:///abs/path/store (file:// then the absolute path)"),
    ("file://tmp/x/store", "store.uri: names the host 'tmp', which a local store cannot have: write "
                           "file:///tmp/x/store for the folder /tmp/x/store, or file://./tmp/x/store for one under "
                           "the working directory"),
])
def test_a_store_uri_naming_no_folder_is_one_problem_and_creates_nothing(command, uri, needle, here, tmp_path,
                                                                         capsys, ray_starts):  # noqa: F811
    study_file = write_study(tmp_path, study(uri))
    code, err = run_cli(capsys, command, study_file)
    problems = assert_problem(code, err, study_file, needle)
    assert problems.strip().splitlines() == [needle], err  # one problem
    assert "write file://abs" not in err  # the old hint named a relative path
    assert ray_starts == [] and os.listdir(here) == []


@pytest.mark.parametrize("command", ["status", "query"])
def test_a_store_command_refuses_a_host_in_the_uri(command, here, capsys):
    args = [command, "file://tmp/x/store"] + (["SELECT 1"] if command == "query" else [])
    code, err = run_cli(capsys, *args)
    assert_one_line(code, err, "raymatch: error: store URI 'file://tmp/x/store' names the host 'tmp'",
                    "write file:///tmp/x/store")
    assert os.listdir(here) == []


@pytest.mark.parametrize("form", ["file://./store", "./store", "store", "file://~/store", "~/store"])
def test_relative_plain_and_home_store_uris_still_plan(form, here, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(here))
    for seed, key in enumerate(SEEDS):
        put(here / "store", key, tiny_checkpoint(seed))
    before = snapshot(here)
    study_file = write_study(tmp_path, study(form))
    code, err = run_cli(capsys, "plan", study_file)
    assert code == 0, err
    assert snapshot(here) == before  # plan writes nothing
