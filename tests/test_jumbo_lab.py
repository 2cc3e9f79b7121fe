"""Jumbo frames: veths with MTU 9000 carrying 8000-9000 byte frames through native XDP.

A single-buffer XDP program cannot be attached natively to a veth whose MTU exceeds what
fits in one page (ERANGE; the old behaviour fell back to generic XDP).  ``apply`` builds the
program as ``xdp.frags`` when an interface's MTU needs it; these tests force
``mode: native`` so that a fallback cannot hide a failure, and send kernel-socket traffic
(UDP datagrams of 8000 bytes, a TCP stream with an MSS near 9000) through filter, route,
bridge and redirect.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from pipeline_fixtures import ebp_env  # noqa: F401  (fixture)
from ebplane.lab import traffic
from ebplane.lab.topology import Lab
from ebplane.runtime import pipeline

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ROUTED = """\
lab: ebp-jumbo
nodes:
  client: {}
  dut: {forward: true}
  server: {}
links:
  - {a: client:eth0, b: dut:eth0, mtu: 9000,
     a_addr: [198.18.91.2/24, "2001:db8:91::2/64"], b_addr: [198.18.91.1/24, "2001:db8:91::1/64"]}
  - {a: dut:eth1, b: server:eth0, mtu: 9000,
     a_addr: [198.18.92.1/24, "2001:db8:92::1/64"], b_addr: [198.18.92.2/24, "2001:db8:92::2/64"]}
routes:
  client: [default via 198.18.91.1, default via 2001:db8:91::1]
  server: [default via 198.18.92.1, default via 2001:db8:92::1]
"""

SWITCHED = """\
lab: ebp-jumbosw
nodes: {h1: {}, h2: {}, sw: {}}
links:
  - {a: h1:eth0, b: sw:p1, mtu: 9000, a_addr: [198.18.93.1/24, "2001:db8:93::1/64"]}
  - {a: h2:eth0, b: sw:p2, mtu: 9000, a_addr: [198.18.93.2/24, "2001:db8:93::2/64"]}
"""


def _lab(tmp_path: Path, text: str, tag: str):
    path = tmp_path / f"{tag}.yaml"
    path.write_text(text)
    lab = Lab.load(path, name=f"ebp-{tag}{secrets.token_hex(3)}")
    lab.up()
    return lab


@pytest.fixture
def routed_lab(tmp_path):
    lab = _lab(tmp_path, ROUTED, "jr")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def switched_lab(tmp_path):
    lab = _lab(tmp_path, SWITCHED, "js")
    try:
        yield lab
    finally:
        lab.down()


def _apply(tmp_path: Path, name: str, ns: str, interfaces: str, stages: str):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"pipeline: {name}\nhook: xdp\nmode: native\nnetns: {ns}\n"
                    f"interfaces: {interfaces}\nprotocols: [ethernet, ipv4, ipv6, tcp, udp]\n"
                    f"stages:\n{stages}")
    return pipeline.apply(spec)


def _stage(name: str, kind: str) -> dict:
    return next(s for s in pipeline.stats(name)[0]["stages"] if s["kind"] == kind)


def _native(name: str) -> None:
    st = pipeline.status(name)[0]
    assert all(a["mode"] == "native" for a in st["attachments"]), st["attachments"]
    assert any(n.startswith("multi-buffer:") and "MTU 9000" in n for n in st["notes"])


def _jumbo_traffic(src: str, dst: str, addrs: list[str]) -> None:
    for addr in addrs:
        assert traffic.socket_udp(src, dst, addr, count=20, size=8000) == 20, addr
        assert traffic.socket_tcp(src, dst, addr, size=2_000_000) == 2_000_000, addr


def test_filter_on_jumbo_frames(ebp_env, routed_lab, tmp_path):
    client, server = routed_lab.ns("client"), routed_lab.ns("server")
    res = _apply(tmp_path, "jfilter", routed_lab.ns("dut"), "[eth0]", """\
  - filter:
      name: acl
      default: pass
      rules:
        - {proto: udp, dport: 5001, action: drop}
