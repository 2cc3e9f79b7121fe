"""Without CAP_BPF / CAP_NET_ADMIN / CAP_SYS_ADMIN, commands fail with exit code 4 and a hint
that names the missing capabilities (not a traceback, not a generic kernel error)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EBPLANE = Path(sys.executable).with_name("ebplane")
ROOT = Path(__file__).resolve().parent.parent
DROP = ["setpriv", "--inh-caps=-all", "--bounding-set=-bpf,-sys_admin,-net_admin,-perfmon", "--"]


@pytest.fixture(autouse=True)
def _setpriv():
    if shutil.which("setpriv") is None:  # util-linux: part of every Debian install
        pytest.fail("setpriv (util-linux) is missing")


@pytest.mark.parametrize("argv", [
    ["replay", str(ROOT / "examples/edge.yaml"), "--pcap", str(ROOT / "examples/edge.pcap")],
    ["probe"],
])
def test_missing_capabilities_exit_4_with_the_fix(argv, tmp_path):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "EBPLANE_CACHE_DIR": str(tmp_path)}
    res = subprocess.run(DROP + [str(EBPLANE), *argv, "--json"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 4, res.stderr
    err = json.loads(res.stdout)
    assert err["error"] == "PermissionDenied" and "EPERM" in err["message"]
    assert "CAP_BPF" in err["hint"] and "CAP_NET_ADMIN" in err["hint"]
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and "\nhint: run as root" in res.stderr
