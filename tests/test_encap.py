"""encap / decap stages under BPF_PROG_TEST_RUN, at XDP and TC: the bytes that come out,
the outcome counters, what later stages match after a decap, cut-short input, spec errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw, bind_layers
from scapy.fields import BitField, ShortField, XBitField

from pipeline_fixtures import ebp_module_env  # noqa: F401  (fixture)
from ebplane.codegen.p4c import parse_info_size
from ebplane.errors import SpecError
from ebplane.kernel.codec import COUNT, U32
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec
from ebplane.stages.encap.gen import OUTCOMES, map_names

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HOOKS = ["xdp", "tc-ingress"]
PROTOS = "ethernet, vlan, ipv4, ipv6, tcp, udp, vxlan, geneve, gre"
PASS = {"xdp": "XDP_PASS", "tc-ingress": "TC_ACT_OK"}
DROP = {"xdp": "XDP_DROP", "tc-ingress": "TC_ACT_SHOT"}
M1, M2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


class Tenant(Packet):
    """examples/tenant.p4's header."""
    name = "tenant"
    fields_desc = [BitField("version", 1, 4), BitField("flags", 0, 4), XBitField("id", 0, 24),
                   ShortField("app", 0), ShortField("reserved", 0)]


def inner_frame(dst: str = "198.18.9.8", sport: int = 1000, payload: bytes = b"inner!",
                mac: str = "02:00:00:00:00:bb") -> Ether:
    return (Ether(src="02:00:00:00:00:aa", dst=mac)
            / IP(src="198.18.5.1", dst=dst) / UDP(sport=sport, dport=2000) / payload)


def outer4(proto_layers) -> Ether:
    return Ether(src=M2, dst=M1) / IP(src="198.18.0.2", dst="198.18.0.1") / proto_layers


class Run:
    def __init__(self, text: str):
        self.spec = parse_spec(text)
        self.rp = Replayer(self.spec)

    def __call__(self, frame) -> tuple[str, bytes]:
        res = self.rp.program.test_run(bytes(frame))
        return res.verdict, res.data

    def counts(self, stage: str) -> dict[str, int]:
        st = self.spec.stage(stage)
        m = self.rp.built.map(map_names(st)["counters"]).with_codecs(U32, COUNT)
        return {n: m.lookup_sum(i).packets for i, n in enumerate(OUTCOMES[st.kind])}

    def close(self) -> None:
        self.rp.close()


def spec(hook: str, *stages: str, protocols: str = PROTOS) -> str:
    return (f"pipeline: hs\nhook: {hook}\nprotocols: [{protocols}]\nstages:\n"
            + "".join(f"  - {s}\n" for s in stages))


@pytest.fixture(scope="module", params=HOOKS)
def decap(request, ebp_module_env):
    """decap of every tunnel, then a filter on the inner packet (drops 198.18.9.9)."""
    hook = request.param
    r = Run(spec(hook, "decap: {name: untun, tunnels: [vxlan, geneve, gre, ipip]}",
                 "filter: {default: pass, rules: [{dst: 198.18.9.9/32, action: drop}, "
                 "{dst: '2001:db8:9::9/128', action: drop}]}"))
    r.hook = hook
    yield r
    r.close()


def test_vxlan_decap_leaves_exactly_the_inner_frame(decap):
    inner = inner_frame()
    before = decap.counts("untun")
    verdict, out = decap(outer4(UDP(sport=4242, dport=4789) / VXLAN(vni=42)) / inner)
    assert verdict == PASS[decap.hook]
    assert out == bytes(inner)
    assert decap.counts("untun")["decapsulated"] == before["decapsulated"] + 1


def test_a_later_stage_matches_the_inner_headers(decap):
    verdict, _ = decap(outer4(UDP(dport=4789) / VXLAN(vni=1)) / inner_frame("198.18.9.9"))
    assert verdict == DROP[decap.hook]          # the filter saw the inner destination
    verdict, _ = decap(outer4(UDP(dport=4789) / VXLAN(vni=1)) / inner_frame("198.18.9.8"))
    assert verdict == PASS[decap.hook]


def test_geneve_with_options_carrying_a_frame(decap):
    inner = inner_frame()
    g = GENEVE(vni=7, proto=0x6558, optionlen=2, options=b"\x01\x02\x03\x04\x05\x06\x07\x08")
    verdict, out = decap(outer4(UDP(dport=6081) / g) / inner)
    assert verdict == PASS[decap.hook] and out == bytes(inner)


