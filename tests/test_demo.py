"""`ebplane demo` end to end: lab, XDP firewall, real traffic, live rule change, teardown."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pins import private_root

EBPLANE = Path(sys.executable).with_name("ebplane")


@pytest.fixture
def isolated_env(tmp_path):
    root = str(private_root("ebp-test-demo"))
    env = dict(os.environ, EBPLANE_STATE_DIR=str(tmp_path / "state"), EBPLANE_BPFFS_ROOT=root,
               EBPLANE_CACHE_DIR=str(tmp_path / "cache"))
    yield env
    subprocess.run(["rm", "-rf", root], check=False)


def test_demo_drops_and_passes_real_traffic_and_leaves_nothing(isolated_env):
    res = subprocess.run([str(EBPLANE), "demo", "--json", "--rounds", "2", "--packets", "10"],
                         capture_output=True, text=True, env=isolated_env, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    flows = {f["flow"]: f for f in summary["flows"]}
    # rules of the demo firewall decide these flows
    assert flows["SSH connect (tcp/22)"]["arrived"] == 0
    assert flows["IPv6 game (udp/9100)"]["arrived"] == 0
    assert flows["DNS query (udp/53)"]["arrived"] == flows["DNS query (udp/53)"]["sent"] == 20
    assert flows["web (tcp/80)"]["arrived"] == 20
    assert flows["IPv6 web (tcp/443)"]["arrived"] == 20
    # the icmp drop rule is inserted after the first round: round 1 passes, round 2 drops
    assert flows["ping (icmp)"]["arrived"] == 10
    assert "dropped by rule #0" in flows["ping (icmp)"]["why"]
    # counters come from the kernel and grow between rounds
    r1, r2 = summary["rounds"]
    assert r2["dropped"] > r1["dropped"] > 0 and r2["passed"] > r1["passed"] > 0
    # progress went to stderr, and the teardown happened
    assert "[5/5] tearing down" in res.stderr
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "ebp-demo" not in ns
    assert not any(Path(isolated_env["EBPLANE_BPFFS_ROOT"]).glob("*/*"))
