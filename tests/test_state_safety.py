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
    spec = (f"pipeline: {name}\nhook: xdp\nprotocols: [ethernet, ipv4]\n"
            "stages:\n  - filter: {name: acl, default: pass, rules: []}\n")
    return dict(name=name, spec_text=spec, spec_file="x.yaml", hook="xdp", netns=None, prog_id=0,
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


# -- item: locks ----------------------------------------------------------------------------------

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@pytest.fixture
def open_env():
    """Like ``env`` but below a directory every user may traverse (pytest's tmp dirs are
    root's only, which would hide the state directory's own modes)."""
    import shutil
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="ebp-state-", dir="/tmp"))
    base.chmod(0o755)
    e = dict(os.environ, EBPLANE_STATE_DIR=str(base / "state"),
             EBPLANE_BPFFS_ROOT=str(base / "pins"))
    try:
        yield e, base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def save_state(monkeypatch, e: dict, name: str) -> PipelineState:
    monkeypatch.setenv("EBPLANE_STATE_DIR", e["EBPLANE_STATE_DIR"])
    monkeypatch.setenv("EBPLANE_BPFFS_ROOT", e["EBPLANE_BPFFS_ROOT"])
    st = PipelineState(**state_of(name))
    st.save()
    return st


def test_state_and_locks_are_root_only(open_env, monkeypatch):
    e, base = open_env
    save_state(monkeypatch, e, "p1")
    with locked("p1"):
        pass
    d = base / "state" / "pipelines"
    lock = d / ".p1.lock"
    assert (d.stat().st_mode & 0o777) == 0o700
    assert (lock.stat().st_mode & 0o777) == 0o600
    assert ((d / "p1.json").stat().st_mode & 0o777) == 0o600
    # another user can neither take the lock (and freeze the control plane) nor read the rules
    res = subprocess.run([*NOBODY, "flock", "-s", "-w", "1", str(lock), "true"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    res = subprocess.run([*NOBODY, "cat", str(d / "p1.json")], capture_output=True, timeout=30)
    assert res.returncode != 0


def test_an_old_world_readable_state_dir_is_tightened(open_env, monkeypatch):
    e, base = open_env
    d = base / "state" / "pipelines"
    d.mkdir(parents=True, mode=0o755)
    d.chmod(0o755)
    (d / ".p1.lock").write_text("")
    (d / ".p1.lock").chmod(0o644)
    save_state(monkeypatch, e, "p1")
    with locked("p1"):
        pass
    assert (d.stat().st_mode & 0o777) == 0o700
    assert ((d / ".p1.lock").stat().st_mode & 0o777) == 0o600


def _hold(e: dict, how: str, name: str = "p1") -> subprocess.Popen:
    """A process holding the pipeline's lock: ebplane's own (writes its pid) or flock(1)."""
    lock = Path(e["EBPLANE_STATE_DIR"]) / "pipelines" / f".{name}.lock"
    if how == "ebplane":
        code = ("import sys, time\nfrom ebplane.runtime.state import locked\n"
                f"with locked({name!r}):\n    print('held', flush=True)\n    time.sleep(40)\n")
        p = subprocess.Popen([sys.executable, "-c", code], env=e, stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    else:
        p = subprocess.Popen(["flock", "-x", str(lock), "sh", "-c", "echo held; sleep 40"],
                             env=e, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("how", ["ebplane", "flock"])
@pytest.mark.parametrize("argv", [["detach", "p1"], ["rules", "add", "p1", "action=drop"]])
def test_waiting_for_a_lock_times_out_naming_the_holder(how, argv, open_env, monkeypatch):
    e, base = open_env
    save_state(monkeypatch, e, "p1")
    holder = _hold(e, how)
    try:
        e = dict(e, EBPLANE_LOCK_TIMEOUT="1")
        import time
        t0 = time.monotonic()
        res = run(*argv, env=e, timeout=30)
        assert time.monotonic() - t0 < 15
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        # the holder: the flock(1) process itself, or the python that called locked()
        assert f"locked by process {holder.pid}" in res.stderr, res.stderr
        assert "EBPLANE_LOCK_TIMEOUT" in res.stderr
    finally:
        import signal
        os.killpg(holder.pid, signal.SIGKILL)  # flock(1) and its sleep: a group of our own
        holder.wait()


def test_lock_timeout_must_be_a_number(env):
    res = run("detach", "p1", env=dict(env, EBPLANE_LOCK_TIMEOUT="soon"))
    assert res.returncode == 2 and "EBPLANE_LOCK_TIMEOUT" in res.stderr


def test_detach_removes_the_lock_file(open_env, monkeypatch):
    e, base = open_env
    save_state(monkeypatch, e, "p1")
    with locked("p1"):
        pass
    d = base / "state" / "pipelines"
    assert (d / ".p1.lock").exists()  # an applied pipeline keeps its lock file
    res = run("detach", "p1", env=e)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(d)) == []
    res = run("detach", "p2", env=e)  # not applied: no lock file left either
    assert res.returncode == 2 and sorted(os.listdir(d)) == []


def test_lock_files_removed_under_the_lock_never_give_two_holders(open_env, monkeypatch):
    """Every holder removes the lock file on release (no state): lockers waiting on the old
    file must notice and lock the new one, or two would hold 'the' lock at once."""
    e, base = open_env
    log = base / "log"
    code = ("import os, sys, time\nfrom ebplane.runtime.state import locked\n"
            f"log = {str(log)!r}\n"
            "for _ in range(40):\n"
            "    with locked('p1'):\n"
            "        with open(log, 'a') as f: f.write(f'in {os.getpid()}\\n')\n"
            "        time.sleep(0.002)\n"
            "        with open(log, 'a') as f: f.write(f'out {os.getpid()}\\n')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=e) for _ in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 4 * 40 * 2
    for i in range(0, len(lines), 2):  # strictly in/out pairs of one process
        assert lines[i].startswith("in ") and lines[i + 1] == "out " + lines[i][3:], lines[i:i + 2]


# -- item: an unprivileged user -------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["status"], ["status", "p1"], ["stats"], ["stats", "p1"], ["rules", "list", "p1"],
    ["rules", "add", "p1", "action=drop"], ["rules", "delete", "p1", "0"], ["detach", "p1"],
    ["apply", "{spec}"]])
def test_unprivileged_user_gets_exit_4_and_a_hint(argv, open_env, monkeypatch):
    e, base = open_env
    st = save_state(monkeypatch, e, "p1")
    spec = base / "p1.yaml"
    spec.write_text(st.spec_text)
    spec.chmod(0o644)
    with locked("p1"):
        pass
    res = run(*[a.replace("{spec}", str(spec)) for a in argv], "--json", env=e, prefix=NOBODY)
    assert res.returncode == 4, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and "\nhint: run as root" in res.stderr
    assert json.loads(res.stdout)["error"] == "PermissionDenied"
    assert "198.18" not in res.stdout  # nothing of the state shown
    # and nothing changed
    assert PipelineState.load("p1") == st


def test_any_permission_error_is_a_privileges_error(open_env):
    """A file ebplane cannot read (here a root-only pcap) is a missing privilege, exit 4."""
    e, base = open_env
    root = Path(__file__).resolve().parent.parent
    secret = base / "secret"
    secret.mkdir(mode=0o700)
    pcap = secret / "in.pcap"
    pcap.write_bytes((root / "examples/edge.pcap").read_bytes())
    res = run("replay", str(root / "examples/edge.yaml"), "--pcap", str(pcap), env=e,
              prefix=NOBODY)
    assert res.returncode == 4, res.stderr
    assert "Traceback" not in res.stderr and "hint: run as root" in res.stderr