def test_geneve_carrying_ip_keeps_the_outer_ethernet(decap):
    ip = IP(src="198.18.5.1", dst="198.18.9.8") / UDP(sport=1, dport=2) / (b"x" * 10)
    verdict, out = decap(outer4(UDP(dport=6081) / GENEVE(vni=7, proto=0x0800)) / ip)
    assert verdict == PASS[decap.hook]
    assert out == bytes(Ether(src=M2, dst=M1, type=0x0800)) + bytes(ip)


@pytest.mark.parametrize("key", [None, 0xBEEF])
def test_gre_decap_ipv4_and_ipv6_inside(decap, key):
    for ip, et in ((IP(src="198.18.5.1", dst="198.18.9.8") / UDP() / (b"y" * 8), 0x0800),
                   (IPv6(src="2001:db8:5::1", dst="2001:db8:9::8") / UDP() / (b"y" * 8), 0x86DD)):
        gre = GRE(proto=et) if key is None else GRE(proto=et, key_present=1, key=key)
        verdict, out = decap(outer4(gre) / ip)
        assert verdict == PASS[decap.hook]
        assert out == bytes(Ether(src=M2, dst=M1, type=et)) + bytes(ip)


def test_gre_over_ipv6_and_transparent_ethernet(decap):
    inner = inner_frame("198.18.9.9")
    frame = (Ether(src=M2, dst=M1) / IPv6(src="2001:db8::2", dst="2001:db8::1")
             / GRE(proto=0x6558) / inner)
    verdict, out = decap(frame)
    assert verdict == DROP[decap.hook]          # decapsulated, then the filter dropped it
    verdict, out = decap(Ether(src=M2, dst=M1) / IPv6(src="2001:db8::2", dst="2001:db8::1")
                         / GRE(proto=0x6558) / inner_frame())
    assert verdict == PASS[decap.hook] and out == bytes(inner_frame())


@pytest.mark.parametrize("outer, inner, et", [
    (IP(src="198.18.0.2", dst="198.18.0.1"), IP(src="198.18.5.1", dst="198.18.9.8"), 0x0800),
    (IP(src="198.18.0.2", dst="198.18.0.1"), IPv6(src="2001:db8:5::1", dst="2001:db8:9::8"), 0x86DD),
    (IPv6(src="2001:db8::2", dst="2001:db8::1"), IPv6(src="2001:db8:5::1", dst="2001:db8:9::8"), 0x86DD),
    (IPv6(src="2001:db8::2", dst="2001:db8::1"), IP(src="198.18.5.1", dst="198.18.9.8"), 0x0800),
], ids=["ipip", "6in4", "ip6ip6", "4in6"])
def test_ipip_family_decap(decap, outer, inner, et):
    inner = inner / UDP(sport=3, dport=4) / (b"z" * 12)
    verdict, out = decap(Ether(src=M2, dst=M1) / outer / inner)
    assert verdict == PASS[decap.hook]
    assert out == bytes(Ether(src=M2, dst=M1, type=et)) + bytes(inner)


def test_plain_packets_and_cut_short_tunnels_go_on_unchanged(decap):
    before = decap.counts("untun")
    plain = bytes(inner_frame())
    assert decap(plain) == (PASS[decap.hook], plain)
    # a VXLAN header, but the inner frame cut short (8 bytes of an Ethernet header)
    cut = bytes(outer4(UDP(dport=4789) / VXLAN(vni=1))) + bytes(inner_frame())[:8]
    assert decap(cut) == (PASS[decap.hook], cut)
    # the VXLAN header itself cut short: the parser calls it malformed; the filter passes it
    short = bytes(outer4(UDP(dport=4789) / VXLAN(vni=1)))[:-3]
    assert decap(short)[1] == short
    after = decap.counts("untun")
    assert after["not_tunnel"] == before["not_tunnel"] + 1
    assert after["truncated"] == before["truncated"] + 1
    assert after["malformed"] == before["malformed"] + 1
    assert after["decapsulated"] == before["decapsulated"]


