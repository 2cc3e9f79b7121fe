"""The control plane's state directory: names cannot lead outside it, its locks and files are
root's only, and an unprivileged user gets exit code 4 and a hint, not a traceback.

These tests need no BPF: they run the CLI on state files written by the state module itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ebplane.errors import UsageError
from ebplane.runtime import pipeline
from ebplane.runtime.state import PipelineState, locked, pin_dir

EBPLANE = [sys.executable, "-m", "ebplane.cli.main"]


def run(*args: str, env: dict, prefix: list[str] = (), timeout: float = 60):
    return subprocess.run([*prefix, *EBPLANE, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def state_of(name: str) -> dict:
    return dict(name=name, spec_text="", spec_file="x.yaml", hook="xdp", netns=None, prog_id=0,
                features={}, attachments=[], live_rules={}, spec_rules={})


@pytest.fixture
def env(tmp_path):
    """A state dir and a bpffs root (never mounted: nothing here loads BPF) of the test."""
    e = dict(os.environ, EBPLANE_STATE_DIR=str(tmp_path / "state"),
             EBPLANE_BPFFS_ROOT=str(tmp_path / "pins"))
    return e


# -- item: names --------------------------------------------------------------------------------

BAD_NAMES = ["../x", "/../../../../tmp/x/victim", "a/b", ".", "..", "", "A", "x" * 16,
             "a\x00b", "name.json"]


@pytest.mark.parametrize("argv", [["detach", "{}"], ["status", "{}"], ["stats", "{}"],
                                  ["rules", "list", "{}"], ["rules", "delete", "{}", "0"],
                                  ["rules", "add", "{}", "action=drop"]])
def test_cli_refuses_names_that_are_not_pipeline_names(argv, env, tmp_path):
    for bad in BAD_NAMES:
        if "\x00" in bad:
            continue  # argv cannot carry a NUL byte
        res = run(*[a.replace("{}", bad) for a in argv], env=env)
        assert res.returncode == 2, (bad, res.stderr)
        assert "Traceback" not in res.stderr
        assert "invalid pipeline name" in res.stderr and "hint:" in res.stderr


def test_detach_cannot_remove_a_directory_outside_the_state(env, tmp_path):
    outside = tmp_path / "x"
    (outside / "victim").mkdir(parents=True)
    (outside / "victim" / "keep").write_text("precious")
    (outside / "victim.json").write_text(json.dumps(state_of("victim")))
    res = run("detach", f"/../../../..{outside}/victim", env=env)
    assert res.returncode == 2, res.stderr
    assert (outside / "victim" / "keep").read_text() == "precious"
    assert (outside / "victim.json").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["victim", "victim.json"]  # no lock


@pytest.mark.parametrize("bad", BAD_NAMES + [None, 3])
def test_api_refuses_bad_names(bad, monkeypatch, tmp_path):
    monkeypatch.setenv("EBPLANE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("EBPLANE_BPFFS_ROOT", str(tmp_path / "pins"))
    calls = [lambda: pipeline.detach(bad), lambda: pipeline.status(bad or "x" * 16),
             lambda: pipeline.stats(bad or "x" * 16), lambda: pipeline.RuleTable(bad),
             lambda: PipelineState.load(bad), lambda: pin_dir(bad),
             lambda: locked(bad).__enter__()]
    for call in calls:
        with pytest.raises(UsageError, match="invalid pipeline name"):
            call()
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.lock"))
