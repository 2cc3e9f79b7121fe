"""Forwarding stages with real traffic between lab namespaces.

Route: client -- router -- server (examples/route-lab.yaml), the router forwarding with XDP;
the receiving side checks TTL / hop limit and checksums, and the kernel's fallbacks (missing
neighbour, TTL 1, MTU) are seen from the client.  Bridge: three hosts behind a switch
namespace (examples/bridge-lab.yaml).  Steer: flows spread over both CPUs.
"""

from __future__ import annotations

import json
import secrets
import select
import socket
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from pipeline_fixtures import cli, ebp_env, send_frames  # noqa: F401  (fixture)
from ebplane.lab import traffic
from ebplane.lab.topology import Lab
from ebplane.net import iface, netdev, netns
from ebplane.runtime import pipeline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def route_lab():
    lab = Lab.load(EXAMPLES / "route-lab.yaml", name=f"ebp-tr{secrets.token_hex(3)}")
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def bridge_lab():
    lab = Lab.load(EXAMPLES / "bridge-lab.yaml", name=f"ebp-tb{secrets.token_hex(3)}")
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def _apply(tmp_path: Path, example: str, ns: str) -> str:
    """Apply an example spec, pointed at the lab's (privately named) namespace."""
    text = (EXAMPLES / example).read_text()
    text = "\n".join(f"netns: {ns}" if line.startswith("netns:") else line
                     for line in text.splitlines())
    spec = tmp_path / example
    spec.write_text(text + "\n")
    return pipeline.apply(spec).name


def _counts(name: str, stage: str) -> dict[str, int]:
    (st,) = [s for s in pipeline.stats(name)[0]["stages"] if s["stage"] == stage]
    return {k: v["packets"] for k, v in st["counts"].items()}