@pytest.mark.parametrize("hook", HOOKS)
def test_tenant_header_removed_kernel_sees_plain_ip(ebp_module_env, hook):
    bind_layers(UDP, Tenant, dport=4789)
    r = Run(spec(hook, "decap: {name: untenant, header: tenant}",
                 "filter: {default: pass, rules: [{match: {tenant.id: 7}, action: drop}]}",
                 protocols=f"ethernet, ipv4, ipv6, udp, {EXAMPLES / 'tenant.p4'}"))
    try:
        ip = IP(src="198.18.5.1", dst="198.18.9.8") / UDP(sport=7, dport=8) / b"tenant data"
        verdict, out = r(outer4(UDP(sport=999, dport=4789) / Tenant(id=7, app=100)) / ip)
        assert verdict == PASS[hook]      # the tenant header is gone before the filter runs
        assert out == bytes(Ether(src=M2, dst=M1, type=0x0800)) + bytes(ip)
        assert r.counts("untenant")["decapsulated"] == 1
        # a version the tenant parser rejects: malformed, unchanged
        bad = bytes(outer4(UDP(dport=4789) / Tenant(version=2)) / ip)
        assert r(bad)[1] == bad and r.counts("untenant")["malformed"] == 1
    finally:
        r.close()


# -- VLAN -------------------------------------------------------------------------------------

def test_vlan_pop_push_rewrite_at_xdp(ebp_module_env):
    base = inner_frame()
    tagged = Ether(src=base.src, dst=base.dst) / Dot1Q(vlan=5, prio=3) / base[IP]
    pop = Run(spec("xdp", "decap: {name: pop, tunnels: [vlan]}"))
    push = Run(spec("xdp", "encap: {name: push, tunnel: vlan, vid: 100, pcp: 5, tagged: push}"))
    rew = Run(spec("xdp", "encap: {name: rew, tunnel: vlan, vid: 300}"))
    try:
        assert pop(tagged) == ("XDP_PASS", bytes(base))
        assert pop(base) == ("XDP_PASS", bytes(base)) and pop.counts("pop")["not_tunnel"] == 1
        v, out = push(base)
        assert Ether(out)[Dot1Q].vlan == 100 and Ether(out)[Dot1Q].prio == 5
        assert out == bytes(Ether(src=base.src, dst=base.dst) / Dot1Q(vlan=100, prio=5)
                            / base[IP])
        v, out = push(tagged)    # a second tag, outer one 802.1ad
        assert out == bytes(Ether(src=base.src, dst=base.dst, type=0x88A8)
                            / Dot1Q(vlan=100, prio=5) / Dot1Q(vlan=5, prio=3) / base[IP])
        v, out = rew(tagged)
        assert out == bytes(Ether(src=base.src, dst=base.dst) / Dot1Q(vlan=300, prio=0)
                            / base[IP])
        assert rew.counts("rew")["rewritten"] == 1
        v, out = rew(base)       # untagged: pushed
        assert Ether(out)[Dot1Q].vlan == 300 and rew.counts("rew")["encapsulated"] == 1
    finally:
        for r in (pop, push, rew):
            r.close()


def test_vlan_push_pop_at_tc(ebp_module_env):
    """At TC the kernel keeps the tag in the skb (bpf_skb_vlan_push/pop): test_run shows it
    in the data only when the tag went into the frame; what counts is the counter and that
    the program ran both helpers without refusal."""
    base = inner_frame()
    tagged = Ether(src=base.src, dst=base.dst) / Dot1Q(vlan=5) / base[IP]
    pop = Run(spec("tc-ingress", "decap: {name: pop, tunnels: [vlan]}"))
    push = Run(spec("tc-ingress", "encap: {name: push, tunnel: vlan, vid: 100}"))
    try:
        assert pop(tagged) == ("TC_ACT_OK", bytes(base))
        assert pop.counts("pop")["decapsulated"] == 1
        v, out = push(base)
        assert v == "TC_ACT_OK" and push.counts("push")["encapsulated"] == 1
    finally:
        pop.close()
        push.close()


# -- encap ------------------------------------------------------------------------------------

