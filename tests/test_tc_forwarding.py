"""Forwarding at TC under BPF_PROG_TEST_RUN: route, redirect and bridge at tc-ingress and
tc-egress, on constructed packets (truncated ones included).

The programs run in a throw-away "host" namespace with routes, neighbours and veths; one veth
(c0) has its peer (eth0) in a second namespace, a "container", so it is a bpf_redirect_peer
target.  test_run does not send a redirected skb (except the clones of bridge flooding): the
verdict is TC_ACT_REDIRECT and the counters say which helper the program chose.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from pipeline_fixtures import ebp_module_env  # noqa: F401  (fixture)
from ebplane.codegen.forwarding import OUTCOMES_TC, map_name, outcomes
from ebplane.errors import SpecError
from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.libbpf import SkBuff
from ebplane.net import iface, netns
from ebplane.runtime.pcap import write_pcap
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec

NEXT_HOP_MAC = "02:00:00:00:00:02"
CONTAINER_MAC = "02:00:00:00:00:c0"
HOST_MAC = "02:00:00:00:00:09"


def _setup(container: str) -> list[str]:
    return [
        "sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1",
        "ip link add up0 type veth peer name up1", "ip link set up0 up", "ip link set up1 up",
        "ip addr add 198.18.10.1/24 dev up0", "ip addr add 2001:db8:10::1/64 dev up0 nodad",
        f"ip neigh add 198.18.10.2 lladdr {NEXT_HOP_MAC} dev up0 nud permanent",
        f"ip neigh add 2001:db8:10::2 lladdr {NEXT_HOP_MAC} dev up0 nud permanent",
        "ip route add 198.18.20.0/24 via 198.18.10.2",
        "ip route add 198.18.30.0/24 via 198.18.10.3",        # no neighbour entry
        "ip route add blackhole 198.18.40.0/24",
        "ip route add 198.18.50.0/24 via 198.18.10.2 mtu lock 1000",
        "ip -6 route add 2001:db8:20::/64 via 2001:db8:10::2",
        "ip -6 route add 2001:db8:30::/64 via 2001:db8:10::3",  # no neighbour entry
        # the "container": c0 here, its peer eth0 in another namespace
        f"ip link add c0 type veth peer name eth0 netns {container}", "ip link set c0 up",
        "ip addr add 198.18.60.1/24 dev c0", "ip addr add 2001:db8:60::1/64 dev c0 nodad",
        f"ip neigh add 198.18.60.2 lladdr {CONTAINER_MAC} dev c0 nud permanent",
        f"ip neigh add 2001:db8:60::2 lladdr {CONTAINER_MAC} dev c0 nud permanent",
        *[c for i in range(2) for c in (f"ip link add p{i} type veth peer name q{i}",
                                        f"ip link set p{i} up", f"ip link set q{i} up")],
    ]


@pytest.fixture(scope="module")
def host(ebp_module_env):
    with netns.temporary() as ct, netns.temporary() as ns:
        for cmd in _setup(ct.name):
            netns.run(ns.name, cmd.split())
        netns.run(ct.name, "ip link set eth0 up".split())
        with netns.enter(ns.name):
            for dev in ("up0", "c0", "p0", "p1"):
                iface.wait_up(dev)
        yield ns.name


def _spec(stage: str, hook: str = "tc-ingress",
          protocols: str = "ethernet, vlan, ipv4, ipv6, tcp, udp") -> str:
    return f"pipeline: tcf\nhook: {hook}\nprotocols: [{protocols}]\nstages:\n  - {stage}\n"


class Run:
    """A replayer inside the host namespace; frames run as received on a chosen port."""

    def __init__(self, ns: str, spec_text: str):
        self.ns = ns
        self.spec = parse_spec(spec_text, "tcf.yaml")
        with netns.enter(ns):
            self.rp = Replayer(self.spec)

    def __call__(self, frame, on: str = "up0", *, to_me: bool = True):
        """Run ``frame`` as received on ``on``; ``to_me``: addressed to ``on``'s MAC (a
        router routes only those; the bridge tests send their own MACs)."""
        data = bytes(frame)
        with netns.enter(self.ns):
            idx = iface.ifindex(on)
            if to_me:
                data = bytes.fromhex(iface.info(on).mac.replace(":", "")) + data[6:]
            res = self.rp.program.test_run(data, ctx=SkBuff(ifindex=idx, ingress_ifindex=idx))
        return res.verdict, res.data

    def counts(self, stage: str) -> dict[str, int]:
        st = self.spec.stage(stage)
        m = self.rp.built.map(map_name(st, "counters")).with_codecs(U32, COUNT)
        return {name: m.lookup_sum(i).packets
                for i, name in enumerate(outcomes(st, self.spec.hook))}

    def close(self):
        self.rp.close()


@pytest.fixture
def run(host):
    made = []

    def make(stage: str, hook: str = "tc-ingress", **kw) -> Run:
        r = Run(host, _spec(stage, hook, **kw))
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def _mac(ns: str, dev: str) -> str:
    with netns.enter(ns):
        return iface.info(dev).mac


def _ipv4_checksum_ok(hdr: bytes) -> bool:
    total = sum(int.from_bytes(hdr[i:i + 2], "big") for i in range(0, len(hdr), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def v4(dst: str, ttl: int = 64, size: int = 20, df: bool = False):
    return (Ether(src=HOST_MAC, dst="02:00:00:00:00:01")
            / IP(src="198.18.1.2", dst=dst, ttl=ttl, flags="DF" if df else 0)
            / UDP(sport=1000, dport=2000) / (b"x" * size))


def v6(dst: str, hlim: int = 64, size: int = 20):
    return (Ether(src=HOST_MAC, dst="02:00:00:00:00:01")
            / IPv6(src="2001:db8:1::2", dst=dst, hlim=hlim) / UDP(sport=1, dport=2)
            / (b"x" * size))


def test_route_at_tc_ingress_chooses_peer_neigh_or_the_kernel(host, run):
    r = run("route: {}")
    c0_mac = _mac(host, "c0")

    # into the container: MACs of the FIB result, TTL down, checksum right, peer redirect
    verdict, out = r(v4("198.18.60.2"))
    assert verdict == "TC_ACT_REDIRECT"
    o = Ether(out)
    assert (o.dst, o.src, o[IP].ttl) == (CONTAINER_MAC, c0_mac, 63)
    assert _ipv4_checksum_ok(out[14:34])

    # another egress (a veth whose peer is here, like an uplink): the neighbour layer
    # writes the MACs, so the program leaves them
    verdict, out = r(v4("198.18.20.7"))
    o = Ether(out)
    assert verdict == "TC_ACT_REDIRECT" and o.dst == _mac(host, "up0") and o[IP].ttl == 63
    assert _ipv4_checksum_ok(out[14:34])

    # no neighbour: bpf_redirect_neigh resolves it, the packet is not left to the stack
    verdict, out = r(v4("198.18.30.5"))
    assert verdict == "TC_ACT_REDIRECT" and Ether(out)[IP].ttl == 63

    for frame in (v4("198.18.40.1"), v4("198.18.10.1"), v4("198.18.20.7", ttl=1),
                  v4("198.18.50.1", size=1200, df=True), v4("198.18.50.1", size=1200)):
        verdict, out = r(frame)
        assert verdict == "TC_ACT_OK" and out[6:] == bytes(frame)[6:]   # the kernel's, untouched

    assert r(Ether(dst="ff:ff:ff:ff:ff:ff", src=HOST_MAC) / ARP())[0] == "TC_ACT_OK"
    assert r.counts("route") == {"forwarded": 1, "peer": 1, "neigh": 1, "ttl_exceeded": 1,
                                 "local": 1, "blackhole": 1, "frag": 1, "mtu": 1,
                                 "not_ip": 1, "other": 0, "malformed": 0}


def test_route_leaves_frames_for_other_macs_to_the_kernel(host, run):
    """A router routes what is addressed to it: a frame for another MAC (a promiscuous port,
    a macvlan's lower device) goes on untouched."""
    r = run("route: {}")
    frame = bytes(v4("198.18.60.2"))
    verdict, out = r(frame, to_me=False)
    assert verdict == "TC_ACT_OK" and out == frame
    assert r.counts("route")["other"] == 1 and r.counts("route")["peer"] == 0


def test_route_ipv6_at_tc_ingress(host, run):
    r = run("route: {}")
    verdict, out = r(v6("2001:db8:60::2"))
    o = Ether(out)
    assert verdict == "TC_ACT_REDIRECT"
    assert (o.dst, o.src, o[IPv6].hlim) == (CONTAINER_MAC, _mac(host, "c0"), 63)
    assert o[UDP].chksum == Ether(bytes(v6("2001:db8:60::2")))[UDP].chksum  # L4 untouched
    verdict, out = r(v6("2001:db8:20::1"))
    assert verdict == "TC_ACT_REDIRECT" and Ether(out)[IPv6].hlim == 63
    assert r(v6("2001:db8:30::1"))[0] == "TC_ACT_REDIRECT"
    assert r(v6("2001:db8:20::1", hlim=1))[0] == "TC_ACT_OK"
    assert r(v6("fe80::1"))[0] == "TC_ACT_OK"
    c = r.counts("route")
    assert (c["peer"], c["forwarded"], c["neigh"], c["ttl_exceeded"], c["local"]) == (1, 1, 1, 1, 1)


def test_route_at_tc_egress_never_uses_the_peer_path(host, run):
    """bpf_redirect_peer works from tc ingress only: at egress every route goes through the
    neighbour layer, the container's included."""
    r = run("route: {}", hook="tc-egress")
    verdict, out = r(v4("198.18.60.2"), on="p0")
    assert verdict == "TC_ACT_REDIRECT" and Ether(out).dst == _mac(host, "p0")
    assert r.counts("route")["forwarded"] == 1 and r.counts("route")["peer"] == 0


def _ihl15(frame) -> bytes:
    """The frame with an IPv4 header that claims 60 bytes (IHL 15) but has options missing."""
    f = bytearray(bytes(frame))
    f[14] = 0x4F
    return bytes(f[:40])


def test_truncated_and_malformed_frames_go_to_the_kernel(host, run):
    r = run("route: {}")
    for frame in (_ihl15(v4("198.18.60.2")), _ihl15(v4("198.18.20.1"))):
        verdict, out = r(frame)
        assert verdict == "TC_ACT_OK" and out[6:] == frame[6:]
    assert r.counts("route")["malformed"] == 2
    # cut inside the IPv4 header: test_run of a TC program refuses it; replay says so
    d = r.rp.run(0, bytes(v4("198.18.60.2"))[:30])
    assert d.verdict is None and d.reason == "skipped" and "IP header" in d.detail
    b = run("bridge: {ports: [p0, p1, c0]}")
    runt = bytes(Ether(src="02:00:00:00:00:ab", dst="ff:ff:ff:ff:ff:ff", type=0x88B5))
    assert b(runt, on="p0", to_me=False)[0] == "TC_ACT_REDIRECT"   # a bare header: flooded
    assert b.counts("bridge")["broadcast"] == 1


def test_redirect_at_tc(host, run):
    r = run("redirect: {to: c0}")
    assert r(v4("198.18.99.1"))[0] == "TC_ACT_REDIRECT"
    assert r.counts("redirect") == {"redirected": 0, "no_port": 0, "runt": 0, "peer": 1}
    r = run("redirect: {to: p0}")
    assert r(v4("198.18.99.1"))[0] == "TC_ACT_REDIRECT"
    assert r.counts("redirect")["redirected"] == 1
    r = run("redirect: {to: c0}", hook="tc-egress")
    assert r(v4("198.18.99.1"), on="p1")[0] == "TC_ACT_REDIRECT"
    assert r.counts("redirect")["redirected"] == 1 and r.counts("redirect")["peer"] == 0


def test_bridge_at_tc_ingress_learns_floods_and_forwards(host, run):
    r = run("bridge: {ports: [p0, p1, c0]}")
    a = Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP() / UDP()
    b = Ether(src="02:00:00:00:00:bb", dst="02:00:00:00:00:aa") / IP() / UDP()
    c = Ether(src="02:00:00:00:00:cc", dst="02:00:00:00:00:aa") / IP() / UDP()
    assert r(a, on="p0", to_me=False)[0] == "TC_ACT_REDIRECT"          # unknown: flooded (clones)
    assert r(b, on="c0", to_me=False)[0] == "TC_ACT_REDIRECT"          # known: out of p0
    assert r(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:cc") / IP(), on="p0", to_me=False)[0] \
        == "TC_ACT_REDIRECT"                               # flooded again (cc unknown)
    r(c, on="c0", to_me=False)                                          # cc learned on c0
    assert r(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:cc") / IP(), on="p0", to_me=False)[0] \
        == "TC_ACT_REDIRECT"                               # into the container: peer
    assert r(Ether(src="02:00:00:00:00:dd", dst="02:00:00:00:00:aa") / IP(), on="p0", to_me=False)[0] \
        == "TC_ACT_SHOT"                                   # back where it came from
    assert r(v4("198.18.1.1"), on="up0")[0] == "TC_ACT_OK"  # not a port: next, then pass
    n = r.counts("bridge")
    assert (n["flooded"], n["forwarded"], n["peer"], n["filtered"], n["not_port"]) == (2, 2, 1, 1, 1)
    assert n["learned"] == 4


def test_spec_hooks_of_the_forwarding_kinds():
    for kind in ("route: {}", "redirect: {to: eth1}", "bridge: {ports: [a, b]}"):
        parse_spec(_spec(kind), "x.yaml")
    parse_spec(_spec("route: {}", hook="tc-egress"), "x.yaml")
    with pytest.raises(SpecError, match="works at hook xdp or tc-ingress only"):
        parse_spec(_spec("bridge: {ports: [a, b]}", hook="tc-egress"), "x.yaml")
    for kind in ("tx: {}", "steer: {cpus: [0]}", "xsk: {}"):
        with pytest.raises(SpecError, match="works at hook xdp only"):
            parse_spec(_spec(kind), "x.yaml")


def test_tc_slot_numbers_are_generated_from_outcomes_tc():
    """forward_tc.h has no slot numbers of its own: a TC program gets them from OUTCOMES_TC
    (bridge and redirect: the XDP slots, same numbers, then peer), and every slot name the
    header uses is among them."""
    import re
    from ebplane.codegen.pipeline import generate
    for stage in ("route: {}", "bridge: {ports: [a, b]}", "redirect: {to: a}"):
        src = generate(parse_spec(_spec(stage), "x.yaml")).source
        defines = dict(re.findall(r"^#define (EBP_(?:TRT|BR|RD|TC)_\w+) (\d+)$", src, re.M))
        for kind, prefix in (("route", "TRT"), ("bridge", "BR"), ("redirect", "RD")):
            for i, name in enumerate(OUTCOMES_TC[kind]):
                assert defines[f"EBP_{prefix}_{name.upper()}"] == str(i), (stage, kind, name)
        assert defines["EBP_TRT_SLOTS"] == str(len(OUTCOMES_TC["route"]))
        header = (Path(__file__).resolve().parent.parent
                  / "src/ebplane/stages/forward/forward_tc.h").read_text()
        assert not re.search(r"enum ebp_tc_\w+_slot|#define EBP_(TRT|BR|RD)_", header)
        used = set(re.findall(r"\bEBP_(?:TRT|BR|RD|TC)_[A-Z_]+\b", header)) - {"EBP_TC_PORT_"}
        assert used and used <= set(defines), used - set(defines)


def test_ebplane_replay_at_tc_ingress(host, tmp_path):
    """The command: constructed packets, a truncated one included, as received on up0."""
    spec = tmp_path / "tcf.yaml"
    spec.write_text(_spec("route: {}"))
    pcap = tmp_path / "in.pcap"
    up0 = _mac(host, "up0")
    frames = [v4("198.18.60.2"), v4("198.18.20.1"), v4("198.18.40.1"), v6("2001:db8:60::2"),
              Ether(_ihl15(v4("198.18.60.2"))), Ether(bytes(v4("198.18.60.2"))[:24]),
              Raw(bytes(v4("198.18.60.2"))[:10])]
    for f in frames[:-1]:
        f.dst = up0                       # addressed to the router's port
    write_pcap(pcap, [bytes(f) for f in frames])  # Ethernet, the runt included
    exe = Path(sys.executable).with_name("ebplane")
    out = subprocess.run(["nsenter", f"--net=/run/netns/{host}", str(exe), "replay", str(spec),
                          "--pcap", str(pcap), "--ingress", "up0", "--json"],
                         capture_output=True, text=True, check=True).stdout
    got = [json.loads(line) for line in out.splitlines()]
    assert [(d["verdict"], d["reason"]) for d in got] == [
        ("TC_ACT_REDIRECT", "peer"), ("TC_ACT_REDIRECT", "forwarded"),
        ("TC_ACT_OK", "blackhole"), ("TC_ACT_REDIRECT", "peer"), ("TC_ACT_OK", "malformed"),
        (None, "skipped"), (None, "skipped")]
    assert bytes.fromhex(got[0]["packet"])[:6] == bytes.fromhex(CONTAINER_MAC.replace(":", ""))
