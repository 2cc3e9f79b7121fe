"""Rule-change propagation to N simulated agents on one etcd (docs/fleet.md).

    .venv/bin/python benchmarks/fleet_sim.py [--agents 200] [--procs 10] [--changes 5]

Starts one etcd on loopback ports (stopped at the end), N simulated agents (threads in
``--procs`` processes; ``ebplane.fleet.sim``), applies a spec to all of them, then makes
``--changes`` rule changes, each rolled out to every node in one batch; the time of a
change is from the write of the fleet definition until the last of the N agents reported
the new version in its status.  Prints JSON: times, etcd CPU seconds while idle (leases
only) and per change, etcd's key count and database size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from ebplane.fleet import rollout
from ebplane.fleet.etcd import Config, Etcd

SPEC = """pipeline: sim
hook: xdp
interfaces: [eth0]
protocols: [ethernet, ipv4, udp]
stages:
  - filter:
      name: acl
      default: next
      rules:
        - {proto: udp, dport: 53, action: drop}
"""


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--procs", type=int, default=10)
    ap.add_argument("--changes", type=int, default=5)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ebp-fleet-sim-")
    c, p = port(), port()
    url = f"http://127.0.0.1:{c}"
    etcd = subprocess.Popen(["etcd", "--name", "s", "--data-dir", f"{tmp}/d",
                             "--listen-client-urls", url, "--advertise-client-urls", url,
                             "--listen-peer-urls", f"http://127.0.0.1:{p}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                             "--initial-cluster", f"s=http://127.0.0.1:{p}",
                             "--log-level", "warn"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    workers = []
    try:
        e = Etcd(Config.parse(url))
        for _ in range(100):
            try:
                e.range("/x")
                break
            except Exception:
                time.sleep(0.1)
        per = -(-a.agents // a.procs)
        for i in range(0, a.agents, per):
            workers.append(subprocess.Popen([sys.executable, "-m", "ebplane.fleet.sim",
                                             "worker", url, str(i),
                                             str(min(per, a.agents - i))]))
        t0 = time.monotonic()
        while sum(d["alive"] for d in rollout.nodes(e).values()) < a.agents:
            time.sleep(0.2)
        registered = time.monotonic() - t0
        time.sleep(2)
        c0 = cpu(etcd.pid)
        time.sleep(10)
        idle = (cpu(etcd.pid) - c0) / 10
        kw = {"canary": 0, "max_unavailable": a.agents, "timeout": 120}
        first = rollout.apply(e, SPEC, "sim.yaml", {"role": "sim"}, **kw)
        times, cpus = [], []
        for k in range(a.changes):
            c0 = cpu(etcd.pid)
            r = rollout.rules_edit(e, "sim", None, "add",
                                   rule={"proto": "udp", "dport": 1000 + k, "action": "drop"},
                                   **kw)
            assert len(r["done"]) == a.agents, r
            times.append(r["seconds"])
            cpus.append(cpu(etcd.pid) - c0)
        with urllib.request.urlopen(url + "/metrics") as m:
            metrics = {ln.split()[0]: float(ln.split()[1]) for ln in m.read().decode().splitlines()
                       if ln.startswith(("etcd_debugging_mvcc_watcher_total",
                                         "etcd_debugging_mvcc_keys_total",
                                         "etcd_mvcc_db_total_size_in_bytes",
                                         "etcd_debugging_lease_granted_total"))}
        print(json.dumps({"agents": a.agents, "processes": len(workers),
                          "register_all_s": round(registered, 2),
                          "first_apply_s": first["seconds"],
                          "rule_change_s": times, "rule_change_median_s":
                          statistics.median(times),
                          "etcd_cpu_idle_per_s": round(idle, 4),
                          "etcd_cpu_per_change_s": [round(x, 3) for x in cpus],
                          "metrics": metrics}, indent=2))
    finally:
        for w in workers:
            os.kill(w.pid, signal.SIGTERM)
            w.wait(10)
        os.kill(etcd.pid, signal.SIGTERM)
        etcd.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