def _ipv4_checksum_ok(hdr: bytes) -> bool:
    total = sum(int.from_bytes(hdr[i:i + 2], "big") for i in range(0, len(hdr), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


ENCAP = {
    "vxlan": "encap: {name: tun, tunnel: vxlan, src: 198.18.0.1, dst: 198.18.0.2, vni: 42, "
             f"src_mac: '{M1}', dst_mac: '{M2}', mtu: 1500}}",
    "geneve": "encap: {name: tun, tunnel: geneve, src: 198.18.0.1, dst: 198.18.0.2, vni: 7}",
    "gre": "encap: {name: tun, tunnel: gre, src: 198.18.0.1, dst: 198.18.0.2, key: 99, ttl: 9}",
    "ipip": "encap: {name: tun, tunnel: ipip, src: 198.18.0.1, dst: 198.18.0.2, mtu: 200, "
            "too_big: pass}",
}


@pytest.fixture(scope="module", params=[(h, t) for h in HOOKS for t in ENCAP],
                ids=lambda p: f"{p[0]}-{p[1]}")
def enc(request, ebp_module_env):
    hook, tunnel = request.param
    r = Run(spec(hook, ENCAP[tunnel]))
    r.hook, r.tunnel = hook, tunnel
    yield r
    r.close()


def test_encap_bytes(enc):
    inner = inner_frame()
    verdict, out = enc(inner)
    assert verdict == PASS[enc.hook]
    o = Ether(out)
    assert o.type == 0x0800 and _ipv4_checksum_ok(out[14:34])
    ip = o[IP]
    assert (ip.src, ip.dst, ip.len, ip.flags.DF) == ("198.18.0.1", "198.18.0.2", len(out) - 14,
                                                    True)
    if enc.tunnel in ("vxlan", "geneve"):
        udp = ip[UDP]
        assert 49152 <= udp.sport <= 65535 and udp.len == len(out) - 34 and udp.chksum == 0
        hdr = 8
        if enc.tunnel == "vxlan":
            assert (udp.dport, o[VXLAN].vni, o[VXLAN].flags) == (4789, 42, 0x08)
            assert (o.src, o.dst) == (M1, M2)
        else:
            assert (udp.dport, o[GENEVE].vni, o[GENEVE].proto) == (6081, 7, 0x6558)
            assert (o.src, o.dst) == (inner.src, inner.dst)   # the frame's own addresses
        assert out[34 + 8 + hdr:] == bytes(inner)               # the whole frame, untouched
    elif enc.tunnel == "gre":
        assert ip.proto == 47 and ip.ttl == 9
        assert (o[GRE].proto, o[GRE].key_present, o[GRE].key) == (0x0800, 1, 99)
        assert out[14 + 20 + 8:] == bytes(inner[IP])
    else:
        assert ip.proto == 4 and out[34:] == bytes(inner[IP])
    assert enc.counts("tun")["encapsulated"] >= 1


def test_encap_source_port_follows_the_flow(enc):
    if enc.tunnel not in ("vxlan", "geneve"):   # no UDP: nothing varies per flow
        outs = {enc(inner_frame(sport=s))[1][14:34] for s in range(1000, 1004)}
        assert len(outs) == 1 and Ether(enc(inner_frame())[1])[IP].proto in (4, 47)
        return
    ports = {Ether(enc(inner_frame(sport=s))[1])[UDP].sport for s in range(1000, 1032)}
    again = {Ether(enc(inner_frame(sport=s))[1])[UDP].sport for s in range(1000, 1032)}
    assert ports == again and len(ports) > 16    # stable per flow, spread over flows


def test_encap_ipv6_inner(enc):
    inner = (Ether(src=M2, dst=M1) / IPv6(src="2001:db8:5::1", dst="2001:db8:9::8")
             / TCP(sport=5, dport=6) / b"v6")
    verdict, out = enc(inner)
    o = Ether(out)
    assert verdict == PASS[enc.hook] and _ipv4_checksum_ok(out[14:34])
    if enc.tunnel == "ipip":
        assert o[IP].proto == 41 and out[34:] == bytes(inner[IPv6])
    elif enc.tunnel == "gre":
        assert o[GRE].proto == 0x86DD and out[42:] == bytes(inner[IPv6])
    else:
        assert out[50:] == bytes(inner)


def test_encap_too_big(enc):
    before = enc.counts("tun")
    big = inner_frame(payload=b"b" * 1460)     # 1508-byte frame: outer IP above 1500
    verdict, out = enc(big)
    after = enc.counts("tun")
    assert after["too_big"] == before["too_big"] + 1
    if enc.tunnel == "ipip":       # mtu 200, too_big: pass: on unchanged
        assert verdict == PASS[enc.hook] and out == bytes(big)
    else:
        assert verdict == DROP[enc.hook]


@pytest.mark.parametrize("hook", HOOKS)
def test_encap_then_decap_round_trip(ebp_module_env, hook):
    r = Run(spec(hook, ENCAP["vxlan"], "decap: {name: back, tunnels: [vxlan]}"))
    try:
        inner = inner_frame()
        assert r(inner) == (PASS[hook], bytes(inner))
        assert r.counts("tun")["encapsulated"] == 1 and r.counts("back")["decapsulated"] == 1
    finally:
        r.close()


# -- spec errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("protocols, stage, words", [
    ("ethernet, ipv4, udp", "decap: {tunnels: [vxlan]}", "needs protocol vxlan"),
    ("ethernet, ipv4, udp", "decap: {header: nosuch}", "no such header"),
    ("ethernet, ipv4, udp", "decap: {}", "needs tunnels: or header:"),
    ("ethernet, ipv4, udp", "decap: {tunnels: [ipip], inner: ip}", "inner: applies to header"),
    ("ethernet, ipv4, udp", "encap: {tunnel: vxlan, src: '2001:db8::1', dst: 198.18.0.2}",
     "must be of one family"),
    ("ethernet, ipv4, udp", "encap: {tunnel: vxlan, src: 198.18.0.1}", "needs dst:"),
    ("ethernet, ipv4, udp", "encap: {tunnel: gre, src: 198.18.0.1, dst: 198.18.0.2, vni: 3}",
     "vni: does not apply"),
    ("ethernet, ipv4, udp", "encap: {tunnel: vxlan, src: 198.18.0.1, dst: 198.18.0.2, "
     "src_mac: '02:00:00:00:00:01'}", "come as a pair"),
    ("ethernet, ipv4", "encap: {tunnel: vlan, vid: 5}", "needs protocol vlan"),
    ("ethernet, vlan, ipv4", "encap: {tunnel: vlan, vid: 4095}", "out of range"),
])
def test_spec_errors(protocols, stage, words):
    with pytest.raises(SpecError) as e:
        parse_spec(spec("xdp", stage, protocols=protocols))
    assert words in str(e.value)


