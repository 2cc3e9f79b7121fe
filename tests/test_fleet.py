"""The fleet on a real etcd (3 members on loopback) with 3 node agents, each with its own
namespace, state directory and pin root, each reaching etcd through its own forwarder
(stopping the forwarder cuts the node off).  Traffic in each node's namespace decides which
policy is in force (``in_force``: frames through the node's veth pair)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pins import private_root

from fleet_fixtures import EtcdCluster, Forwarder, stop
from pipeline_fixtures import write_spec
from test_crash import EBPLANE, RULE_EXTRA, in_force, spec_text
from ebplane.bench import classbench as cb
from ebplane.fleet import layout, rollout
from ebplane.fleet.etcd import Config, Etcd
from ebplane.net import iface
from ebplane.net import netns as _netns

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TTL = 3


class Node:
    def __init__(self, name: str, labels: str, tmp: Path, ns: str, fwd: Forwarder):
        self.name, self.labels, self.ns, self.fwd = name, labels, ns, fwd
        self.dir = tmp / name
        self.dir.mkdir()
        self.root = private_root()
        self.env = {**os.environ, "EBPLANE_DATA_DIR": str(self.dir / "data"),
                    "EBPLANE_SOCKET": str(self.dir / "agent.sock"),
                    "EBPLANE_STATE_DIR": str(self.dir / "state"),
                    "EBPLANE_BPFFS_ROOT": str(self.root)}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Node":
        self.proc = subprocess.Popen(
            [*EBPLANE, "agent", "--fleet", self.fwd.url, "--node", self.name, "--labels",
             self.labels, "--fleet-netns", self.ns, "--lease-ttl", str(TTL)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.dir / "agent.log", "a"))
        return self

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def log(self) -> str:
        return (self.dir / "agent.log").read_text()

    def cleanup(self) -> None:
        stop(self.proc)
        subprocess.run([*EBPLANE, "detach", "ap"], env=self.env, capture_output=True,
                       timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)



def verifier_refuses(text: str) -> str:
    """``text`` (a spec of test_crash) with 1,200 ClassBench-style ACL rules compiled inline:
    a program the verifier refuses (too large), so a rollout fails on the canary's load."""
    rules = "".join(f"        - {json.dumps(r)}\n"
                    for r in cb.generate(1200, kind="acl", family=4, seed=1))
    return (text.replace("classifier: tree\n", "classifier: inline\n      capacity: 2000\n")
            .replace("protocols: [ethernet, ipv4, ipv6, tcp, udp]",
                     "protocols: [ethernet, ipv4, ipv6, tcp, udp, icmp]")
            .replace("  - count: {}\n", rules + "  - count: {}\n"))

def node_ns(stack: contextlib.ExitStack) -> str:
    ns = stack.enter_context(_netns.temporary("ebp-fl"))
    for argv in (["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
                 ["ip", "link", "set", "veth0", "up"], ["ip", "link", "set", "veth1", "up"],
                 ["ip", "link", "add", "dum0", "type", "bridge"],
                 ["ip", "link", "set", "dum0", "up"]):
        _netns.run(ns.name, argv)
    with _netns.enter(ns.name):
        for dev in ("veth0", "veth1"):
            iface.wait_up(dev)
    return ns.name


def until(cond, timeout: float, what: str, nodes=()):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n.name}\n{n.log()[-3000:]}" for n in nodes)
            raise AssertionError(f"timed out: {what}\n{logs}")
        time.sleep(0.1)


