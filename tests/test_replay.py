"""Replay: scapy-built packets through generated pipelines with BPF_PROG_TEST_RUN.

Covers every match field, IPv4/IPv6, zero/one/two VLAN tags, IPv6 extension headers, IPv4
options, fragments, truncation at every header (the malformed policy), rule order, the CLI
(``ebplane replay --json / --out``), the TC hooks, and a seeded cross-check of the BPF
classifier against the pure-Python reference (``classifier.match_packet``).
"""

from __future__ import annotations

import ipaddress
import json
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from pipeline_fixtures import cli, ebp_env, ebp_module_env  # noqa: F401  (fixtures)
from ebplane.errors import UsageError
from ebplane.stages.filter.model import match_packet
from ebplane.runtime.pcap import read_pcap, write_pcap
from ebplane.runtime.replay import Replayer
from ebplane.spec import Rule, parse_rule, parse_spec

PROTOCOLS = "[ethernet, vlan, ipv4, ipv6, tcp, udp, icmp, icmpv6]"
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def spec_text(rules: list[str], *, hook: str = "xdp", default: str = "drop",
              malformed: str = "drop", name: str = "rp") -> str:
    body = "\n".join(f"        - {r}" for r in rules) if rules else "        []"
    return (f"pipeline: {name}\nhook: {hook}\nprotocols: {PROTOCOLS}\nstages:\n"
            f"  - filter:\n      name: acl\n      default: {default}\n"
            f"      malformed: {malformed}\n      rules:\n{body}\n")


# -- the match-field pipeline -------------------------------------------------------------------

FIELD_RULES = [
    "{src: 198.18.0.0/24, proto: udp, dport: 53, action: drop}",          # 0 src, proto name
    '{dst: "2001:db8:1::/48", proto: tcp, dport: "22-23", action: drop}',  # 1 v6 dst, range
    "{vlan: 100, action: pass}",                                           # 2 vlan
    '{proto: 17, sport: "1000-1999", action: drop}',                       # 3 proto number
    "{dst: 198.18.5.5, action: drop}",                                     # 4 v4 host
    '{src: "2001:db8:2::1", proto: icmpv6, action: drop}',                 # 5 v6 src
    "{proto: icmp, action: pass}",                                         # 6
    '{dport: "8000-8080", action: drop}',                                  # 7 ports, no proto
    "{proto: 50, action: drop}",                                           # 8 unnamed proto
    "{src: 198.18.7.0/24, proto: udp, action: drop}",                      # 9 no ports
    '{dst: "2001:db8:7::/48", action: drop}',                              # 10
]


@pytest.fixture(scope="module")
def fields_rp(ebp_module_env):
    with Replayer(parse_spec(spec_text(FIELD_RULES))) as rp:
        yield rp


V4, V4OUT, V4DST = "198.18.0.9", "198.18.1.9", "198.18.3.3"
V6, V6DST = "2001:db8:9::1", "2001:db8:1::5"


def ip4(src=V4, dst=V4DST, **kw):
    return IP(src=src, dst=dst, **kw)


def ip6(src=V6, dst=V6DST, **kw):
    return IPv6(src=src, dst=dst, **kw)


# (name, L3 packet, expected: rule index or "default")
L3_CASES = [
    ("v4 src+udp+dport", ip4() / UDP(sport=40000, dport=53), 0),
    ("v4 src outside prefix", ip4(src=V4OUT) / UDP(sport=40000, dport=53), "default"),
    ("v4 tcp not udp", ip4() / TCP(sport=40000, dport=53), "default"),
    ("v4 dport other", ip4() / UDP(sport=40000, dport=54), "default"),
    ("v6 dst+tcp+dport lo", ip6() / TCP(sport=40000, dport=22), 1),
    ("v6 dst+tcp+dport hi", ip6() / TCP(sport=40000, dport=23), 1),
    ("v6 dport below range", ip6() / TCP(sport=40000, dport=21), "default"),
    ("v6 dport above range", ip6() / TCP(sport=40000, dport=24), "default"),
    ("v6 udp not tcp", ip6() / UDP(sport=40000, dport=22), "default"),
    ("v6 dst outside prefix", ip6(dst="2001:db8:2::5") / TCP(sport=40000, dport=22), "default"),
    ("sport range lo", ip4(src=V4OUT) / UDP(sport=1000, dport=9), 3),
    ("sport range mid", ip4(src=V4OUT) / UDP(sport=1500, dport=9), 3),
    ("sport range hi", ip4(src=V4OUT) / UDP(sport=1999, dport=9), 3),
    ("sport below", ip4(src=V4OUT) / UDP(sport=999, dport=9), "default"),
    ("sport above", ip4(src=V4OUT) / UDP(sport=2000, dport=9), "default"),
    ("sport v6 udp", ip6() / UDP(sport=1234, dport=9), 3),
    ("sport on tcp: proto 17 only", ip4(src=V4OUT) / TCP(sport=1500, dport=9), "default"),
    ("v4 dst host any proto", ip4(dst="198.18.5.5") / ICMP(), 4),
    ("v4 dst next host", ip4(dst="198.18.5.6") / ICMP(), 6),
    ("v6 src host icmpv6", ip6(src="2001:db8:2::1") / ICMPv6EchoRequest(), 5),
    ("v6 src other host", ip6(src="2001:db8:2::2") / ICMPv6EchoRequest(), "default"),
    ("icmp v4 passes", ip4(src=V4OUT) / ICMP(), 6),
    ("ports no proto tcp", ip4(src=V4OUT) / TCP(sport=40000, dport=8000), 7),
    ("ports no proto udp", ip4(src=V4OUT) / UDP(sport=40000, dport=8063), 7),
    ("ports no proto v6", ip6() / TCP(sport=40000, dport=8080), 7),
    ("ports above", ip4(src=V4OUT) / TCP(sport=40000, dport=8081), "default"),
    ("ports below", ip4(src=V4OUT) / TCP(sport=40000, dport=7999), "default"),
    ("unnamed proto v4", ip4(src=V4OUT, proto=50) / Raw(b"\0" * 16), 8),
    ("unnamed proto v6", ip6(nh=50) / Raw(b"\0" * 16), 8),
    ("proto without ports", ip4(src="198.18.7.1") / UDP(sport=40000, dport=9), 9),
    ("not IP", ARP(psrc=V4, pdst=V4DST), "default"),
]