def test_replay_names_the_outcome_that_decided(ebp_module_env):
    r = Run(spec("xdp", "encap: {name: tun, tunnel: ipip, src: 198.18.0.1, dst: 198.18.0.2, "
                        "mtu: 100}"))
    try:
        d = r.rp.run(0, bytes(inner_frame(payload=b"p" * 200)))
        assert (d.verdict, d.stage, d.reason) == ("XDP_DROP", "tun", "too_big")
    finally:
        r.close()


@pytest.mark.parametrize("hook, mode", [("xdp", "separate"), ("tc-ingress", "xdp")])
def test_decap_with_a_parser_of_its_own(ebp_module_env, hook, mode):
    """The parse-info of a separate or XDP parser has no header offsets: decap parses."""
    r = Run(spec(hook, "decap: {name: untun, tunnels: [vxlan]}",
                 "filter: {default: pass, rules: [{dst: 198.18.9.9/32, action: drop}]}")
            .replace("stages:", f"parser: {{mode: {mode}}}\nstages:"))
    try:
        assert r(outer4(UDP(dport=4789) / VXLAN()) / inner_frame("198.18.9.9"))[0] == DROP[hook]
        inner = bytes(inner_frame())
        verdict, out = r(outer4(UDP(dport=4789) / VXLAN()) / inner_frame())
        # test_run's output of an XDP program starts at its metadata: the separate parser's
        # parse-info (moved along by bpf_xdp_adjust_head), then the frame
        meta = len(out) - len(inner)
        assert verdict == PASS[hook] and out.endswith(inner)
        assert meta == (0 if mode == "xdp" else parse_info_size(r.rp.built.gen.user_layout))
    finally:
        r.close()