def fleet(etcd_urls: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EBPLANE, "fleet", *args, "--etcd", etcd_urls, "--json"],
                          capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"fleet {args} exited {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def test_fleet_end_to_end(tmp_path):
    with contextlib.ExitStack() as stack:
        cluster = EtcdCluster(tmp_path)
        stack.callback(cluster.stop)
        cluster.start()
        urls = ",".join(cluster.endpoints)
        etcd = Etcd(Config.parse(urls))
        nodes = []
        for i, labels in enumerate(["role=edge", "role=edge", "role=core"]):
            ns = node_ns(stack)
            fwd = Forwarder(cluster.client[cluster.names[i]]).start()
            stack.callback(fwd.stop)
            n = Node(f"n{i}", labels, tmp_path, ns, fwd)
            stack.callback(n.cleanup)
            nodes.append(n.start())
        until(lambda: all(d["alive"] for d in rollout.nodes(etcd).values())
              and len(rollout.nodes(etcd)) == 3, 60, "3 nodes alive", nodes)
        n0, n1, n2 = nodes

        def state(n: Node) -> dict:
            kv = etcd.get(layout.status(n.name, "ap"))
            return kv.json() if kv else {}

        # a spec with a selector reaches exactly the selected nodes
        spec = write_spec(tmp_path / "ap.yaml", spec_text("ebp-placeholder", "A"))
        res = json.loads(fleet(urls, "apply", str(spec), "--selector", "role=edge").stdout)
        assert res["selected"] == ["n0", "n1"] and sorted(res["done"]) == ["n0", "n1"]
        assert [in_force(n.ns) for n in nodes] == ["A", "A", "none"]
        # all nodes, then a rule change rolled out to every node, two at a time
        res = json.loads(fleet(urls, "apply", str(spec), "--max-unavailable", "2").stdout)
        assert sorted(res["done"]) == ["n0", "n1", "n2"]
        assert in_force(n2.ns) == "A"
        res = json.loads(fleet(urls, "rules", "add", "ap", "--rule", RULE_EXTRA,
                               "--max-unavailable", "2").stdout)
        v_extra = res["version"]
        assert [in_force(n.ns) for n in nodes] == ["A+extra"] * 3
        st = json.loads(fleet(urls, "status").stdout)
        rows = {r["node"]: r for r in st["pipelines"]}
        assert {n: (r["version"], r["state"], r["lag"]) for n, r in rows.items()} == \
            {n.name: (v_extra, "ok", False) for n in nodes}

        # an agent killed: its node keeps forwarding, its status expires, it converges back
        n2.kill()
        assert in_force(n2.ns) == "A+extra"
        until(lambda: not state(n2), TTL + 10, "n2's status expires")
        st = json.loads(fleet(urls, "status").stdout)
        assert not st["nodes"]["n2"]["alive"]
        res = json.loads(fleet(urls, "rules", "delete", "ap", "2", "--max-unavailable",
                               "3").stdout)
        v_del = res["version"]
        assert res["not_alive"] == ["n2"] and in_force(n0.ns) == "A"
        assert in_force(n2.ns) == "A+extra"  # down: still the last version it had
        n2.start()
        until(lambda: state(n2).get("version") == v_del, 60, "n2 converges", nodes)
        assert in_force(n2.ns) == "A"

        # a node cut off from etcd keeps its data plane and catches up; meanwhile etcd
        # compacts the revisions it missed, so it resyncs
        n1.fwd.stop()
        until(lambda: not state(n1), TTL + 10, "n1's status expires after the cut")
        assert in_force(n1.ns) == "A"
        res = json.loads(fleet(urls, "rules", "add", "ap", "--rule", RULE_EXTRA).stdout)
        v_back = res["version"]
        assert res["not_alive"] == ["n1"]
        assert in_force(n0.ns) == "A+extra" and in_force(n1.ns) == "A"
        etcd.compact(etcd.put("/ebplane/test/bump", "x"))
        n1.fwd.start()
        until(lambda: state(n1).get("version") == v_back, 30, "n1 catches up", nodes)
        assert in_force(n1.ns) == "A+extra"
        assert "compacted" in n1.log() and "unreachable" in n1.log()

        # a rollout that the verifier refuses on the canary stops there: 1,200 realistic ACL
        # rules forced into the inline form exceed the verifier's one-million-instruction budget
        bad = write_spec(tmp_path / "bad.yaml", verifier_refuses(spec_text("ebp-placeholder", "B")))
        proc = fleet(urls, "apply", str(bad), "--canary", "n1", check=False)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        err = json.loads(proc.stdout)
        rep = err["report"]
        assert list(rep["stopped"]) == ["n1"] and rep["done"] == []
        assert err["error"] == "RolloutFailed" and "stopped at batch 1/" in err["message"]
        assert "verifier" in json.dumps(rep), rep
        for n in (n0, n2):  # never saw the bad version
            assert json.loads(etcd.get(layout.desired(n.name, "ap")).value)["version"] == v_back
            assert state(n)["version"] == v_back
        assert state(n1)["state"] in ("failed", "ok")
        assert [in_force(n.ns) for n in nodes] == ["A+extra"] * 3

        # detach everywhere
        res = json.loads(fleet(urls, "detach", "ap").stdout)
        assert res["detached_from"] == ["n0", "n1", "n2"]
        until(lambda: all(not state(n) for n in nodes), 30, "statuses gone", nodes)
        assert [in_force(n.ns) for n in nodes] == ["none"] * 3
