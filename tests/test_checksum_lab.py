"""Kernel-socket TCP and UDP through every forwarding stage, from veths with their default
offloads.

A fresh veth offloads TX checksums: its sender hands the stack CHECKSUM_PARTIAL frames, whose
TCP/UDP checksum is completed only if the frame stays an skb.  XDP redirect (DEVMAP, CPUMAP,
XDP_TX) turns the frame into an xdp_frame and that state is lost, so the receiver drops it
(``UdpInCsumErrors``).  Frames built by hand carry full checksums and never show it, so these
tests use ordinary sockets.  Each test builds a fresh lab: the offloads start at the veth
defaults, and ``apply`` has to notice and fix them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab_fixtures import fresh_lab
from pipeline_fixtures import ebp_env, stage_counts  # noqa: F401  (fixture)
from ebplane.lab import traffic
from ebplane.net import iface, netns
from ebplane.runtime import pipeline

pytestmark = [pytest.mark.lab, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def route_lab():
    with fresh_lab(EXAMPLES / "route-lab.yaml", "cr") as lab:
        yield lab


@pytest.fixture
def bridge_lab():
    with fresh_lab(EXAMPLES / "bridge-lab.yaml", "cb") as lab:
        yield lab


def _apply_text(tmp_path: Path, name: str, text: str):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text)
    return pipeline.apply(spec)


def _apply_example(tmp_path: Path, example: str, ns: str):
    text = "\n".join(f"netns: {ns}" if line.startswith("netns:") else line
                     for line in (EXAMPLES / example).read_text().splitlines())
    return _apply_text(tmp_path, Path(example).stem, text + "\n")


def _offload(ns: str, dev: str = "eth0") -> bool | None:
    with netns.enter(ns):
        return iface.tx_checksum_offload(dev)


def _no_errors(*namespaces: str) -> None:
    for ns in namespaces:
        assert set(traffic.csum_errors(ns).values()) == {0}, ns


def _exchange(src: str, dst: str, addrs: list[str]) -> None:
    """UDP and TCP (echoed, both directions) for each destination address."""
    for addr in addrs:
        assert traffic.socket_udp(src, dst, addr, count=20, size=300) == 20, addr
        assert traffic.socket_tcp(src, dst, addr, size=300_000) == 300_000, addr


def test_route_carries_socket_traffic_from_default_veths(ebp_env, route_lab, tmp_path):
    client, server = route_lab.ns("client"), route_lab.ns("server")
    assert _offload(client) and _offload(server)          # the veth default
    res = _apply_example(tmp_path, "route.yaml", route_lab.ns("router"))
    try:
        assert not _offload(client) and not _offload(server)
        fixed = [n for n in res.notes if n.startswith("checksums:")]
        assert len(fixed) == 2 and all("tx off" in n for n in fixed)
        _exchange(client, server, ["198.18.2.2", "2001:db8:2::2"])
        _no_errors(client, server)
        assert stage_counts(res.name, kind="route")["forwarded"] > 200   # by XDP, not the kernel
    finally:
        pipeline.detach(res.name)


def test_without_the_fix_the_receiver_drops_redirected_socket_traffic(ebp_env, route_lab,
                                                                     tmp_path):
    """The failure the fix prevents, shown: offload back on, UDP lost with checksum errors."""
    client, server = route_lab.ns("client"), route_lab.ns("server")
    res = _apply_example(tmp_path, "route.yaml", route_lab.ns("router"))
    try:
        assert traffic.ping(client, "198.18.2.2", count=1) == 1   # neighbours resolved
        netns.run(client, ["ethtool", "-K", "eth0", "tx", "on"])
        before = traffic.csum_errors(server)["UdpInCsumErrors"]
        assert traffic.socket_udp(client, server, "198.18.2.2", count=10, timeout=1) == 0
        assert traffic.csum_errors(server)["UdpInCsumErrors"] - before == 10
        # a re-apply notices and fixes it again
        again = pipeline.apply(tmp_path / "route.yaml")
        assert any(n.startswith("checksums: eth0's veth peer eth0") for n in again.notes)
        assert traffic.socket_udp(client, server, "198.18.2.2", count=10) == 10
    finally:
        pipeline.detach(res.name)


def test_steer_carries_socket_traffic(ebp_env, route_lab, tmp_path):
    """CPUMAP builds a new skb without the sender's checksum state, as a redirect does."""
    client, server = route_lab.ns("client"), route_lab.ns("server")
    res = _apply_example(tmp_path, "steer.yaml", route_lab.ns("router"))
    try:
        assert not _offload(client)
        _exchange(client, server, ["198.18.2.2", "2001:db8:2::2"])
        _no_errors(client, server)
        n = stage_counts(res.name, kind="steer")
        assert n["cpu0"] + n["cpu1"] > 200
    finally:
        pipeline.detach(res.name)


def test_bridge_carries_socket_traffic(ebp_env, bridge_lab, tmp_path):
    h1, h2 = bridge_lab.ns("h1"), bridge_lab.ns("h2")
    assert _offload(h1)
    res = _apply_example(tmp_path, "bridge.yaml", bridge_lab.ns("sw"))
    try:
        assert not any(_offload(bridge_lab.ns(h)) for h in ("h1", "h2", "h3"))
        _exchange(h1, h2, ["198.18.70.2", "2001:db8:70::2"])
        _no_errors(h1, h2)
        assert stage_counts(res.name, kind="bridge")["forwarded"] > 200
    finally:
        pipeline.detach(res.name)


def test_redirect_carries_socket_traffic(ebp_env, bridge_lab, tmp_path):
    """Two redirect pipelines wire p1 and p2 of the switch back to back."""
    h1, h2, sw = bridge_lab.ns("h1"), bridge_lab.ns("h2"), bridge_lab.ns("sw")
    names = []
    try:
        for a, b in (("p1", "p2"), ("p2", "p1")):
            res = _apply_text(tmp_path, f"wire-{a}", f"""\
pipeline: wire-{a}
hook: xdp
netns: {sw}
interfaces: [{a}]
protocols: [ethernet]
stages:
  - redirect: {{to: {b}}}
""")
            names.append(res.name)
        assert not _offload(h1) and not _offload(h2)
        _exchange(h1, h2, ["198.18.70.2", "2001:db8:70::2"])
        _no_errors(h1, h2)
        assert stage_counts(names[0], kind="redirect")["redirected"] > 100
        assert stage_counts(names[1], kind="redirect")["redirected"] > 100
    finally:
        for n in names:
            pipeline.detach(n)