@pytest.mark.parametrize("hook", HOOKS)
def test_encap_only_to_inner_prefixes(ebp_module_env, hook):
    r = Run(spec(hook, "encap: {name: tun, tunnel: vxlan, src: 198.18.0.1, dst: 198.18.0.2, "
                       "inner_dst: [198.18.9.0/24, '2001:db8:9::/48']}"))
    try:
        v6 = (Ether(src=M2, dst=M1) / IPv6(src="2001:db8:5::1", dst="2001:db8:9:1::8")
              / UDP(sport=5, dport=6))
        for frame in (inner_frame("198.18.9.200"), v6):
            assert VXLAN in Ether(r(frame)[1])
        for frame in (inner_frame("198.18.10.1"), Ether(src=M2, dst=M1)
                      / IPv6(src="2001:db8:5::1", dst="2001:db8:8::1") / UDP()):
            assert r(frame) == (PASS[hook], bytes(frame))
        assert r.counts("tun")["encapsulated"] == 2 and r.counts("tun")["skipped"] == 2
    finally:
        r.close()


def test_spec_round_trips():
    import yaml
    text = spec("tc-egress", "decap: {name: a, tunnels: [vlan, gre, ipip]}",
                "decap: {name: v, tunnels: [geneve], vni: [5, 6]}",
                f"decap: {{name: b, header: tenant, inner: ethernet}}",
                ENCAP["vxlan"].replace("name: tun", "name: c")[:-1] + ", inner_dst: [198.18.9.0/24]}",
                ENCAP["gre"].replace("name: tun", "name: d"),
                "encap: {name: e, tunnel: vlan, vid: 7, pcp: 1, tagged: push}",
                protocols="ethernet, vlan, ipv4, ipv6, udp, gre, geneve, " + str(EXAMPLES / "tenant.p4"))
    s = parse_spec(text)
    again = parse_spec(yaml.safe_dump(s.to_dict()))
    assert again.stages == s.stages


def test_vlan_tagged_outer_keeps_its_tag(decap):
    """An IP packet inside: the outer Ethernet header and its VLAN tag stay (XDP); at TC a tag
    in the packet data (the kernel normally holds it in the skb) is refused, unchanged."""
    ip = IP(src="198.18.5.1", dst="198.18.9.8") / UDP(sport=1, dport=2) / (b"q" * 9)
    frame = bytes(Ether(src=M2, dst=M1) / Dot1Q(vlan=12) / IP(src="198.18.0.2", dst="198.18.0.1")
                  / GRE(proto=0x0800) / ip)
    before = decap.counts("untun")
    verdict, out = decap(frame)
    assert verdict == PASS[decap.hook]
    if decap.hook == "xdp":
        assert out == bytes(Ether(src=M2, dst=M1) / Dot1Q(vlan=12, type=0x0800)) + bytes(ip)
    else:
        assert out == frame and decap.counts("untun")["refused"] == before["refused"] + 1


def test_encap_ip_tunnel_behind_a_vlan_tag(ebp_module_env):
    r = Run(spec("xdp", ENCAP["ipip"]))
    try:
        inner = IP(src="198.18.5.1", dst="198.18.9.8") / UDP(sport=1, dport=2) / b"tagged"
        verdict, out = r(Ether(src=M2, dst=M1) / Dot1Q(vlan=12) / inner)
        o = Ether(out)
        assert verdict == "XDP_PASS" and o[Dot1Q].vlan == 12 and o[Dot1Q].type == 0x0800
        assert o[IP].proto == 4 and out[18 + 20:] == bytes(inner)
        assert _ipv4_checksum_ok(out[18:38])
    finally:
        r.close()


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("tunnel", ["vxlan", "gre", "ipip"])
def test_encap_ipv6_outer(ebp_module_env, hook, tunnel):
    extra = {"vxlan": ", vni: 5", "gre": "", "ipip": ""}[tunnel]
    r = Run(spec(hook, f"encap: {{name: tun, tunnel: {tunnel}, src: '2001:db8::1', "
                       f"dst: '2001:db8::2', ttl: 33{extra}}}"))
    try:
        inner = inner_frame()
        verdict, out = r(inner)
        o = Ether(out)
        ip6 = o[IPv6]
        assert verdict == PASS[hook] and o.type == 0x86DD
        assert (ip6.src, ip6.dst, ip6.hlim) == ("2001:db8::1", "2001:db8::2", 33)
        assert ip6.plen == len(out) - 14 - 40
        if tunnel == "vxlan":
            assert ip6.nh == 17 and o[UDP].len == ip6.plen and o[VXLAN].vni == 5
            assert 49152 <= o[UDP].sport and out[14 + 40 + 16:] == bytes(inner)
            assert ip6.fl != 0 or o[UDP].sport & 0x3fff == 0   # flow label from the hash
        elif tunnel == "gre":
            assert ip6.nh == 47 and o[GRE].proto == 0x0800 and out[14 + 44:] == bytes(inner[IP])
        else:
            assert ip6.nh == 4 and out[14 + 40:] == bytes(inner[IP])
    finally:
        r.close()


