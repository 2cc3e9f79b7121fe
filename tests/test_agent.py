"""The agent (``ebplane agent``) against the real kernel: restart without loss, restore after a
"reboot", drift repaired, pending interfaces, crash loop, access control, file modes.

Each test runs a real agent process on a private data directory, socket, state directory and
bpffs root, and a veth pair in a throw-away namespace; the CLI (a subprocess) goes through
the agent because ``$EBPLANE_SOCKET`` points at it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_fixtures import (Sender, cli, cli_json, dropped, ebp_env, mac,  # noqa: F401
                               write_spec)
from test_crash import EBPLANE, RULE_EXTRA, in_force, spec_text
from ebplane.lab.traffic import Flow
from ebplane.net import netns as _netns

pytestmark = pytest.mark.lab


class AgentProc:
    def __init__(self, tmp: Path):
        self.data = tmp / "data"
        self.sock = tmp / "agent.sock"
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "AgentProc":
        self.proc = subprocess.Popen([*EBPLANE, "agent", "--log-json"], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "a"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if self.health() is not None:
                return self
            time.sleep(0.05)
        raise AssertionError(f"agent did not answer in {timeout} s:\n{self.log.read_text()}")

    def health(self):
        from ebplane.agent.client import Client
        try:
            return Client(self.sock, timeout=5).health()
        except Exception:
            return None

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            return self.proc.wait(30)
        return self.proc.returncode if self.proc else 0

    def events(self, kind: str | None = None) -> list[dict]:
        from ebplane.agent.client import Client
        evs = Client(self.sock, timeout=10).events(0)
        return [e for e in evs if kind is None or e["kind"] == kind]

    def wait_event(self, kind: str, after: int = 0, timeout: float = 20.0) -> dict:
        from ebplane.agent.client import Client
        c = Client(self.sock, timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in c.events(after, wait=0.5):
                if e["kind"] == kind:
                    return e
                after = e["seq"]
        raise AssertionError(f"no {kind} event in {timeout} s: {self.events()}")

    def last_seq(self) -> int:
        evs = self.events()
        return evs[-1]["seq"] if evs else 0


@pytest.fixture
def agent(ebp_env, tmp_path, monkeypatch):
    a = AgentProc(tmp_path)
    monkeypatch.setenv("EBPLANE_DATA_DIR", str(a.data))
    monkeypatch.setenv("EBPLANE_SOCKET", str(a.sock))
    a.start()
    try:
        yield a
    finally:
        rc = a.stop()
        assert rc in (0, -9), a.log.read_text()


@pytest.fixture
def veth(veth_pair):
    return veth_pair[0]


def link_pin(root: Path) -> Path:
    return root / "ap" / "links" / "veth0@xdp"


# -- through the agent ------------------------------------------------------------------------

def test_cli_goes_through_the_agent_and_falls_back(agent, ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    res = cli_json("apply", str(spec))
    assert res["via"] == "agent" and res["state"] == "ok"
    added = cli_json("rules", "add", "ap", "--rule", RULE_EXTRA)
    assert added["via"] == "agent" and added["rules"] == 3
    assert in_force(veth) == "A+extra"
    rules = cli_json("rules", "list", "ap")
    assert [r["rule"].get("dport") for r in rules] == [53, 1, 7777]
    st = cli_json("status", "ap")
    assert st[0]["via"] == "agent" and st[0]["health"] == "ok"
    assert st[0]["agent"]["in_sync"]
    # the desired state holds the rule (read from the database itself)
    from ebplane.agent.store import Store
    s = Store(agent.data, readonly=True)
    assert [e["rule"].get("dport") for e in s.rules("ap")["acl"]] == [53, 1, 7777]
    s.close()
    kinds = [e["kind"] for e in agent.events()]
    assert kinds[:2] == ["applied", "rules-changed"]
    lines = [json.loads(ln) for ln in cli("events", "--json").stdout.splitlines()]
    assert [e["kind"] for e in lines][:2] == ["applied", "rules-changed"]
    # --follow prints what happens next
    follow = subprocess.Popen([*EBPLANE, "events", "--follow", "--json", "--last", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        cli("rules", "delete", "ap", "2")
        cli("rules", "add", "ap", "--rule", RULE_EXTRA)
        first = json.loads(follow.stdout.readline())
        assert first["kind"] == "rules-changed" and first["via"] == "agent"
    finally:
        follow.kill()
        follow.wait(10)
    # a spec the validator refuses: exit 2, nothing desired
    bad = write_spec(tmp_path / "bad.yaml", spec_text(veth, "A").replace("pipeline: ap",
                                                                          "pipeline: b@d"))
    proc = cli("apply", str(bad), "--json", check=False)
    assert proc.returncode == 2, proc.stderr
    # no agent: the CLI works directly and says so
    agent.stop()
    assert cli_json("status", "ap")[0]["via"] == "direct"
    deleted = cli_json("rules", "delete", "ap", "2")
    assert deleted["via"] == "direct"
    assert in_force(veth) == "A"
    agent.start()  # the change made without it is in force: the desired state wins at start
    agent.wait_event("drift-repaired")
    assert in_force(veth) == "A+extra"


def test_restart_keeps_traffic_and_program(agent, ebp_env, veth, tmp_path):
    """kill -9 of the agent while frames flow: every frame is counted by the pipeline, the
    counters carry on, and the restarted agent adopts the program (same id)."""
    flow = Flow("udp", "198.18.0.1", "198.18.0.2", 40010, 9999)
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    cli("apply", str(spec))
    cli("rules", "add", "ap", "--at", "0", "--rule",
        "{dst: 198.18.0.2, proto: udp, dport: 9999, action: drop}")
    prog = cli_json("status", "ap")[0]["prog_id"]
    before = dropped(veth, "veth0") + dropped(veth, "veth1")
    frame = flow.frame(mac(veth, "veth1"), mac(veth, "veth0"))
    with Sender(veth, "veth1", frame) as s:
        time.sleep(0.5)
        mid = cli_json("stats", "ap")[0]["stages"][0]["rules"][0]["packets"]
        assert mid > 0
        agent.kill()
        time.sleep(0.3)
        agent.start()
        agent.wait_event("adopted")
        time.sleep(0.5)
    sent = s.sent
    lost = dropped(veth, "veth0") + dropped(veth, "veth1") - before
    after = cli_json("stats", "ap")[0]["stages"][0]["rules"][0]["packets"]
    assert lost == 0
    assert after == sent, f"sent {sent}, the pipeline counted {after}"
    assert after > mid
    assert cli_json("status", "ap")[0]["prog_id"] == prog
    assert not agent.events("restored") and not agent.events("drift-repaired")


def test_reboot_restores_pipeline_and_rules(agent, ebp_env, veth, tmp_path):
    """What a reboot leaves: no pins, no /run state, nothing attached. The agent started on
    the desired state puts every pipeline back with its run-time rules."""
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    cli("apply", str(spec))
    cli("rules", "add", "ap", "--rule", RULE_EXTRA)
    assert in_force(veth) == "A+extra"
    assert agent.stop() == 0
    assert in_force(veth) == "A+extra"  # SIGTERM leaves the data plane running
    # the reboot: pins gone (unpinning the only reference detaches the link), /run gone
    import shutil
    shutil.rmtree(ebp_env)
    shutil.rmtree(os.environ["EBPLANE_STATE_DIR"])
    assert in_force(veth) == "none"
    agent.start()
    ev = agent.wait_event("restored")
    assert "acl:3" in ev["message"]
    assert in_force(veth) == "A+extra"
    st = cli_json("status", "ap")[0]
    assert st["health"] == "ok" and st["rules"] == {"acl": 3}


@pytest.mark.parametrize("how", ["detach", "unpin"])
def test_drift_repaired_within_a_second(agent, ebp_env, veth, tmp_path, how):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    cli("apply", str(spec))
    assert in_force(veth) == "A"
    seq = agent.last_seq()
    from ebplane.kernel.links import Link
    t0 = time.monotonic()
    if how == "detach":  # bpftool link detach, behind the agent's back
        with Link.from_pin(link_pin(ebp_env)) as link:
            link.detach()
    else:  # a pin removed: its link was the only reference, the program is detached
        link_pin(ebp_env).unlink()
    ev = agent.wait_event("drift-repaired", after=seq, timeout=10)
    took = time.monotonic() - t0
    assert in_force(veth) == "A"
    print(f"drift ({how}) repaired after {took:.3f} s")
    assert took < 1.0, f"repaired after {took:.2f} s"
    assert ev["detail"]["problems"]
    st = cli_json("status", "ap")[0]
    assert st["health"] == "ok"


def test_pending_interface_attached_when_it_appears(agent, ebp_env, netns, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(netns, "A"))
    res = cli_json("apply", str(spec))
    assert res["state"] == "pending" and "veth0" in res["why"]
    st = cli_json("status", "ap")[0]
    assert st["health"] == "PENDING"
    agent.wait_event("pending")
    time.sleep(5)
    seq = agent.last_seq()
    _netns.run(netns, ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"])
    t0 = time.monotonic()
    for dev in ("veth0", "veth1"):
        _netns.run(netns, ["ip", "link", "set", dev, "up"])
    agent.wait_event("attached", after=seq, timeout=10)
    took = time.monotonic() - t0
    print(f"pending interface attached {took:.3f} s after it appeared")
    assert took < 1.0, f"attached {took:.2f} s after the interface appeared"
    time.sleep(0.3)  # veth carrier
    assert in_force(netns) == "A"
    # gone, reported; back, attached again
    seq = agent.last_seq()
    _netns.run(netns, ["ip", "link", "del", "veth0"])
    agent.wait_event("interface-gone", after=seq, timeout=10)
    _netns.run(netns, ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"])
    for dev in ("veth0", "veth1"):
        _netns.run(netns, ["ip", "link", "set", dev, "up"])
    agent.wait_event("attached", after=seq, timeout=10)
    time.sleep(0.3)
    assert in_force(netns) == "A"


# -- crash loop -------------------------------------------------------------------------------

def _expected(rules: list[dict]) -> str:
    ports = {r["rule"].get("dport") for r in rules}
    v = {(True, False): "A", (False, True): "B", (False, False): "none",
         (True, True): "both"}[(53 in ports, 9 in ports)]
    return v + "+extra" if 7777 in ports else v


@pytest.mark.slow
def test_crash_loop_state_and_kernel_agree(agent, ebp_env, veth, tmp_path):
    """50 kill -9 of the agent at random points of an apply (A <-> B) or a rule replace: each
    time, after the restart, the policy in force is the desired state's, the runtime record
    agrees with the kernel, and no staged pin is left."""
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    cli("apply", str(spec))
    rules_a = tmp_path / "ra.yaml"
    rules_a.write_text("- {dst: 198.18.0.2, proto: udp, dport: 53, action: drop}\n"
                       f"- {RULE_EXTRA}\n")
    rules_b = tmp_path / "rb.yaml"
    rules_b.write_text("- {dst: 198.18.0.2, proto: udp, dport: 9, action: drop}\n")
    t0 = time.monotonic()
    cli("rules", "replace", "ap", str(rules_a))
    duration = max(time.monotonic() - t0, 0.5)
    rng = random.Random(12)
    seen: dict[str, int] = {}
    for i in range(50):
        op = rng.choice(["apply", "replace"])
        if op == "apply":
            write_spec(spec, spec_text(veth, rng.choice("AB")))
            args = ["apply", str(spec)]
        else:
            args = ["rules", "replace", "ap", str(rng.choice([rules_a, rules_b]))]
        client = subprocess.Popen([*EBPLANE, *args], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, duration + 0.3))
        agent.kill()
        client.wait(60)
        agent.start()
        rules = cli_json("rules", "list", "ap")
        st = cli_json("status", "ap")[0]
        assert st["health"] == "ok", st
        v = in_force(veth)
        assert v == _expected(rules), (i, op, v, rules)
        seen[v] = seen.get(v, 0) + 1
        leaked = [p for p in (ebp_env / "ap").rglob("*-new")]
        assert not leaked, leaked
    assert len(seen) >= 2, seen  # both outcomes met: the kills fell inside the changes


# -- access -----------------------------------------------------------------------------------

NOBODY = 65534
RAW_REQUEST = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(b"GET /v1/pipelines HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode())
"""