ENCAPS = {
    "untagged": lambda l3: E / l3,
    "802.1Q": lambda l3: E / Dot1Q(vlan=200) / l3,
    "802.1ad+802.1Q": lambda l3: E / Dot1AD(vlan=300) / Dot1Q(vlan=400) / l3,
}


def decide(rp: Replayer, frame: bytes):
    d = rp.run(0, bytes(frame))
    return d.rule if d.reason == "rule" else d.reason, d


@pytest.mark.parametrize("encap", ENCAPS)
@pytest.mark.parametrize("name,l3,want", L3_CASES, ids=[c[0] for c in L3_CASES])
def test_match_fields(fields_rp, encap, name, l3, want):
    got, d = decide(fields_rp, ENCAPS[encap](l3))
    assert got == want, d
    assert d.stage == "acl"
    drop = want == "default" or "drop" in FIELD_RULES[want]
    assert d.verdict == ("XDP_DROP" if drop else "XDP_PASS")


@pytest.mark.parametrize("frame,want", [
    (E / Dot1Q(vlan=100) / ip4(src=V4OUT) / TCP(dport=9), 2),
    (E / Dot1Q(vlan=101) / ip4(src=V4OUT) / TCP(dport=9), "default"),
    (E / Dot1AD(vlan=100) / Dot1Q(vlan=7) / ip4(src=V4OUT) / TCP(dport=9), 2),   # outer id
    (E / Dot1AD(vlan=7) / Dot1Q(vlan=100) / ip4(src=V4OUT) / TCP(dport=9), "default"),
    (E / Dot1Q(vlan=100) / ARP(), 2),
    (E / Dot1Q(vlan=100) / ip4() / UDP(sport=40000, dport=53), 0),  # rule 0 comes first
    (E / Dot1Q(vlan=100) / ip6(src="2001:db8:2::1") / ICMPv6EchoRequest(), 2),
], ids=["q100", "q101", "ad100-outer", "ad7-inner100", "q100-arp", "q100-rule0-first",
        "q100-before-rule5"])
def test_vlan(fields_rp, frame, want):
    assert decide(fields_rp, frame)[0] == want


def hbh():
    return IPv6ExtHdrHopByHop()


def rh():
    return IPv6ExtHdrRouting(addresses=["2001:db8:ff::1"])


def do():
    return IPv6ExtHdrDestOpt()


@pytest.mark.parametrize("exts", [
    [hbh], [rh], [do], [lambda: IPv6ExtHdrFragment(offset=0, m=1, id=7)],
    [hbh, do, rh, do], [hbh, rh, do, lambda: IPv6ExtHdrFragment(offset=0, m=0, id=7)],
], ids=["hop-by-hop", "routing", "dstopts", "first-fragment", "chain4", "chain-frag"])
@pytest.mark.parametrize("encap", ENCAPS)
def test_ipv6_extension_headers(fields_rp, exts, encap):
    pkt = ip6()
    for make in exts:
        pkt = pkt / make()
    l3 = pkt / TCP(sport=40000, dport=22)
    assert decide(fields_rp, ENCAPS[encap](l3))[0] == 1
    # the same chain to a port the rule does not cover: the ports were read, not guessed
    l3 = pkt / TCP(sport=40000, dport=24)
    assert decide(fields_rp, ENCAPS[encap](l3))[0] == "default"


def test_ipv4_options(fields_rp):
    pkt = E / ip4(options=[IPOption_NOP()] * 8) / UDP(sport=40000, dport=53)
    raw = bytes(pkt)
    assert raw[14] & 0x0F == 7  # IHL > 5: 8 bytes of options
    assert decide(fields_rp, raw)[0] == 0
    other = E / ip4(options=[IPOption_NOP()] * 40) / UDP(sport=40000, dport=54)  # IHL 15
    assert bytes(other)[14] & 0x0F == 15
    assert decide(fields_rp, other)[0] == "default"


# -- fragments: the later fragments of a datagram take its first fragment's decision ---------