def test_example_tunnel_spec(ebp_module_env):
    """examples/tunnel.yaml: decap, a filter on the inner headers, encap for one prefix."""
    from ebplane.spec import load_spec
    s = load_spec(EXAMPLES / "tunnel.yaml")
    with Replayer(s) as r:
        ssh = (Ether(src=M2, dst=M1) / IP(src="198.18.5.1", dst="198.18.9.9")
               / TCP(sport=4000, dport=22))
        d = r.run(0, bytes(outer4(UDP(dport=4789) / VXLAN(vni=3)) / ssh))
        assert (d.verdict, d.stage) == ("XDP_DROP", "inner")
        d = r.run(1, bytes(inner_frame("198.18.210.7")))
        assert d.verdict == "XDP_PASS" and Ether(d.packet)[VXLAN].vni == 42


def test_encap_bare_ethernet_frame(enc):
    """A 14-byte frame: Ethernet tunnels carry it (XDP; TC takes IP skbs only), IP tunnels
    leave it alone; never dropped."""
    bare = bytes(Ether(src=M2, dst=M1, type=0x88B5))
    verdict, out = enc(bare)
    assert verdict == PASS[enc.hook]
    if enc.tunnel in ("vxlan", "geneve") and enc.hook == "xdp":
        assert len(out) == 14 + 36 + 14 and out.endswith(bare)
    else:
        assert out == bare


@pytest.mark.parametrize("tunnel", ["gre", "ipip"])
def test_ip_tunnel_encap_leaves_a_cut_ip_header_alone(ebp_module_env, tunnel):
    """gre and ipip carry the IP packet.  A frame whose EtherType says IPv4/IPv6 but whose
    fixed IP header is cut short used to be counted `failed` and dropped (shorter than 22
    bytes), or encapsulated with the cut header; it goes on unchanged, counted `skipped`,
    as a frame that is not IP does.  (At TC, test_run refuses such frames: XDP only.)"""
    r = Run(spec("xdp", ENCAP[tunnel]))
    try:
        frames = [bytes(Ether(src=M2, dst=M1, type=et)) + bytes(range(n))
                  for et, sizes in ((0x0800, (0, 1, 6, 19)), (0x86DD, (0, 6, 20, 39)))
                  for n in sizes]
        for f in frames:
            assert r(f) == ("XDP_PASS", f), f.hex()
        c = r.counts("tun")
        assert (c["skipped"], c["failed"], c["encapsulated"]) == (len(frames), 0, 0)
        # a whole IP header is still carried
        verdict, out = r(inner_frame())
        assert verdict == "XDP_PASS" and r.counts("tun")["encapsulated"] == 1
    finally:
        r.close()


