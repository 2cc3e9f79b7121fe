"""Fixtures and helpers shared by the pipeline tests (replay, apply, rules, lab).

Import the fixtures a test module uses by name (``from pipeline_fixtures import ebp_env``).
Every test that touches pipeline state runs with its own ``$EBPLANE_STATE_DIR`` and its own
bpffs pin root (``/sys/fs/bpf/ebp-test-<hex>``), both removed afterwards, so it never meets a
user's pipelines nor another test's; compiled objects go to one cache directory per session
(the compiler caches by content hash, so equal pipelines compile once).
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from ebplane.net import netns as _netns
from pins import private_root

EBPLANE = [sys.executable, "-m", "ebplane.cli.main"]
TEST_BPFFS = Path("/sys/fs/bpf")


def _cache_dir(factory: pytest.TempPathFactory) -> Path:
    d = factory.getbasetemp() / "ebplane-cache"
    d.mkdir(exist_ok=True)
    return d


@contextlib.contextmanager
def _environment(state: Path, cache: Path) -> Iterator[Path]:
    """Point ebplane's state, pin root and compile cache at throw-away places; afterwards
    detach whatever pipeline is still applied and remove the pin root."""
    root = private_root()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBPLANE_STATE_DIR", str(state))
        mp.setenv("EBPLANE_BPFFS_ROOT", str(root))
        mp.setenv("EBPLANE_CACHE_DIR", str(cache))
        try:
            yield root
        finally:
            from ebplane.runtime import pipeline
            from ebplane.runtime.state import all_names
            for name in all_names():
                with contextlib.suppress(Exception):
                    pipeline.detach(name)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ebp_env(tmp_path, tmp_path_factory) -> Iterator[Path]:
    """A private state dir and bpffs root for one test; yields the pin root."""
    with _environment(tmp_path / "state", _cache_dir(tmp_path_factory)) as root:
        yield root


@pytest.fixture(scope="module")
def ebp_module_env(tmp_path_factory) -> Iterator[Path]:
    """:func:`ebp_env` for module-scoped fixtures (replayers built once per module)."""
    with _environment(tmp_path_factory.mktemp("state"), _cache_dir(tmp_path_factory)) as root:
        yield root


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ebplane ARGS`` in a subprocess (the environment set by the fixtures applies)."""
    proc = subprocess.run([*EBPLANE, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"ebplane {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def cli_json(*args: str):
    return json.loads(cli(*args, "--json").stdout)


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def rule_counts(stats: dict, stage: str = "acl") -> list[int]:
    """Packets per rule, in rule order, of one filter in a ``stats()`` entry."""
    for st in stats["stages"]:
        if st["stage"] == stage:
            return [r["packets"] for r in st["rules"]]
    raise KeyError(stage)


def filter_stats(stats: dict, stage: str = "acl") -> dict:
    return next(st for st in stats["stages"] if st["stage"] == stage)


# -- traffic into a veth ----------------------------------------------------------------------

def mac(ns: str, ifname: str) -> str:
    from ebplane.net import iface
    with _netns.enter(ns):
        return iface.info(ifname).mac


def _send(sock: socket.socket, frame: bytes) -> None:
    try:
        sock.send(frame)
    except OSError as e:
        # a program at the device's tc egress dropped it: the frame was sent and decided
        if e.errno != errno.ENOBUFS:
            raise


def send_frames(ns: str, ifname: str, frames: list[bytes], count: int = 1) -> int:
    """Write each frame ``count`` times to ``ifname`` of ``ns`` (raw AF_PACKET socket)."""
    with _netns.enter(ns):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
            sock.bind((ifname, 0))
            for _ in range(count):
                for fr in frames:
                    _send(sock, fr)
    return count * len(frames)


def dropped(ns: str, ifname: str) -> int:
    """Frames the device dropped on receive or transmit (a veth whose ring was full)."""
    out = _netns.run(ns, ["ip", "-j", "-s", "link", "show", ifname]).stdout
    st = json.loads(out)[0]["stats64"]
    return st["rx"]["dropped"] + st["tx"]["dropped"]


@dataclass
class Sender:
    """A thread that writes one frame to an interface until stopped; ``sent`` counts them.

    Sending in small bursts with a yield in between keeps the veth's ring from overflowing,
    so every frame sent is seen by the receiving program.
    """

    ns: str
    ifname: str
    frame: bytes
    burst: int = 16
    sent: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with _netns.enter(self.ns):
                with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
                    sock.bind((self.ifname, 0))
                    while not self._stop.is_set():
                        for _ in range(self.burst):
                            _send(sock, self.frame)
                            self.sent += 1
                        self._stop.wait(0.0005)
        except BaseException as e:  # reported by stop()
            self.error = e

    def __enter__(self) -> "Sender":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None:
            raise self.error
        return self.sent
