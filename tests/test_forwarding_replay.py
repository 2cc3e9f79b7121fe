"""Forwarding stages under BPF_PROG_TEST_RUN: verdicts, rewritten bytes and outcome counters.

The programs run in a throw-away namespace that has routes, neighbours and veths, so that
bpf_fib_lookup and the DEVMAPs see a real (if small) network.  XDP_REDIRECT is reported as
the verdict (test_run without live frames does not send).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from pipeline_fixtures import ebp_module_env  # noqa: F401  (fixture)
from ebplane.codegen.forwarding import OUTCOMES, map_name, outcomes
from ebplane.errors import SpecError
from ebplane.kernel.codec import U32
from ebplane.kernel.programs import XdpMd
from ebplane.net import iface, netns
from ebplane.runtime.replay import Replayer
from ebplane.kernel.codec import COUNT
from ebplane.spec import parse_spec

NEXT_HOP_MAC = "02:00:00:00:00:02"
HOST_MAC = "02:00:00:00:00:09"
SETUP = [
    "sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1",
    "ip link add up0 type veth peer name up1", "ip link set up0 up", "ip link set up1 up",
    "ip addr add 198.18.10.1/24 dev up0", "ip addr add 2001:db8:10::1/64 dev up0 nodad",
    f"ip neigh add 198.18.10.2 lladdr {NEXT_HOP_MAC} dev up0 nud permanent",
    f"ip neigh add 2001:db8:10::2 lladdr {NEXT_HOP_MAC} dev up0 nud permanent",
    "ip route add 198.18.20.0/24 via 198.18.10.2",
    "ip route add 198.18.30.0/24 via 198.18.10.3",        # no neighbour entry
    "ip route add blackhole 198.18.40.0/24",
    "ip route add unreachable 198.18.41.0/24",
    "ip route add 198.18.50.0/24 via 198.18.10.2 mtu lock 1000",
    "ip -6 route add 2001:db8:20::/64 via 2001:db8:10::2",
    "ip -6 route add 2001:db8:30::/64 via 2001:db8:10::3",  # no neighbour entry
    *[c for i in range(3) for c in (f"ip link add p{i} type veth peer name q{i}",
                                    f"ip link set p{i} up", f"ip link set q{i} up")],
]


@pytest.fixture(scope="module")
def router(ebp_module_env):
    with netns.temporary() as ns:
        for cmd in SETUP:
            netns.run(ns.name, cmd.split())
        with netns.enter(ns.name):
            for dev in ("up0", "p0", "p1", "p2"):
                iface.wait_up(dev)
        yield ns.name


def _spec(stages: str, protocols: str = "ethernet, vlan, ipv4, ipv6, tcp, udp") -> str:
    return (f"pipeline: fw\nhook: xdp\nprotocols: [{protocols}]\nstages:\n"
            + "".join(f"  - {s}\n" for s in stages.split(";")))


class Run:
    """A replayer inside the router namespace; frames run with a chosen ingress port."""

    def __init__(self, ns: str, spec_text: str):
        self.ns = ns
        self.spec = parse_spec(spec_text)
        with netns.enter(ns):
            self.rp = Replayer(self.spec)

    def __call__(self, frame, ingress: str | None = None):
        data = bytes(frame)
        with netns.enter(self.ns):
            ctx = None
            if ingress:
                ctx = XdpMd(data_end=len(data), ingress_ifindex=iface.ifindex(ingress))
            res = self.rp.program.test_run(data, ctx=ctx)
        return res.verdict, res.data

    def counts(self, stage: str) -> dict[str, int]:
        st = self.spec.stage(stage)
        m = self.rp.built.map(map_name(st, "counters")).with_codecs(U32, COUNT)
        return {name: m.lookup_sum(i).packets for i, name in enumerate(outcomes(st))}

    def close(self):
        self.rp.close()


def _mac(ns: str, dev: str) -> str:
    with netns.enter(ns):
        return iface.info(dev).mac


def _ipv4_checksum_ok(hdr: bytes) -> bool:
    total = sum(int.from_bytes(hdr[i:i + 2], "big") for i in range(0, len(hdr), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


@pytest.fixture(scope="module")
def route(router):
    r = Run(router, _spec("route: {}"))
    yield r
    r.close()


def v4(dst: str, ttl: int = 64, size: int = 20, df: bool = False):
    return (Ether(src=HOST_MAC, dst="02:00:00:00:00:01")
            / IP(src="198.18.1.2", dst=dst, ttl=ttl, flags="DF" if df else 0)
            / UDP(sport=1000, dport=2000) / (b"x" * size))


def v6(dst: str, hlim: int = 64, size: int = 20):
    return (Ether(src=HOST_MAC, dst="02:00:00:00:00:01")
            / IPv6(src="2001:db8:1::2", dst=dst, hlim=hlim) / UDP(sport=1, dport=2) / (b"x" * size))


def test_route_ipv4_forwards_with_ttl_checksum_and_macs(route, router):
    frame = bytes(v4("198.18.20.5", ttl=64))
    verdict, out = route(frame)
    assert verdict == "XDP_REDIRECT"
    assert out[0:6] == bytes.fromhex(NEXT_HOP_MAC.replace(":", ""))
    assert out[6:12] == bytes.fromhex(_mac(router, "up0").replace(":", ""))
    assert out[22] == 63                               # TTL decremented
    assert _ipv4_checksum_ok(out[14:34])                # incremental update is right
    assert out[24:26] != frame[24:26]
    assert out[34:] == frame[34:]                       # payload untouched
    rebuilt = IP(out[14:])
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == Ether(out)[IP].chksum   # scapy computes the same


@pytest.mark.parametrize("ttl", [2, 17, 128, 255])
def test_route_checksum_for_any_ttl(route, ttl):
    verdict, out = route(v4("198.18.20.7", ttl=ttl))
    assert verdict == "XDP_REDIRECT" and out[22] == ttl - 1 and _ipv4_checksum_ok(out[14:34])


def test_route_ipv6_forwards_with_hop_limit(route, router):
    frame = bytes(v6("2001:db8:20::5", hlim=9))
    verdict, out = route(frame)
    assert verdict == "XDP_REDIRECT"
    assert Ether(out).dst == NEXT_HOP_MAC and Ether(out).src == _mac(router, "up0")
    assert Ether(out)[IPv6].hlim == 8
    assert out[14 + 8:] == frame[14 + 8:]


@pytest.mark.parametrize("frame, outcome", [
    (v4("198.18.30.5"), "no_neigh"),
    (v6("2001:db8:30::5"), "no_neigh"),
    (v4("198.18.20.5", ttl=1), "ttl_exceeded"),
    (v6("2001:db8:20::5", hlim=1), "ttl_exceeded"),
    (v4("198.18.10.1"), "local"),
    (v6("ff02::1"), "local"),
    (v6("fe80::1"), "local"),
    (v4("198.18.40.5"), "blackhole"),
    (v4("198.18.41.5"), "blackhole"),
    (v4("198.18.50.5", size=1200), "frag"),
    (v4("198.18.50.5", size=1200, df=True), "mtu"),
    (Ether(src=HOST_MAC, dst="02:00:00:00:00:01") / Dot1Q(vlan=5) / IP(dst="198.18.20.5"),
     "other"),
])
def test_route_hands_the_kernel_what_it_must_handle(route, frame, outcome):
    before = route.counts("route")[outcome]
    verdict, out = route(frame)
    assert verdict == "XDP_PASS"
    assert out == bytes(frame)                          # untouched: the kernel decides
    assert route.counts("route")[outcome] == before + 1


def test_route_not_ip_goes_on(router):
    r = Run(router, _spec("route: {};tx: {swap_macs: false}"))
    try:
        verdict, _ = r(Ether(src=HOST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="198.18.10.1"))
        assert verdict == "XDP_TX"                      # the next stage decided
        assert r.counts("route")["not_ip"] == 1
    finally:
        r.close()


def test_bridge_learns_forwards_floods_and_filters(router):
    b = Run(router, _spec("bridge: {ports: [p0, p1, p2], ageing: 1}"))
    try:
        a, c = "02:aa:00:00:00:01", "02:aa:00:00:00:02"
        bcast = Ether(src=a, dst="ff:ff:ff:ff:ff:ff") / ARP()
        assert b(bcast, "p0")[0] == "XDP_REDIRECT"      # flooded (broadcast)
        to_a = Ether(src=c, dst=a) / IP() / UDP()
        verdict, out = b(to_a, "p1")
        assert verdict == "XDP_REDIRECT" and out == bytes(to_a)   # known: forwarded as is
        assert b(Ether(src=a, dst="02:aa:00:00:00:99") / IP(), "p0")[0] == "XDP_REDIRECT"
        assert b(Ether(src=c, dst=a) / IP(), "p0")[0] == "XDP_DROP"   # c moved; a is on p0
        assert b(Ether(src=a, dst=a) / IP(), "lo")[0] == "XDP_PASS"   # not a port: next
        n = b.counts("bridge")
        assert (n["broadcast"], n["forwarded"], n["flooded"], n["filtered"], n["not_port"],
                n["learned"], n["moved"]) == (1, 1, 1, 1, 1, 2, 1)
        fdb = b.rp.built.map("br_bridge_fdb")
        assert len(fdb) == 2
        time.sleep(1.2)                                 # the entries age out
        assert b(to_a, "p1")[0] == "XDP_REDIRECT"
        assert b.counts("bridge")["flooded"] == 2
    finally:
        b.close()


def test_redirect_rewrites_macs_to_the_peer(router):
    r = Run(router, _spec("redirect: {to: p1, macs: peer}"))
    try:
        frame = Ether(src=HOST_MAC, dst="02:00:00:00:00:01") / IP() / UDP()
        verdict, out = r(frame, "p0")
        assert verdict == "XDP_REDIRECT"
        assert Ether(out).src == _mac(router, "p1") and Ether(out).dst == _mac(router, "q1")
        assert out[12:] == bytes(frame)[12:]
        assert r.counts("redirect")["redirected"] == 1
    finally:
        r.close()


def test_tx_swaps_macs(router):
    r = Run(router, _spec("tx: {}"))
    try:
        frame = Ether(src=HOST_MAC, dst="02:00:00:00:00:01") / IP() / UDP()
        verdict, out = r(frame)
        assert verdict == "XDP_TX"
        assert out[:6] == bytes(frame)[6:12] and out[6:12] == bytes(frame)[:6]
    finally:
        r.close()


def test_steer_spreads_flows_and_keeps_each_flow_on_one_cpu(router):
    r = Run(router, _spec("steer: {cpus: [0, 1], queue_size: 256}"))
    try:
        for port in range(64):
            flow = (Ether(src=HOST_MAC, dst="02:00:00:00:00:01")
                    / IP(src="198.18.1.2", dst="198.18.20.5") / UDP(sport=10000 + port, dport=53))
            for _ in range(2):
                assert r(flow)[0] == "XDP_REDIRECT"
        n = r.counts("steer")
        assert n["cpu0"] + n["cpu1"] == 128 and n["no_cpu"] == 0
        assert n["cpu0"] % 2 == 0 and n["cpu1"] % 2 == 0   # both packets of a flow together
        assert 16 <= n["cpu0"] <= 112                      # spread, not all on one CPU
    finally:
        r.close()


def test_xsk_without_socket_goes_on_and_match_selects(router):
    r = Run(router, _spec("xsk: {match: [{ethertype: arp}, {proto: udp, dport: 53}]}"))
    try:
        assert r(Ether() / ARP())[0] == "XDP_PASS"
        assert r(Ether() / IP() / UDP(dport=53))[0] == "XDP_PASS"
        assert r(Ether() / IP() / UDP(dport=54))[0] == "XDP_PASS"
        assert r.counts("xsk") == {"delivered": 0, "no_socket": 2, "other_queue": 0,
                                   "no_match": 1}
    finally:
        r.close()


def test_xdp_only_forwarding_stages_are_refused_at_tc_hooks():
    """tx, steer and xsk are XDP's own (route, redirect, bridge at TC: test_tc_forwarding)."""
    text = _spec("tx: {}").replace("hook: xdp", "hook: tc-ingress")
    with pytest.raises(SpecError, match="works at hook xdp only"):
        parse_spec(text, "x.yaml")