@pytest.mark.parametrize("hook", HOOKS)
def test_route_after_encap_and_after_decap(ebp_module_env, hook):
    """The stages after an encap see the outer packet, after a decap the inner one: a route
    stage forwards each by the address it now carries (bpf_fib_lookup in a namespace with a
    neighbour for each)."""
    from ebplane.net import iface, netns
    hop_out, hop_in = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    with netns.temporary("ebp-er") as ns:
        for cmd in ("sysctl -qw net.ipv4.ip_forward=1",
                    "ip link add up0 type veth peer name up1", "ip link set up0 up",
                    "ip link set up1 up", "ip addr add 198.18.30.1/24 dev up0",
                    f"ip neigh add 198.18.30.2 lladdr {hop_out} dev up0 nud permanent",
                    f"ip neigh add 198.18.30.3 lladdr {hop_in} dev up0 nud permanent",
                    "ip route add 198.18.0.2/32 via 198.18.30.2",      # the tunnel's far end
                    "ip route add 198.18.9.0/24 via 198.18.30.3"):     # inner destinations
            netns.run(ns.name, cmd.split())
        with netns.enter(ns.name):
            iface.wait_up("up0")
            r = Run(spec(hook, "decap: {name: untun, tunnels: [vxlan]}",
                         "encap: {name: tun, tunnel: vxlan, src: 198.18.0.1, dst: 198.18.0.2, "
                         "vni: 42, inner_dst: [198.18.20.0/24]}", "route: {}"))
            redirect = {"xdp": "XDP_REDIRECT", "tc-ingress": "TC_ACT_REDIRECT"}[hook]
            ctx = None
            if hook != "xdp":
                from ebplane.kernel.libbpf import SkBuff
                idx = iface.ifindex("up1")
                ctx = SkBuff(ifindex=idx, ingress_ifindex=idx)

            me = iface.info("up1").mac   # a router routes frames addressed to it only

            def run(frame):
                res = r.rp.program.test_run(bytes(frame), ctx=ctx)
                return res.verdict, res.data
            try:
                verdict, out = run(inner_frame("198.18.20.5", mac=me))  # outer routed
                assert verdict == redirect and Ether(out)[IP].dst == "198.18.0.2"
                assert Ether(out)[VXLAN].vni == 42
                if hook == "xdp":   # at TC bpf_redirect_neigh writes the MACs on the way out
                    assert Ether(out).dst == hop_out
                outer = Ether(src=M2, dst=me) / IP(src="198.18.0.2", dst="198.18.0.1")
                verdict, out = run(outer / UDP(dport=4789) / VXLAN(vni=1)
                                   / inner_frame("198.18.9.7", mac=me))  # inner routed
                assert verdict == redirect and Ether(out)[IP].dst == "198.18.9.7"
                assert Ether(out)[IP].ttl == 63
                if hook == "xdp":
                    assert Ether(out).dst == hop_in
            finally:
                r.close()


def test_vlan_rewrite_of_a_tag_in_the_data_at_tc(ebp_module_env):
    base = inner_frame()
    r = Run(spec("tc-ingress", "encap: {name: rew, tunnel: vlan, vid: 300, pcp: 1}"))
    try:
        tagged = Ether(src=base.src, dst=base.dst) / Dot1Q(vlan=5, dei=1) / base[IP]
        v, out = r(tagged)
        assert out == bytes(Ether(src=base.src, dst=base.dst) / Dot1Q(vlan=300, prio=1, dei=1)
                            / base[IP])
        assert r.counts("rew")["rewritten"] == 1
    finally:
        r.close()


@pytest.mark.parametrize("hook", HOOKS)
def test_decap_only_some_vnis(ebp_module_env, hook):
    r = Run(spec(hook, "decap: {name: untun, tunnels: [vxlan, geneve], vni: [42, 0x123456]}"))
    try:
        inner = inner_frame()
        for frame in (outer4(UDP(dport=4789) / VXLAN(vni=42)) / inner,
                      outer4(UDP(dport=6081) / GENEVE(vni=0x123456, proto=0x6558)) / inner):
            assert r(frame) == (PASS[hook], bytes(inner))
        for frame in (outer4(UDP(dport=4789) / VXLAN(vni=43)) / inner,
                      outer4(UDP(dport=6081) / GENEVE(vni=0x123457, proto=0x6558)) / inner):
            assert r(frame) == (PASS[hook], bytes(frame))
        assert r.counts("untun")["decapsulated"] == 2 and r.counts("untun")["not_tunnel"] == 2
    finally:
        r.close()


def test_tc_decap_refuses_gro_merged_tunnel_packets(ebp_module_env):
    from ebplane.kernel.programs import SkBuff
    r = Run(spec("tc-ingress", "decap: {name: untun, tunnels: [vxlan]}"))
    try:
        frame = bytes(outer4(UDP(dport=4789) / VXLAN(vni=1)) / inner_frame())
        res = r.rp.program.test_run(frame, ctx=SkBuff(len=0, gso_size=1400, gso_segs=2))
        assert (res.verdict, res.data) == ("TC_ACT_OK", frame)
        assert r.counts("untun")["refused"] == 1
    finally:
        r.close()


def test_vxlan_over_ipv6_decap(decap):
    inner = inner_frame()
    frame = (Ether(src=M2, dst=M1) / IPv6(src="2001:db8::2", dst="2001:db8::1")
             / UDP(sport=4242, dport=4789) / VXLAN(vni=42) / inner)
    assert decap(frame) == (PASS[decap.hook], bytes(inner))