FRAG_RULES = [
    "{proto: udp, dport: 53, action: drop}",                       # 0
    '{proto: tcp, dport: "22-23", action: drop}',                  # 1
    "{proto: udp, dport: 5353, action: pass}",                     # 2
    "{dst: 198.18.5.5, action: drop}",                             # 3 no ports
]


def v4_frag(ident: int, *, offset: int = 0, more: bool = True, dport: int = 53,
            src: str = V4, dst: str = V4DST, proto: int = 17, l4: bytes | None = None) -> Ether:
    """An IPv4 fragment; offset 0 carries a UDP (or TCP) header with ``dport``, later ones
    a payload that *looks* like ports (40000 -> 9) to show that it is not read."""
    if l4 is None:
        if offset == 0:
            l4 = bytes((UDP if proto == 17 else TCP)(sport=40000, dport=dport)) + b"a" * 16
        else:
            l4 = bytes(UDP(sport=40000, dport=9)) + b"b" * 16
    return E / IP(src=src, dst=dst, proto=proto, id=ident, flags="MF" if more else 0,
                  frag=offset // 8) / Raw(l4)


def v6_frag(ident: int, *, offset: int = 0, more: bool = True, dport: int = 22) -> Ether:
    l4 = bytes(TCP(sport=40000, dport=dport)) if offset == 0 else b"c" * 24
    return E / IPv6(src=V6, dst=V6DST) / IPv6ExtHdrFragment(nh=6, offset=offset // 8,
                                                           m=int(more), id=ident) / Raw(l4)


def frag_replayer(malformed: str = "drop", **opts) -> Replayer:
    """A filter of FRAG_RULES (default pass) with the filter options ``opts``."""
    extra = "".join(f"      {k}: {v}\n" for k, v in opts.items())
    text = spec_text(FRAG_RULES, default="pass", malformed=malformed)
    return Replayer(parse_spec(text.replace("      rules:", extra + "      rules:")))


def run(rp: Replayer, frame) -> tuple:
    d = rp.run(0, bytes(frame))
    return (d.rule if d.reason == "rule" else d.reason), d.verdict


def test_later_fragments_follow_the_first(ebp_module_env):
    with frag_replayer() as rp:
        assert run(rp, v4_frag(100, dport=53)) == (0, "XDP_DROP")      # rule 0 by its port
        assert run(rp, v4_frag(101, dport=5353)) == (2, "XDP_PASS")    # rule 2 passes
        assert run(rp, v4_frag(102, dport=80)) == ("default", "XDP_PASS")
        # the later fragments carry no ports: each takes its datagram's decision
        assert run(rp, v4_frag(100, offset=24)) == (0, "XDP_DROP")
        assert run(rp, v4_frag(101, offset=24)) == (2, "XDP_PASS")
        assert run(rp, v4_frag(101, offset=48, more=False)) == (2, "XDP_PASS")
        assert run(rp, v4_frag(102, offset=24, more=False)) == ("default", "XDP_PASS")
        # the key is (src, dst, id, proto): another source's id 100 is another datagram
        assert run(rp, v4_frag(100, offset=24, src=V4OUT)) == ("fragment_other", "XDP_DROP")
        # IPv6: the fragment header's id
        assert run(rp, v6_frag(7, dport=22)) == (1, "XDP_DROP")
        assert run(rp, v6_frag(8, dport=443)) == ("default", "XDP_PASS")
        assert run(rp, v6_frag(7, offset=32, more=False)) == (1, "XDP_DROP")
        assert run(rp, v6_frag(8, offset=32, more=False)) == ("default", "XDP_PASS")
        # a rule without ports holds for every fragment by itself, first seen or not
        assert run(rp, v4_frag(103, dst="198.18.5.5", dport=80)) == (3, "XDP_DROP")
        assert run(rp, v4_frag(103, dst="198.18.5.5", offset=24)) == (3, "XDP_DROP")
        counts = rp.built.map("flt_acl_cnt")
        from ebplane.kernel.codec import COUNT, U32
        from ebplane.stages.filter.gen import frag_slots
        cm = counts.with_codecs(U32, COUNT)
        st = rp.spec.stages[0]
        got = {k: cm.lookup_sum(v).packets for k, v in frag_slots(st).items()}
        assert got == {"first": 6, "followed": 7, "other": 1, "bad": 0}


def test_out_of_order_fragments(ebp_module_env):
    """A later fragment before its first: unseen_fragments decides (and counts) it; once
    the first has passed, the rest follow it."""
    with frag_replayer() as rp:     # default: unseen fragments are dropped
        assert run(rp, v4_frag(200, offset=24, more=False)) == ("fragment_other", "XDP_DROP")
        assert run(rp, v4_frag(200, dport=5353)) == (2, "XDP_PASS")
        assert run(rp, v4_frag(200, offset=24, more=False)) == (2, "XDP_PASS")
    with frag_replayer(unseen_fragments="stack") as rp:
        assert run(rp, v4_frag(201, offset=24)) == ("fragment_other", "XDP_PASS")
        assert run(rp, v6_frag(9, offset=32)) == ("fragment_other", "XDP_PASS")
    with frag_replayer(unseen_fragments="pass") as rp:   # on to the next stage: the end
        assert run(rp, v4_frag(202, offset=24)) == ("end", "XDP_PASS")


def test_overlapping_fragments(ebp_module_env):
    with frag_replayer() as rp:
        # RFC 1858: a later TCP fragment at offset 8 or 16 rewrites the TCP header
        assert run(rp, v4_frag(300, proto=6, dport=443)) == ("default", "XDP_PASS")
        assert run(rp, v4_frag(300, proto=6, offset=8, l4=b"\x00\x16" * 8)) == \
            ("fragment_bad", "XDP_DROP")
        assert run(rp, v4_frag(300, proto=6, offset=16, l4=b"x" * 8)) == \
            ("fragment_bad", "XDP_DROP")
        assert run(rp, v4_frag(300, proto=6, offset=24, more=False)) == ("default", "XDP_PASS")
        # UDP: a later fragment overlapping the previous one's payload follows the decision
        assert run(rp, v4_frag(301, dport=53)) == (0, "XDP_DROP")
        assert run(rp, v4_frag(301, offset=8)) == (0, "XDP_DROP")
        assert run(rp, v4_frag(301, offset=8)) == (0, "XDP_DROP")      # duplicated
        # a repeated first fragment is classified itself; its decision replaces the first
        assert run(rp, v4_frag(302, dport=5353)) == (2, "XDP_PASS")
        assert run(rp, v4_frag(302, dport=53)) == (0, "XDP_DROP")
        assert run(rp, v4_frag(302, offset=24)) == (0, "XDP_DROP")


def test_tiny_first_fragment_is_dropped_as_malformed(ebp_module_env):
    """RFC 1858: a first fragment too short to hold the transport header, even with
    malformed: pass (a short unfragmented packet still follows malformed:)."""
    tiny_tcp = bytes(TCP(sport=40000, dport=22))[:8]
    tiny_udp = bytes(UDP(sport=40000, dport=53))[:6]
    with frag_replayer(malformed="pass") as rp:
        assert run(rp, v4_frag(400, proto=6, l4=tiny_tcp)) == ("fragment_bad", "XDP_DROP")
        assert run(rp, v4_frag(401, l4=tiny_udp)) == ("fragment_bad", "XDP_DROP")
        six = E / IPv6(src=V6, dst=V6DST) / IPv6ExtHdrFragment(nh=6, m=1, id=5) / Raw(tiny_tcp)
        assert run(rp, six) == ("fragment_bad", "XDP_DROP")
        short = E / IP(src=V4, dst=V4DST, proto=6) / Raw(tiny_tcp)   # not a fragment
        assert run(rp, short) == ("malformed", "XDP_PASS")
        # and the later fragments of that datagram were never recorded
        assert run(rp, v4_frag(400, proto=6, offset=24)) == ("fragment_other", "XDP_DROP")


@pytest.mark.parametrize("mode,later", [("drop", ("fragment_other", "XDP_DROP")),
                                        ("stack", ("fragment_other", "XDP_PASS")),
                                        ("pass", ("end", "XDP_PASS"))])
def test_fragment_modes(ebp_module_env, mode, later):
    with frag_replayer(fragments=mode) as rp:
        first = run(rp, v4_frag(500, dport=5353))
        assert first == (("fragment_other", "XDP_DROP") if mode == "drop" else (2, "XDP_PASS"))
        assert run(rp, v4_frag(500, offset=24)) == later
        assert run(rp, v6_frag(11, offset=32)) == later
        # unfragmented packets are classified as ever
        assert run(rp, E / IP(src=V4, dst=V4DST) / UDP(dport=53)) == (0, "XDP_DROP")


def test_unseen_fragments_needs_track():
    text = spec_text(FRAG_RULES).replace("      rules:", "      fragments: stack\n"
                                         "      unseen_fragments: pass\n      rules:")
    with pytest.raises(UsageError, match="unseen_fragments applies to fragments: track"):
        parse_spec(text)


# -- malformed packets -----------------------------------------------------------------------

MALFORMED_RULES = [
    "{src: 198.18.0.0/15, dport: 53, action: pass}",
    '{dst: "2001:db8::/32", dport: 53, action: pass}',
    "{vlan: 5, action: pass}",
]


def cut(pkt, n: int) -> bytes:
    raw = bytes(pkt)
    assert n < len(raw)
    return raw[:n]


UDP4 = E / IP(src=V4, dst=V4DST) / UDP(sport=40000, dport=53)
TCP4 = E / IP(src=V4, dst=V4DST) / TCP(sport=40000, dport=53)
UDP6 = E / IPv6(src=V6, dst=V6DST) / UDP(sport=40000, dport=53)
OPTS4 = E / IP(src=V4, dst=V4DST, options=[IPOption_NOP()] * 12) / UDP(dport=53)
HBH6 = E / IPv6(src=V6, dst=V6DST) / IPv6ExtHdrHopByHop(options=[]) / IPv6ExtHdrDestOpt(
    options=[]) / UDP(dport=53)
FRAG6 = E / IPv6(src=V6, dst=V6DST) / IPv6ExtHdrFragment(m=1) / UDP(dport=53)
QINQ = E / Dot1AD(vlan=5) / Dot1Q(vlan=6) / IP(src=V4, dst=V4DST) / UDP(dport=53)

TRUNCATED = {
    "vlan tag cut": cut(E / Dot1Q(vlan=5) / IP(), 16),
    "inner vlan tag cut": cut(QINQ, 20),
    "ipv4 cut": cut(UDP4, 14 + 12),
    "ipv4 behind vlan cut": cut(E / Dot1Q(vlan=9) / IP(src=V4) / UDP(dport=53), 18 + 19),
    "ipv4 options cut": cut(OPTS4, 14 + 20 + 8),
    "ihl < 5": bytes(E / IP(src=V4, dst=V4DST, ihl=4) / UDP(dport=53)),
    "ihl 0": bytes(E / IP(src=V4, dst=V4DST, ihl=0) / UDP(dport=53)),
    "ipv6 cut": cut(UDP6, 14 + 39),
    "ext header first bytes cut": cut(HBH6, 14 + 40 + 1),
    "ext header cut": cut(HBH6, 14 + 40 + 5),
    "second ext header cut": cut(HBH6, 14 + 40 + 8 + 3),
    "fragment header cut": cut(FRAG6, 14 + 40 + 6),
    "udp cut": cut(UDP4, 14 + 20 + 7),
    "udp6 cut": cut(UDP6, 14 + 40 + 3),
    "tcp cut": cut(TCP4, 14 + 20 + 19),
    "tcp behind qinq cut": cut(E / Dot1AD(vlan=7) / Dot1Q(vlan=8) / IP(src=V4) / TCP(), 22 + 20 + 10),
}

WHOLE = {
    "vlan": E / Dot1Q(vlan=5) / IP(),
    "qinq": QINQ,
    "ipv4": UDP4, "ipv4 options": OPTS4, "ipv6": UDP6, "ext headers": HBH6,
    "fragment header": FRAG6, "tcp": TCP4,
}


@pytest.fixture(scope="module", params=["drop", "pass"])
def malformed_rp(request, ebp_module_env):
    with Replayer(parse_spec(spec_text(MALFORMED_RULES, malformed=request.param,
                                       default="drop"))) as rp:
        yield request.param, rp


@pytest.mark.parametrize("name", TRUNCATED)
def test_truncated_is_malformed(malformed_rp, name):
    policy, rp = malformed_rp
    got, d = decide(rp, TRUNCATED[name])
    assert got == "malformed", d
    assert d.verdict == {"drop": "XDP_DROP", "pass": "XDP_PASS"}[policy]


@pytest.mark.parametrize("name", WHOLE)
def test_whole_packets_are_not_malformed(malformed_rp, name):
    _policy, rp = malformed_rp
    got, d = decide(rp, WHOLE[name])
    assert got in (0, 1, 2), d  # each whole packet matches one of the pass rules


def test_malformed_counts_only_for_headers_the_pipeline_parses(ebp_env):
    """A pipeline that does not list IPv4 has no IPv4 parser: a cut IPv4 header is no harm."""
    text = spec_text(["{vlan: 5, action: pass}"]).replace(PROTOCOLS, "[ethernet, vlan]")
    with Replayer(parse_spec(text)) as rp:
        assert decide(rp, TRUNCATED["ipv4 cut"])[0] == "default"
        assert decide(rp, TRUNCATED["vlan tag cut"])[0] == "malformed"
    with Replayer(parse_spec(spec_text(["{vlan: 5, action: pass}"]))) as rp:
        assert decide(rp, TRUNCATED["ipv4 cut"])[0] == "malformed"


# -- rule order ------------------------------------------------------------------------------

@pytest.mark.parametrize("rules,frame,want", [
    # same shape: the first of two overlapping prefixes wins
    (["{dst: 198.18.9.0/24, action: pass}", "{dst: 198.18.9.0/25, action: drop}"],
     E / IP(dst="198.18.9.9") / ICMP(), 0),
    (["{dst: 198.18.9.0/25, action: drop}", "{dst: 198.18.9.0/24, action: pass}"],
     E / IP(dst="198.18.9.9") / ICMP(), 0),
    # across shapes: a broad rule first beats a more specific later rule
    (["{dst: 198.18.9.0/24, action: pass}", "{dst: 198.18.9.9, proto: udp, dport: 7, action: drop}"],
     E / IP(dst="198.18.9.9") / UDP(dport=7), 0),
    (["{dst: 198.18.9.9, proto: udp, dport: 7, action: drop}", "{dst: 198.18.9.0/24, action: pass}"],
     E / IP(dst="198.18.9.9") / UDP(dport=7), 0),
    # a later shape holds the better rule: shape 0 has rules 0 and 2, shape 1 has rule 1
    (["{dst: 198.18.8.0/24, action: pass}", "{src: 198.18.1.0/24, action: drop}",
      "{dst: 198.18.9.0/24, action: pass}"],
     E / IP(src="198.18.1.1", dst="198.18.9.9") / ICMP(), 1),
    (["{dst: 198.18.8.0/24, action: pass}", "{src: 198.18.1.0/24, action: drop}",
      "{dst: 198.18.9.0/24, action: pass}"],
     E / IP(src="198.18.2.1", dst="198.18.9.9") / ICMP(), 2),
    # a full port range first shadows a single port later
    (['{dport: "0-65535", action: pass}', "{dport: 80, action: drop}"],
     E / IP() / TCP(dport=80), 0),
    (["{vlan: 5, action: drop}", "{src: 198.18.0.0/15, action: pass}"],
     E / Dot1Q(vlan=5) / IP(src="198.18.0.1") / ICMP(), 0),
    (["{src: 198.18.0.0/15, action: pass}", "{vlan: 5, action: drop}"],
     E / Dot1Q(vlan=5) / IP(src="198.18.0.1") / ICMP(), 0),
    (['{src: "2001:db8::/32", action: pass}', "{proto: icmpv6, action: drop}"],
     E / IPv6(src="2001:db8::1") / ICMPv6EchoRequest(), 0),
    (["{proto: icmpv6, action: drop}", '{src: "2001:db8::/32", action: pass}'],
     E / IPv6(src="2001:db8::1") / ICMPv6EchoRequest(), 0),
])
def test_first_match_wins(ebp_env, rules, frame, want):
    with Replayer(parse_spec(spec_text(rules))) as rp:
        got, d = decide(rp, frame)
        assert got == want, d
        assert d.verdict == ("XDP_DROP" if "drop" in rules[want] else "XDP_PASS")


def test_several_stages_and_default_next(ebp_env):
    text = (f"pipeline: st\nhook: xdp\nprotocols: {PROTOCOLS}\nstages:\n"
            "  - filter: {name: first, default: next, rules: [{dport: 53, action: drop}]}\n"
            "  - count: {}\n"
            "  - filter: {name: second, default: next, rules: [{proto: udp, action: drop}]}\n")
    with Replayer(parse_spec(text)) as rp:
        d = rp.run(0, bytes(E / IP() / UDP(dport=53)))
        assert (d.stage, d.rule, d.verdict) == ("first", 0, "XDP_DROP")
        d = rp.run(1, bytes(E / IP() / UDP(dport=54)))
        assert (d.stage, d.rule, d.verdict) == ("second", 0, "XDP_DROP")
        d = rp.run(2, bytes(E / IP() / TCP(dport=54)))
        assert (d.stage, d.rule, d.reason, d.verdict) == (None, None, "end", "XDP_PASS")


@pytest.mark.parametrize("hook", ["tc-ingress", "tc-egress"])
def test_tc_hooks_give_tc_verdicts(ebp_env, hook):
    with Replayer(parse_spec(spec_text(FIELD_RULES[:3], hook=hook, default="pass"))) as rp:
        d = rp.run(0, bytes(E / ip4() / UDP(sport=40000, dport=53)))
        assert (d.verdict, d.rule) == ("TC_ACT_SHOT", 0)
        d = rp.run(1, bytes(E / Dot1Q(vlan=100) / ip4(src=V4OUT) / UDP(dport=9)))
        assert (d.verdict, d.rule) == ("TC_ACT_OK", 2)
        d = rp.run(2, bytes(E / ip4(src=V4OUT) / UDP(dport=9)))
        assert (d.verdict, d.reason) == ("TC_ACT_OK", "default")
        # (the kernel's skb test_run refuses a cut IP header itself: cut the UDP header)
        d = rp.run(3, cut(UDP4, 14 + 20 + 4))
        assert (d.verdict, d.reason) == ("TC_ACT_SHOT", "malformed")


# -- the CLI -------------------------------------------------------------------------------------

def test_cli_replay_json_and_out(ebp_env, tmp_path):
    spec = tmp_path / "fields.yaml"
    spec.write_text(spec_text(FIELD_RULES))
    frames = [bytes(E / ip4() / UDP(sport=40000, dport=53)),
              bytes(E / Dot1Q(vlan=100) / ip4(src=V4OUT) / TCP(dport=9)),
              bytes(E / ip4(src=V4OUT) / TCP(dport=9)),
              cut(UDP6, 30),
              bytes(E / ip6() / TCP(sport=40000, dport=23))]
    pcap = tmp_path / "in.pcap"
    from scapy.utils import wrpcap
    wrpcap(str(pcap), [Ether(f) for f in frames])
    out = tmp_path / "out.pcap"
    proc = cli("replay", str(spec), "--pcap", str(pcap), "--json", "--out", str(out))
    lines = proc.stdout.splitlines()
    assert len(lines) == len(frames)
    got = [json.loads(line) for line in lines]  # every line is one JSON object
    for i, d in enumerate(got):
        assert {"index", "verdict", "stage", "rule", "packet"} <= d.keys()
        assert d["index"] == i
        assert bytes.fromhex(d["packet"]) == frames[i]
    assert [(d["verdict"], d["stage"], d["rule"]) for d in got] == [
        ("XDP_DROP", "acl", 0), ("XDP_PASS", "acl", 2), ("XDP_DROP", "acl", None),
        ("XDP_DROP", "acl", None), ("XDP_DROP", "acl", 1)]
    assert [d["reason"] for d in got][2:4] == ["default", "malformed"]
    # the same decisions as the Python API
    with Replayer(parse_spec(spec_text(FIELD_RULES))) as rp:
        assert [rp.run(i, f).to_dict() for i, f in enumerate(frames)] == got
    assert list(read_pcap(out)) == frames


def test_cli_replay_human_and_errors(ebp_env, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(["{dport: 53, action: drop}"]))
    pcap = tmp_path / "in.pcap"
    write_pcap(pcap, [bytes(E / IP() / UDP(dport=53)), bytes(E / IP() / UDP(dport=5))])
    proc = cli("replay", str(spec), "--pcap", str(pcap))
    assert "2 packets: XDP_DROP 2" in proc.stdout
    assert "acl rule 0" in proc.stdout and "acl default" in proc.stdout
    bad = cli("replay", str(spec), "--pcap", str(tmp_path / "missing.pcap"), check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    spec.write_text(spec_text(["{dport: 99999, action: drop}"]))
    bad = cli("replay", str(spec), "--pcap", str(pcap), check=False)
    assert bad.returncode == 2
    assert f"{spec}:" in bad.stderr and "port" in bad.stderr


# -- cross-check: BPF classifier vs the Python reference ---------------------------------------

V4_NETS = ["198.18.0.0/15", "198.18.0.0/16", "198.18.1.0/24", "198.18.2.0/24", "198.19.0.0/24"]
V6_NETS = ["2001:db8::/32", "2001:db8:1::/48", "2001:db8:2::/48", "2001:db8:1:1::/64"]


def pick_address(rng: random.Random, net) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of ``net`` near its start (the rules' prefixes nest, so this hits several)."""
    offsets = [0, 1, 256, 257, 65537] if net.version == 4 else [1, 1 << 64, 1 << 80]
    return net[rng.choice(offsets) % net.num_addresses]


def random_rule(rng: random.Random) -> dict:
    r: dict = {"action": rng.choice(["pass", "drop"])}
    fam = rng.choice([0, 4, 6, 4, 6])
    nets = V4_NETS if fam == 4 else V6_NETS
    if fam:
        for key in rng.sample(["src", "dst"], rng.randint(1, 2)):
            net = ipaddress.ip_network(rng.choice(nets))
            r[key] = str(net) if rng.random() < 0.7 else str(pick_address(rng, net))
    if rng.random() < 0.6:
        r["proto"] = rng.choice(["tcp", "udp", 6, 17] + (["icmp"] if fam != 6 else [])
                                + (["icmpv6"] if fam != 4 else []))
    if r.get("proto") in (None, "tcp", "udp", 6, 17) and rng.random() < 0.5:
        key = rng.choice(["sport", "dport"])
        lo = rng.choice([53, 80, 1024, 4096])
        r[key] = lo if rng.random() < 0.6 else f"{lo}-{lo + rng.choice([1, 15, 255])}"
    if rng.random() < 0.15:
        r["vlan"] = rng.choice([5, 6])
    if len(r) == 1:
        r["vlan"] = 7
    return r


def random_packet(rng: random.Random) -> tuple[bytes, dict]:
    fam = rng.choice([4, 6, 4, 6, 0])
    if fam == 0:
        l3, fields = ARP(), {"family": 0}
    else:
        nets = V4_NETS if fam == 4 else V6_NETS
        src, dst = (pick_address(rng, ipaddress.ip_network(rng.choice(nets))) for _ in range(2))
        proto = rng.choice(["tcp", "udp", "icmp"])
        sport = rng.choice([53, 80, 1024, 1030, 4096, 4300, 9999])
        dport = rng.choice([53, 80, 1024, 1030, 4096, 4300, 9999])
        ip = IP(src=str(src), dst=str(dst)) if fam == 4 else IPv6(src=str(src), dst=str(dst))
        number = {"tcp": 6, "udp": 17, "icmp": 1 if fam == 4 else 58}[proto]
        l4 = {"tcp": TCP(sport=sport, dport=dport), "udp": UDP(sport=sport, dport=dport),
              "icmp": ICMP() if fam == 4 else ICMPv6EchoRequest()}[proto]
        l3 = ip / l4
        fields = {"family": fam, "src": src.packed, "dst": dst.packed, "proto": number,
                  "sport": sport, "dport": dport, "has_l4": proto != "icmp"}
    tags = rng.choice([0, 0, 1, 2])
    vlan = rng.choice([5, 6, 7, 8])
    if tags == 0:
        frame = E / l3
    elif tags == 1:
        frame = E / Dot1Q(vlan=vlan) / l3
    else:
        frame = E / Dot1AD(vlan=vlan) / Dot1Q(vlan=5) / l3
    if tags:
        fields.update(has_vlan=True, vlan=vlan)
    return bytes(frame), fields


def test_bpf_agrees_with_reference_on_random_rules(ebp_env):
    rng = random.Random(20240607)
    checked = matched = 0
    for _round in range(6):
        rules_raw = [random_rule(rng) for _ in range(rng.randint(5, 14))]
        rules = [parse_rule(r, protocols=PROTOCOLS.strip("[]").split(", ")) for r in rules_raw]
        text = spec_text([json.dumps(r) for r in rules_raw], default="drop")
        with Replayer(parse_spec(text)) as rp:
            for _ in range(60):
                frame, fields = random_packet(rng)
                ref = match_packet(rules, fields)
                got, d = decide(rp, frame)
                want = "default" if ref is None else ref.prio
                assert got == want, (rules_raw, fields, d)
                # and both agree with plain first-match evaluation of the rules
                assert want == first_match(rules, fields)
                checked += 1
                matched += ref is not None
    assert checked == 360 and matched > 60  # the rules are not trivially missed


def first_match(rules: list[Rule], f: dict) -> int | str:
    """The rule list read literally: the first rule whose every field holds."""
    for i, r in enumerate(rules):
        fam = f.get("family", 0)
        if r.family and r.family != fam:
            continue
        if r.src is not None and ipaddress.ip_address(f["src"]) not in r.src:
            continue
        if r.dst is not None and ipaddress.ip_address(f["dst"]) not in r.dst:
            continue
        if r.proto is not None and (fam == 0 or f["proto"] != r.proto):
            continue
        if (r.sport or r.dport) and not f.get("has_l4"):
            continue
        if (r.sport or r.dport) and r.proto is None and f["proto"] not in (6, 17):
            continue
        if r.sport and not r.sport[0] <= f["sport"] <= r.sport[1]:
            continue
        if r.dport and not r.dport[0] <= f["dport"] <= r.dport[1]:
            continue
        if r.vlan is not None and (not f.get("has_vlan") or f["vlan"] != r.vlan):
            continue
        return i
    return "default"


def test_cli_replay_of_the_example_spec(ebp_env, tmp_path):
    from pathlib import Path
    spec = Path(__file__).parent.parent / "examples" / "edge.yaml"
    pcap = tmp_path / "edge.pcap"
    write_pcap(pcap, [bytes(E / IP(src="198.18.0.7", dst=V4DST) / UDP(dport=53)),
                      bytes(E / IPv6(src=V6, dst="2001:db8::9") / TCP(dport=23)),
                      bytes(E / Dot1Q(vlan=100) / IP(src=V4OUT) / UDP(dport=53)),
                      bytes(E / IP(src=V4OUT, dst=V4DST) / UDP(dport=53))])
    got = [json.loads(line) for line in
           cli("replay", str(spec), "--pcap", str(pcap), "--json").stdout.splitlines()]
    assert [(d["verdict"], d["rule"], d["reason"]) for d in got] == [
        ("XDP_DROP", 0, "rule"), ("XDP_DROP", 1, "rule"), ("XDP_PASS", 2, "rule"),
        ("XDP_PASS", None, "end")]


# -- capture files (scapy's readers and writer) -----------------------------------------------

def test_pcap_round_trip_and_pcapng_input(tmp_path):
    from scapy.utils import wrpcapng
    frames = [bytes(E / IP() / UDP(dport=p)) for p in (53, 5)] + [bytes(E / IP() / UDP()) + b"x" * 9000]
    assert write_pcap(tmp_path / "a.pcap", frames) == 3
    assert list(read_pcap(tmp_path / "a.pcap")) == frames
    wrpcapng(str(tmp_path / "a.pcapng"), [Ether(f) for f in frames])
    assert list(read_pcap(tmp_path / "a.pcapng")) == frames
    assert write_pcap(tmp_path / "empty.pcap", []) == 0
    assert list(read_pcap(tmp_path / "empty.pcap")) == []


def test_pcap_errors_are_bad_input(tmp_path):
    from scapy.layers.inet import IP as IPOnly
    from scapy.utils import wrpcap
    frames = [bytes(E / IP() / UDP(dport=p)) for p in range(3)]
    write_pcap(tmp_path / "a.pcap", frames)
    data = (tmp_path / "a.pcap").read_bytes()
    for cut in (5, len(frames[-1]) + 8):  # inside the last frame, inside its record header
        (tmp_path / "cut.pcap").write_bytes(data[:-cut])
        with pytest.raises(UsageError, match="record 2 is cut short"):
            list(read_pcap(tmp_path / "cut.pcap"))
    (tmp_path / "text.pcap").write_text("not a capture at all\n")
    with pytest.raises(UsageError, match="not a pcap or pcapng file"):
        list(read_pcap(tmp_path / "text.pcap"))
    wrpcap(str(tmp_path / "raw.pcap"), [IPOnly() / UDP()])  # link type 228 (raw IPv4)
    with pytest.raises(UsageError, match="link type 228"):
        list(read_pcap(tmp_path / "raw.pcap"))
    with pytest.raises(UsageError, match="does not exist"):
        list(read_pcap(tmp_path / "missing.pcap"))


def test_cli_replay_reports_short_frames_and_goes_on(ebp_env, tmp_path):
    """A frame shorter than an Ethernet header is a record of its own (verdict null, reason
    skipped, why), the frames after it are run, and --out holds every frame."""
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text(["{dport: 53, action: drop}"]))
    frames = [bytes(E / IP() / UDP(dport=53)), b"\x01" * 10, b"",
              bytes(E / IP() / UDP(dport=5))]
    pcap = tmp_path / "in.pcap"
    write_pcap(pcap, frames)
    out = tmp_path / "out.pcap"
    proc = cli("replay", str(spec), "--pcap", str(pcap), "--json", "--out", str(out))
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["index"] for d in got] == [0, 1, 2, 3]
    assert [d["verdict"] for d in got] == ["XDP_DROP", None, None, "XDP_DROP"]
    assert [d["reason"] for d in got] == ["rule", "skipped", "skipped", "default"]
    assert "10 bytes" in got[1]["detail"] and "14" in got[1]["detail"]
    assert list(read_pcap(out)) == frames
    human = cli("replay", str(spec), "--pcap", str(pcap)).stdout
    assert "4 packets: XDP_DROP 2, skipped 2" in human
    assert "     1  skipped" in human and "shorter than an Ethernet header" in human