class Sniffer:
    """Frames arriving on an interface (raw socket opened before sending)."""

    def __init__(self, ns: str, ifname: str):
        with netns.enter(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.bind((ifname, 0))

    def frames(self, want, n: int, timeout: float = 2.0) -> list[bytes]:
        """Up to ``n`` incoming frames for which ``want(frame)`` holds."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and (left := deadline - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                break
            data, addr = self.sock.recvfrom(65536)
            if addr[2] != traffic.PACKET_OUTGOING and want(data):
                got.append(data)
        return got

    def close(self) -> None:
        self.sock.close()


def _mac(ns: str, dev: str) -> str:
    with netns.enter(ns):
        return iface.info(dev).mac


def _peer_mac(lab: Lab) -> tuple[str, str]:
    return _mac(lab.ns("client"), "eth0"), _mac(lab.ns("router"), "eth0")


def _udp4(lab: Lab, ttl: int = 64, size: int = 32, df: bool = False, sport: int = 4000):
    src, dst = _peer_mac(lab)
    return bytes(Ether(src=src, dst=dst) / IP(src="198.18.1.2", dst="198.18.2.2", ttl=ttl,
                                              flags="DF" if df else 0)
                 / UDP(sport=sport, dport=5000) / (b"e" * size))


def _udp6(lab: Lab, hlim: int = 64, sport: int = 4000):
    src, dst = _peer_mac(lab)
    return bytes(Ether(src=src, dst=dst) / IPv6(src="2001:db8:1::2", dst="2001:db8:2::2",
                                                hlim=hlim) / UDP(sport=sport, dport=5000)
                 / (b"s" * 32))


@pytest.fixture
def routed(ebp_env, route_lab, tmp_path):
    """The route pipeline on the router; neighbours resolved by a first ping each way."""
    name = _apply(tmp_path, "route.yaml", route_lab.ns("router"))
    for dst in ("198.18.2.2", "2001:db8:2::2"):
        assert traffic.ping(route_lab.ns("client"), dst, count=1) == 1
    yield name
    pipeline.detach(name)


@pytest.mark.parametrize("family", [4, 6])
def test_route_forwards_with_ttl_and_checksums(route_lab, routed, family):
    before = _counts(routed, "route")["forwarded"]
    sniff = Sniffer(route_lab.ns("server"), "eth0")
    try:
        frames = [(_udp4 if family == 4 else _udp6)(route_lab, sport=4000 + i) for i in range(50)]
        send_frames(route_lab.ns("client"), "eth0", frames)
        layer = IP if family == 4 else IPv6
        got = sniff.frames(lambda f: layer in Ether(f) and UDP in Ether(f)
                           and Ether(f)[UDP].dport == 5000, 50)
    finally:
        sniff.close()
    assert len(got) == 50
    for f in got:
        pkt = Ether(f)
        assert pkt.src == _mac(route_lab.ns("router"), "eth1")
        assert pkt.dst == _mac(route_lab.ns("server"), "eth0")
        if family == 4:
            assert pkt[IP].ttl == 63
            clean = pkt.copy()
            del clean[IP].chksum, clean[UDP].chksum
            rebuilt = Ether(bytes(clean))
            assert rebuilt[IP].chksum == pkt[IP].chksum      # header checksum valid
            assert rebuilt[UDP].chksum == pkt[UDP].chksum    # payload intact
        else:
            assert pkt[IPv6].hlim == 63
            clean = pkt.copy()
            del clean[UDP].chksum
            assert Ether(bytes(clean))[UDP].chksum == pkt[UDP].chksum
    assert _counts(routed, "route")["forwarded"] - before >= 50   # by XDP, not the kernel


def test_route_missing_neighbour_goes_to_the_kernel(route_lab, routed):
    netns.run(route_lab.ns("router"), ["ip", "neigh", "flush", "dev", "eth1"])
    before = _counts(routed, "route")["no_neigh"]
    sniff = Sniffer(route_lab.ns("server"), "eth0")
    try:
        send_frames(route_lab.ns("client"), "eth0", [_udp4(route_lab, sport=4999)])
        got = sniff.frames(lambda f: UDP in Ether(f) and Ether(f)[UDP].sport == 4999, 1)
    finally:
        sniff.close()
    assert len(got) == 1                    # the kernel resolved the neighbour and forwarded
    assert _counts(routed, "route")["no_neigh"] == before + 1


def _icmp_from_router(lab: Lab, frame: bytes, icmp_type: int, code: int) -> int:
    sniff = Sniffer(lab.ns("client"), "eth0")
    try:
        send_frames(lab.ns("client"), "eth0", [frame])
        return len(sniff.frames(lambda f: ICMP in Ether(f) and Ether(f)[ICMP].type == icmp_type
                                and Ether(f)[ICMP].code == code, 1))
    finally:
        sniff.close()


def test_route_ttl_1_gets_time_exceeded_from_the_kernel(route_lab, routed):
    before = _counts(routed, "route")["ttl_exceeded"]
    assert _icmp_from_router(route_lab, _udp4(route_lab, ttl=1), 11, 0) == 1
    assert _counts(routed, "route")["ttl_exceeded"] == before + 1


def test_route_mtu_overflow_goes_to_the_kernel(route_lab, routed):
    c = _counts(routed, "route")
    # DF set: the kernel answers "fragmentation needed" (MTU 1280 towards the server)
    assert _icmp_from_router(route_lab, _udp4(route_lab, size=1400, df=True), 3, 4) == 1
    # DF clear: the kernel fragments; both fragments arrive
    sniff = Sniffer(route_lab.ns("server"), "eth0")
    try:
        send_frames(route_lab.ns("client"), "eth0", [_udp4(route_lab, size=1400)])
        frags = sniff.frames(lambda f: IP in Ether(f) and Ether(f)[IP].proto == 17
                             and Ether(f)[IP].src == "198.18.1.2", 2)
    finally:
        sniff.close()
    assert len(frags) == 2 and any(Ether(f)[IP].flags.MF for f in frags)
    after = _counts(routed, "route")
    assert (after["mtu"], after["frag"]) == (c["mtu"] + 1, c["frag"] + 1)


def test_route_apply_made_the_egresses_capable(route_lab, routed):
    for node in ("client", "server"):       # the peers got a pass-through program
        with netns.enter(route_lab.ns(node)):
            assert iface.info("eth0").xdp_prog_id is not None
    with netns.enter(route_lab.ns("router")):
        for dev in ("eth0", "eth1"):
            assert netdev.xdp_features(iface.ifindex(dev)).redirect_target
    assert any("redirects to eth0, eth1" in n for n in pipeline.status(routed)[0]["notes"])


def test_steer_spreads_flows_over_cpus(ebp_env, route_lab, tmp_path):
    name = _apply(tmp_path, "steer.yaml", route_lab.ns("router"))
    try:
        assert traffic.ping(route_lab.ns("client"), "198.18.2.2", count=1) == 1
        sniff = Sniffer(route_lab.ns("server"), "eth0")
        try:
            frames = [_udp4(route_lab, sport=20000 + i) for i in range(64)]
            send_frames(route_lab.ns("client"), "eth0", frames, count=2)
            got = sniff.frames(lambda f: UDP in Ether(f) and Ether(f)[UDP].dport == 5000, 128)
        finally:
            sniff.close()
        assert len(got) == 128                # the kernel stack forwarded every one
        n = _counts(name, "steer")
        assert n["no_cpu"] == 0 and n["cpu0"] + n["cpu1"] >= 128
        assert n["cpu0"] >= 16 and n["cpu1"] >= 16
    finally:
        pipeline.detach(name)


# -- bridge ------------------------------------------------------------------------------------

@pytest.fixture
def bridged(ebp_env, bridge_lab, tmp_path):
    name = _apply(tmp_path, "bridge.yaml", bridge_lab.ns("sw"))
    yield name
    pipeline.detach(name)


def test_bridge_learns_and_forwards(bridge_lab, bridged):
    assert traffic.ping(bridge_lab.ns("h1"), "198.18.70.2", count=3) == 3
    assert traffic.ping(bridge_lab.ns("h3"), "2001:db8:70::2", count=2) == 2
    n = _counts(bridged, "bridge")
    assert n["forwarded"] >= 5 and n["broadcast"] >= 1 and n["learned"] >= 3
    fdb = next(s for s in pipeline.stats(bridged)[0]["stages"] if s["kind"] == "bridge")["fdb"]
    where = {e["mac"]: e["port"] for e in fdb}
    for host, port in (("h1", "p1"), ("h2", "p2"), ("h3", "p3")):
        assert where[_mac(bridge_lab.ns(host), "eth0")] == port


def test_bridge_floods_broadcast_to_every_port_but_the_ingress(bridge_lab, bridged):
    marker = b"ebplane-flood-" + secrets.token_bytes(4)
    frame = bytes(Ether(src=_mac(bridge_lab.ns("h1"), "eth0"), dst="ff:ff:ff:ff:ff:ff")
                  / ARP(op=1, psrc="198.18.70.1", pdst="198.18.70.250") / marker)
    sniffers = {h: Sniffer(bridge_lab.ns(h), "eth0") for h in ("h1", "h2", "h3")}
    try:
        send_frames(bridge_lab.ns("h1"), "eth0", [frame])
        seen = {h: len(s.frames(lambda f: marker in f, 2, timeout=0.5))
                for h, s in sniffers.items()}
    finally:
        for s in sniffers.values():
            s.close()
    assert seen == {"h1": 0, "h2": 1, "h3": 1}
    # unknown unicast is flooded the same way
    ghost = bytes(Ether(src=_mac(bridge_lab.ns("h2"), "eth0"), dst="02:eb:de:ad:00:01")
                  / IP(src="198.18.70.2", dst="198.18.70.99") / UDP() / marker)
    sniffers = {h: Sniffer(bridge_lab.ns(h), "eth0") for h in ("h1", "h3")}
    try:
        before = _counts(bridged, "bridge")["flooded"]
        send_frames(bridge_lab.ns("h2"), "eth0", [ghost])
        seen = {h: len(s.frames(lambda f: marker in f and UDP in Ether(f), 1, timeout=1))
                for h, s in sniffers.items()}
    finally:
        for s in sniffers.values():
            s.close()
    assert seen == {"h1": 1, "h3": 1}
    assert _counts(bridged, "bridge")["flooded"] == before + 1


# -- the service chain -------------------------------------------------------------------------

def test_service_chain_runs_from_one_command(ebp_env):
    proc = cli("chain", "--json", "--count", "10")
    d = json.loads(proc.stdout)
    assert d["ping"]["answered"] == 3
    assert d["flows"]["udp 5000 (allowed)"]["received"] == 10
    assert d["flows"]["udp 9 (blocked by fw)"]["received"] == 0
    fw, router = d["hops"]["chain-fw"], d["hops"]["chain-router"]
    acl = next(s for s in fw["stages"] if s["kind"] == "filter")
    assert [r["packets"] for r in acl["rules"]] == [10, 10]
    wire = next(s for s in fw["stages"] if s["kind"] == "bridge")["counts"]
    assert wire["forwarded"]["packets"] >= 10
    route = next(s for s in router["stages"] if s["kind"] == "route")["counts"]
    assert route["forwarded"]["packets"] >= 10
    assert not Lab.recorded() or "ebp-chain" not in Lab.recorded()   # removed again


FOREIGN_C = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp")
int someone_elses(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_failed_apply_takes_back_the_pass_through_programs(ebp_env, tmp_path):
    """The route stage puts a pass-through program on its egresses' veth peers before it
    attaches; when the attach then fails (a foreign program holds eth1), the apply undoes
    that too: the peers run no XDP program afterwards, as before."""
    from ebplane.errors import EbplaneError
    from ebplane.kernel.programs import BpfObject
    from ebplane.net import attach
    from ebplane.toolchain.clang import compile_c
    lab = Lab.load(EXAMPLES / "route-lab.yaml", name=f"ebp-tf{secrets.token_hex(3)}")
    lab.up()
    try:
        res = compile_c(FOREIGN_C, name="someone_elses")
        with BpfObject.open_bytes(res.elf, "someone_elses") as obj:
            obj.load()
            with netns.enter(lab.ns("router")):
                attach.attach_xdp(obj.programs["someone_elses"].fd, "eth1", mode="native",
                                  use_link=False)
        with pytest.raises(EbplaneError, match="someone_elses"):
            _apply(tmp_path, "route.yaml", lab.ns("router"))
        for node in ("client", "server"):
            with netns.enter(lab.ns(node)):
                assert iface.info("eth0").xdp_prog_id is None, node
        with netns.enter(lab.ns("router")):
            assert iface.info("eth0").xdp_prog_id is None  # nothing of ours was left
    finally:
        lab.down()