""")
    try:
        _native(res.name)
        assert traffic.socket_udp(client, server, "198.18.92.2", count=20, size=8000) == 20
        assert traffic.socket_udp(client, server, "198.18.92.2", port=5001, count=10,
                                  size=8000, timeout=0.5) == 0
        acl = _stage(res.name, "filter")
        (rule,) = acl["rules"]
        assert rule["packets"] == 10
        assert rule["bytes"] >= 10 * 8000      # every buffer of the frame is counted
    finally:
        pipeline.detach(res.name)


def test_route_on_jumbo_frames(ebp_env, routed_lab, tmp_path):
    client, server = routed_lab.ns("client"), routed_lab.ns("server")
    res = _apply(tmp_path, "jroute", routed_lab.ns("dut"), "[eth0, eth1]", "  - route: {}\n")
    try:
        _native(res.name)
        for dst in ("198.18.92.2", "2001:db8:92::2"):
            assert traffic.ping(client, dst, count=1) == 1
        before = _stage(res.name, "route")["counts"]["forwarded"]
        _jumbo_traffic(client, server, ["198.18.92.2", "2001:db8:92::2"])
        after = _stage(res.name, "route")["counts"]["forwarded"]
        assert after["packets"] - before["packets"] > 400
        assert (after["bytes"] - before["bytes"]) / (after["packets"] - before["packets"]) > 4000
    finally:
        pipeline.detach(res.name)


def test_bridge_on_jumbo_frames(ebp_env, switched_lab, tmp_path):
    h1, h2 = switched_lab.ns("h1"), switched_lab.ns("h2")
    res = _apply(tmp_path, "jbridge", switched_lab.ns("sw"), "[p1, p2]",
                 "  - bridge: {ports: [p1, p2]}\n")
    try:
        _native(res.name)
        _jumbo_traffic(h1, h2, ["198.18.93.2", "2001:db8:93::2"])
        c = _stage(res.name, "bridge")["counts"]["forwarded"]
        assert c["packets"] > 400 and c["bytes"] / c["packets"] > 4000
    finally:
        pipeline.detach(res.name)


def test_redirect_on_jumbo_frames(ebp_env, switched_lab, tmp_path):
    h1, h2, sw = switched_lab.ns("h1"), switched_lab.ns("h2"), switched_lab.ns("sw")
    names = []
    try:
        for a, b in (("p1", "p2"), ("p2", "p1")):
            names.append(_apply(tmp_path, f"jwire-{a}", sw, f"[{a}]",
                                f"  - redirect: {{to: {b}}}\n").name)
        for n in names:
            _native(n)
        _jumbo_traffic(h1, h2, ["198.18.93.2", "2001:db8:93::2"])
        c = _stage(names[0], "redirect")["counts"]["redirected"]
        assert c["packets"] > 200 and c["bytes"] / c["packets"] > 4000
    finally:
        for n in names:
            pipeline.detach(n)


def test_bridge_counts_jumbo_floods_the_kernel_cannot_broadcast(ebp_env, switched_lab, tmp_path):
    """A devmap broadcast drops multi-buffer frames without a counter: the bridge gives such
    a flood to the kernel and counts it (multi_buffer); single-buffer floods still arrive."""
    h1, h2 = switched_lab.ns("h1"), switched_lab.ns("h2")
    res = _apply(tmp_path, "jflood", switched_lab.ns("sw"), "[p1, p2]",
                 "  - bridge: {ports: [p1, p2]}\n")
    try:
        flow = traffic.Flow("udp", "198.18.93.1", "198.18.93.2", 4000, 5000)
        for size, want in ((2000, 5), (8000, 0)):
            with traffic.Capture(h2, "eth0", flow) as cap:
                traffic.send(h1, "eth0", flow, 5, dst_mac="02:99:00:00:00:01",   # unknown
                             payload=bytes(size))
                assert cap.wait(5, timeout=1.0 if want else 0.3) == want, size
        c = _stage(res.name, "bridge")["counts"]
        assert c["multi_buffer"]["packets"] == 5 and c["flooded"]["packets"] == 5
    finally:
        pipeline.detach(res.name)