def _as_nobody(sock: Path) -> str:
    return subprocess.run(["/usr/bin/python3", "-c", RAW_REQUEST, str(sock)], user=NOBODY,
                          group=NOBODY, extra_groups=[], capture_output=True, text=True,
                          timeout=30, cwd="/").stdout


def test_unauthorised_peer_refused(agent, ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    cli("apply", str(spec))
    mode = stat.S_IMODE(agent.sock.stat().st_mode)
    assert mode == 0o660
    import tempfile
    with tempfile.TemporaryDirectory(prefix="ebp-agent-") as d:
        os.chmod(d, 0o755)  # nobody may reach the socket file (pytest's tmp is root's)
        reachable = Path(d) / "agent.sock"
        os.link(agent.sock, reachable)  # the same socket inode, mode 0660
        assert _as_nobody(reachable).strip() == "EACCES"
        os.chmod(reachable, 0o666)  # even with the socket open to all: SO_PEERCRED refuses
        out = _as_nobody(reachable)
    assert out.startswith("HTTP/1.0 403"), out
    body = json.loads(out.split("\n\n", 1)[1])
    assert "refuses requests from uid 65534" in body["error"]["message"]
    assert body["exit_code"] == 4
    assert in_force(veth) == "A"


def test_state_and_pins_not_world_readable(agent, ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    cli("apply", str(spec))
    cli("rules", "add", "ap", "--rule", RULE_EXTRA)
    paths = [agent.data, *agent.data.iterdir(), ebp_env,
             Path(os.environ["EBPLANE_STATE_DIR"]) / "pipelines",
             *(Path(os.environ["EBPLANE_STATE_DIR"]) / "pipelines").iterdir()]
    paths += [p for p in ebp_env.rglob("*") if p.is_file()]
    open_to_others = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
                      if stat.S_IMODE(p.stat().st_mode) & 0o007}
    assert not open_to_others
    assert stat.S_IMODE(ebp_env.stat().st_mode) == 0o700


def test_one_rule_add_persisted_fast(tmp_path):
    """The desired state costs in proportion to the change: one rule added to a table of
    100k rules is one small transaction."""
    from ebplane.agent.store import Store
    s = Store(tmp_path / "data")
    rules = [{"id": i, "rule": {"dst": f"198.18.{i >> 8 & 255}.{i & 255}", "proto": "udp",
                                "dport": 1 + i % 60000, "action": "drop"}} for i in range(100_000)]
    s.put_pipeline("big", "pipeline: big", "big.yaml", {"acl": rules})
    orders = s.orders("big", "acl")
    times = []
    cur = rules
    for k in range(20):
        new = cur[:50_000 + k] + [{"id": 100_000 + k, "rule": {"dport": 7, "action": "drop"}}] + \
            cur[50_000 + k:]
        t0 = time.perf_counter()
        orders = s.change_rules("big", "acl", cur, orders, new, (50_000 + k, len(cur) - 50_000 - k))
        times.append(time.perf_counter() - t0)
        cur = new
    times.sort()
    median = times[len(times) // 2]
    print(f"one rule into 100k: median {median * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms")
    assert median < 0.05
    stored = s.rules("big")["acl"]
    assert [e["id"] for e in stored] == [e["id"] for e in cur]
    # deleting one, and a replace, stay in order too
    new = cur[:10] + cur[11:]
    orders = s.change_rules("big", "acl", cur, orders, new, (10, len(cur) - 11))
    assert [e["id"] for e in s.rules("big")["acl"]] == [e["id"] for e in new]
    # a wrong hint (an identical rule added before its twin takes the twin's id) is caught
    twin = new[5]
    newer = new[:5] + [dict(twin)] + [{"id": 300_000, "rule": twin["rule"]}] + new[6:]
    orders = s.change_rules("big", "acl", new, orders, newer, (5, len(new) - 5))
    assert [e["id"] for e in s.rules("big")["acl"]] == [e["id"] for e in newer]
    # without hint: rules compared
    newest = newer[:-3]
    s.change_rules("big", "acl", newer, orders, newest)
    assert [e["id"] for e in s.rules("big")["acl"]] == [e["id"] for e in newest]
    s.close()


def test_parallel_clients_lose_no_edit(agent, ebp_env, veth, tmp_path):
    """Two clients adding rules at once, and an apply in the middle: every edit lands, and
    the desired state holds the same rules as the kernel's record."""
    import threading
    from ebplane.agent.client import Client
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    cli("apply", str(spec))
    errors: list[BaseException] = []

    def add(base: int) -> None:
        try:
            c = Client(agent.sock)
            for k in range(8):
                c.rules_add("ap", {"dst": "198.18.0.2", "proto": "udp", "dport": base + k,
                                   "action": "drop"})
        except BaseException as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=add, args=(b,)) for b in (20000, 30000)]
    for t in threads:
        t.start()
    Client(agent.sock).apply(spec)  # same spec: the run-time rules are kept
    for t in threads:
        t.join(120)
    assert not errors, errors
    ports = [r["rule"]["dport"] for r in cli_json("rules", "list", "ap")]
    assert sorted(p for p in ports if p >= 20000) == \
        sorted([20000 + k for k in range(8)] + [30000 + k for k in range(8)])
    from ebplane.agent.store import Store
    from ebplane.runtime.state import PipelineState
    s = Store(agent.data, readonly=True)
    assert s.rules("ap")["acl"] == PipelineState.load("ap").live_rules["acl"]
    s.close()