def test_slot_numbers_are_generated_from_outcomes():
    """forward.h has no slot numbers of its own: each program gets them from OUTCOMES, and
    every slot name the header uses is among them."""
    from ebplane.codegen.pipeline import generate

    src = generate(parse_spec(_spec("route: {}"), "x.yaml")).source
    defines = dict(re.findall(r"^#define (EBP_(?:RT|BR|RD|TX|XSK)_\w+) (\d+)$", src, re.M))
    for kind, prefix in (("route", "RT"), ("bridge", "BR"), ("redirect", "RD"), ("tx", "TX"),
                         ("xsk", "XSK")):
        want = {f"EBP_{prefix}_{n.upper()}": str(i) for i, n in enumerate(OUTCOMES[kind])}
        want[f"EBP_{prefix}_SLOTS"] = str(len(OUTCOMES[kind]))
        assert {k: v for k, v in defines.items() if k.startswith(f"EBP_{prefix}_")} == want
    header = (Path(__file__).resolve().parent.parent
              / "src/ebplane/stages/forward/forward.h").read_text()
    assert not re.search(r"enum ebp_\w+_slot|#define EBP_(RT|BR|RD|TX|XSK)_", header)
    used = set(re.findall(r"\bEBP_(?:RT|BR|RD|TX|XSK)_[A-Z_]+\b", header))
    assert used and used <= set(defines)