"""A real etcd cluster on loopback for the fleet tests, and a TCP forwarder whose process
the tests stop to cut a node off from etcd (no firewall rule is touched).  Everything here is
started by the fixture and stopped, by pid, in a finally."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

FORWARDER = r"""
import socket, sys, threading
lport, dport = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", lport)); srv.listen(256)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
while True:
    c, _ = srv.accept()
    try:
        u = socket.create_connection(("127.0.0.1", dport))
    except OSError:
        c.close(); continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


class EtcdCluster:
    def __init__(self, tmp: Path, members: int = 3):
        self.tmp = tmp
        self.names = [f"m{i}" for i in range(members)]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client[n]}" for n in self.names]

    def start(self) -> "EtcdCluster":
        initial = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)
        for n in self.names:
            c, p = f"http://127.0.0.1:{self.client[n]}", f"http://127.0.0.1:{self.peer[n]}"
            self.procs[n] = subprocess.Popen(
                ["etcd", "--name", n, "--data-dir", str(self.tmp / f"etcd-{n}"),
                 "--listen-client-urls", c, "--advertise-client-urls", c,
                 "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"ebp-{os.getpid()}", "--log-level", "warn"],
                stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"etcd-{n}.log", "w"))
        deadline = time.monotonic() + 30
        for ep in self.endpoints:
            while True:
                try:
                    with urllib.request.urlopen(ep + "/health", timeout=1) as r:
                        if json.loads(r.read()).get("health") == "true":
                            break
                except (OSError, ValueError):
                    pass
                assert time.monotonic() < deadline, (self.tmp / "etcd-m0.log").read_text()
                time.sleep(0.1)
        return self

    def stop(self) -> None:
        for p in self.procs.values():
            stop(p)
        for n in self.names:
            shutil.rmtree(self.tmp / f"etcd-{n}", ignore_errors=True)


class Forwarder:
    """127.0.0.1:<port> -> 127.0.0.1:<target>; stop() cuts every connection through it."""

    def __init__(self, target: int):
        self.target = target
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Forwarder":
        self.proc = subprocess.Popen([sys.executable, "-c", FORWARDER, str(self.port),
                                      str(self.target)])
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                        timeout=0.5):
                return self
            assert time.monotonic() < deadline, "forwarder did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None
