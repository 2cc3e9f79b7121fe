"""AF_XDP from Python (ebplane.xsk) behind an xsk stage, on a veth pair in copy mode."""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from pathlib import Path

import pytest

from pipeline_fixtures import ebp_env, send_frames  # noqa: F401  (fixture)
from ebplane.errors import NotFound
from ebplane.lab import traffic
from ebplane.net import netns
from ebplane.runtime import pipeline
from ebplane.xsk import XskSocket

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
UDP_FRAME = bytes.fromhex("02eb00000002" "02eb00000001" "0800"
                          "4500002e000000004011" "0000" "c6123c01c6123c02"
                          "d4310035001a0000") + bytes(18)


@pytest.fixture
def xsk_pipe(ebp_env, veth_pair, tmp_path):
    """A veth pair in a namespace; an xsk pipeline on veth1.  Yields (ns, spec path)."""
    ns, _a, _b = veth_pair
    spec = tmp_path / "xsk.yaml"
    spec.write_text(f"pipeline: xs\nhook: xdp\nnetns: {ns}\ninterfaces: [veth1]\n"
                    "protocols: [ethernet, ipv4, udp, icmp]\nstages:\n  - xsk: {queue: 0}\n")
    pipeline.apply(spec)
    yield ns


def _counts() -> dict:
    (st,) = [s for s in pipeline.stats("xs")[0]["stages"] if s["kind"] == "xsk"]
    return {k: v["packets"] for k, v in st["counts"].items()}


def test_receives_n_of_n(xsk_pipe):
    with XskSocket("veth1", netns=xsk_pipe) as xs:
        assert xs.mode == "copy"  # veth has no zero-copy AF_XDP
        xs.attach("xs")
        frames = [UDP_FRAME[:-2] + i.to_bytes(2, "big") for i in range(500)]
        send_frames(xsk_pipe, "veth0", frames)
        got: list[bytes] = []
        deadline = time.monotonic() + 3
        while len([f for f in got if f[12:14] == b"\x08\x00"]) < 500 \
                and time.monotonic() < deadline:
            got += xs.recv(timeout=0.2)
        ours = [f for f in got if f[12:14] == b"\x08\x00"]  # not the kernel's IPv6 ND
        assert sorted(ours) == sorted(frames)  # every frame, byte for byte
        assert xs.stats()["rx_dropped"] == 0
    assert _counts()["delivered"] == len(got)


def test_without_socket_frames_go_to_the_kernel(xsk_pipe):
    with netns.enter(xsk_pipe):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)) as cap:
            cap.bind(("veth1", 0))
            cap.settimeout(2)
            send_frames(xsk_pipe, "veth0", [UDP_FRAME], count=5)
            seen = sum(1 for _ in range(5) if cap.recv(2048) == UDP_FRAME)
    assert seen == 5
    assert _counts()["no_socket"] >= 5  # (and whatever the kernel itself sent, IPv6 ND)


def test_send_reaches_the_peer(xsk_pipe):
    with XskSocket("veth1", netns=xsk_pipe) as xs:
        with netns.enter(xsk_pipe):
            cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        with cap:
            cap.bind(("veth0", 0))
            cap.settimeout(2)
            frames = [UDP_FRAME[:-1] + bytes([i]) for i in range(100)]
            assert xs.send(frames) == 100
            got = [cap.recv(2048) for _ in range(100)]
        assert sorted(got) == sorted(frames)


def test_attach_needs_an_xsk_stage(ebp_env):
    with pytest.raises(NotFound, match="not-applied"):
        with XskSocket("lo") as xs:
            xs.attach("not-applied")


def test_receive_rate_is_measured_against_xdp_drop(ebp_env):
    """The benchmark's AF_XDP section on a tiny size: the figures are well formed and every
    frame the socket got is one the generator sent (the rate itself is a benchmark figure:
    `ebplane bench --sections xsk`, see docs/benchmarks.md)."""
    from ebplane.bench.xsk import run_xsk
    r = run_xsk(20_000, 1, lambda _msg: None)
    assert r["mode"] == "copy"
    assert 0 < r["xsk"]["received"][0] <= 20_000
    # the veth may shed a frame when its ring is full: counted, never invented
    assert 0 < r["baseline_xdp_drop"]["counted"][0] <= 20_000
    assert r["xsk"]["mpps"] > 0 and r["ratio_to_baseline"] > 0


def _responder():
    spec = importlib.util.spec_from_file_location("xsk_responder", EXAMPLES / "xsk_responder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_responder_answers_arp_and_ping(xsk_pipe):
    mod = _responder()
    netns.run(xsk_pipe, ["ip", "addr", "add", "198.18.60.1/24", "dev", "veth0"])
    with XskSocket("veth1", netns=xsk_pipe) as xs:
        xs.attach("xs")
        stop = threading.Event()
        sent: list[int] = []
        t = threading.Thread(target=lambda: sent.append(
            mod.serve(xs, bytes.fromhex("02eb000000aa"), bytes([198, 18, 60, 100]), stop)))
        t.start()
        try:
            replies = traffic.ping(xsk_pipe, "198.18.60.100", count=3, timeout=1.0)
        finally:
            stop.set()
            t.join()
    assert replies == 3
    assert sent[0] >= 4  # one ARP reply, three echo replies
    neigh = netns.run(xsk_pipe, ["ip", "neigh", "show", "198.18.60.100"]).stdout
    assert "02:eb:00:00:00:aa" in neigh
