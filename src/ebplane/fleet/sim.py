"""Simulated fleet agents: the watch, converge and status path of :class:`FleetNode` without
the kernel (a :class:`RecordingApplier`), many per process (one thread per agent, each with
its own HTTP session, watch stream and lease).  ``python -m ebplane.fleet.sim worker URL
FIRST COUNT`` runs agents sim-FIRST .. sim-(FIRST+COUNT-1) until killed; the measurement
is benchmarks/fleet_sim.py."""

from __future__ import annotations

import sys
import threading

from ebplane.fleet.etcd import Config, Etcd
from ebplane.fleet.node import FleetNode, RecordingApplier


def worker(url: str, first: int, count: int, ttl: int = 10) -> None:
    nodes = []
    for i in range(first, first + count):
        n = FleetNode(Etcd(Config.parse(url)), f"sim-{i:04d}", {"role": "sim"},
                      RecordingApplier(), None, ttl=ttl)
        threading.Thread(target=n.run, daemon=True).start()
        nodes.append(n)
    threading.Event().wait()


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
