"""The P4-16 subset front end, the protocol library, composition and the reference interpreter."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from ebplane.errors import SpecError
from ebplane.protocols import (ParserGraph, build_parser, load_library, load_protocol_file,
                               parse_protocol_text)

MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"
IP4_A, IP4_B = "198.18.0.1", "198.19.0.2"
IP6_A, IP6_B = "2001:db8::1", "2001:db8::2"
LIBRARY = ["ethernet", "vlan", "mpls", "arp", "ipv4", "ipv6", "tcp", "udp", "icmp", "icmpv6",
           "gre", "vxlan", "geneve", "gtpu"]

HEADER = """#include <core.p4>
"""
TENANT = """#include <core.p4>
// A tenant tag carried after UDP port 4789 instead of VXLAN.
header tenant_t {
    bit<16> tenant;
    bit<8>  flags;
    bit<8>  nextProto;
}
struct headers_t { tenant_t tenant; }
struct parse_info_t { bit<8> tenant_class; }
parser TenantParser(packet_in pkt, out headers_t hdr, inout parse_info_t info) {
    @ebplane_reach("parse_udp", 4789)
    state parse_tenant {
        pkt.extract(hdr.tenant);
        info.tenant_class = hdr.tenant.flags & 0x0f;
        transition select(hdr.tenant.tenant) {
            0: reject;
            default: accept;
        }
    }
}
"""


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def full() -> ParserGraph:
    return build_parser(LIBRARY)


# -- the library ------------------------------------------------------------------

def test_library_has_every_protocol_of_the_issue():
    assert set(load_library().names()) == set(LIBRARY)


@pytest.mark.parametrize("name", LIBRARY)
def test_every_library_file_parses(name):
    m = load_library()[name]
    assert m.name == name and m.entry in m.states and m.instances
    for st in m.states.values():
        assert st.protocol == name and st.loc.file.endswith(f"{name}.p4") and st.loc.line > 0


def test_whole_library_composes(full):
    assert full.start == "parse_ethernet"
    assert {st.protocol for st in full.states.values()} == set(LIBRARY)
    assert full.instances["vlan"].stack == 2 and full.instances["mpls"].stack == 4
    assert full.instances["ipv6_ext"].stack == 4
    # every target is a kept state or final
    for _, _, target in full.edges():
        assert target in full.states or target in ("accept", "reject")


def test_composition_prunes_unselected_protocols():
    g = build_parser(["ethernet", "ipv4", "udp"], needed_fields={"ipv4.dstAddr"})
    assert {st.protocol for st in g.states.values()} == {"ethernet", "ipv4", "udp"}
    assert not any("vlan" in s or "ipv6" in s or "tcp" in s or "vxlan" in s for s in g.states)
    assert set(g.instances) == {"ethernet", "ipv4", "udp"}
    # udp's select only had cases to tunnels: it becomes a direct accept
    assert g.states["parse_udp"].transition.__class__.__name__ == "Direct"
    eth_targets = {t for a, _, t in g.edges() if a == "parse_ethernet"}
    assert eth_targets == {"parse_ipv4", "accept"}
    # specialisation: only fields read by the parser or asked for are loaded
    assert g.needed["ipv4"] == ("version", "ihl", "fragOffset", "protocol", "dstAddr")
    assert g.needed["ethernet"] == ("etherType",)
    assert g.needed["udp"] == ()
    assert "ipv4_srcAddr" not in {s.name for s in g.layout.slots}
    assert "ipv4_dstAddr" in {s.name for s in g.layout.slots}


def test_tunnels_are_pruned_but_kept_when_listed():
    g = build_parser(["ethernet", "ipv6", "udp", "vxlan"])
    assert "parse_vxlan" in g.states and "parse_geneve" not in g.states
    assert [t for a, _, t in g.edges() if a == "parse_udp"] == ["parse_vxlan", "accept"]


def test_start_is_the_protocol_nobody_reaches():
    g = build_parser(["udp", "ipv4", "ethernet"])
    assert g.start == "parse_ethernet"


def test_unreached_protocol_is_refused():
    with pytest.raises(SpecError) as e:
        build_parser(["ethernet", "udp"])
    assert "'udp' is never reached" in str(e.value)
    assert "ipv4" in e.value.hint and "ipv6" in e.value.hint


def test_unknown_protocol_lists_the_library():
    with pytest.raises(SpecError) as e:
        build_parser(["ethernet", "ipv5"])
    assert "unknown protocol 'ipv5'" in str(e.value) and "ipv6" in str(e.value)


def test_needed_field_names_are_checked():
    with pytest.raises(SpecError) as e:
        build_parser(["ethernet", "ipv4"], needed_fields={"ipv4.dst"})
    assert "no field 'dst'" in str(e.value) and "dstAddr" in str(e.value)
    with pytest.raises(SpecError) as e:
        build_parser(["ethernet", "ipv4"], needed_fields={"tcp.dstPort"})
    assert e.value.hint == "add tcp to protocols:"
    g = build_parser(["ethernet", "vlan", "ipv4"], needed_fields={"vlan[1].vid"})
    assert str(g.resolve_field("vlan[1].vid")) == "vlan[1].vid"
    assert "vlan_1_vid" in {s.name for s in g.layout.slots}
    with pytest.raises(SpecError):
        g.resolve_field("vlan[2].vid")


@pytest.mark.parametrize("key, value, lo, hi, mask", [
    ("ipv4.dstAddr", "198.18.0.0/15", 0xC6120000, 0xC6120000, 0xFFFE0000),
    ("ipv4.dstAddr", "198.18.0.1", 0xC6120001, 0xC6120001, 0xFFFFFFFF),
    ("udp.dstPort", 53, 53, 53, 0xFFFF),
    ("udp.dstPort", "1024-2047", 1024, 2047, 0xFFFF),
    ("udp.dstPort", "0x1000/0xf000", 0x1000, 0x1000, 0xF000),
    ("ipv6.srcAddr", "2001:db8::/32", 0x20010DB8 << 96, 0x20010DB8 << 96,
     ((1 << 32) - 1) << 96),
    ("ethernet.srcAddr", "02:00:00:00:00:01", 0x020000000001, 0x020000000001, (1 << 48) - 1),
])
def test_rule_match_values(key, value, lo, hi, mask):
    g = build_parser(["ethernet", "ipv4", "ipv6", "udp"])
    m = g.parse_match(key, value)
    assert (m.lo, m.hi, m.mask, str(m.field)) == (lo, hi, mask, key)


@pytest.mark.parametrize("key, value, message", [
    ("udp.dstPort", 70000, "does not fit in bit<16>"),
    ("udp.dstPort", "9-3", "empty range"),
    ("ipv4.dstAddr", "2001:db8::1", "IPv6 address does not fit bit<32>"),
    ("ipv4.dstAddr", "10.0.0.0/33", "prefix length must be 0..32"),
    ("ipv4.dstAddr", "ten", "not a value"),
])
def test_rule_match_errors(key, value, message):
    g = build_parser(["ethernet", "ipv4", "udp"])
    with pytest.raises(SpecError) as e:
        g.parse_match(key, value)
    assert message in str(e.value) and key in str(e.value)


def test_layout_is_aligned_and_without_overlap(full):
    end = 0
    for s in sorted(full.layout.slots, key=lambda s: s.offset):
        assert s.offset >= end
        if s.size in (2, 4):
            assert s.offset % s.size == 0
        end = s.offset + s.size
    assert full.layout.size >= end and full.layout.size % 4 == 0


def test_describe_and_json(full):
    text = full.describe()
    assert "parse_ethernet --ethernet.etherType == ETHERTYPE_IPV4--> parse_ipv4" in text
    assert "parse_ipv6_next --info.l4_proto == 44--> parse_ipv6_frag" in text
    assert "parse-info layout" in text
    d = json.loads(json.dumps(full.to_dict()))
    assert d["start"] == "parse_ethernet"
    assert d["headers"]["ipv4"]["bytes"] == 20


# -- errors -----------------------------------------------------------------------

def error_of(tmp_path, text: str, name: str = "bad.p4") -> SpecError:
    path = write(tmp_path, name, text)
    with pytest.raises(SpecError) as e:
        load_protocol_file(path)
    return e.value


def caret_column(err: SpecError) -> int:
    """Column (1-based) under which the caret of the error's text sits."""
    lines = str(err).splitlines()
    caret = next(line for line in lines if line.strip() == "^")
    return len(caret) - 4  # the source and caret lines are indented by 4


def test_syntax_error_has_location_caret_and_expected(tmp_path):
    text = HEADER + "header h_t {\n    bit<8> a\n}\n"
    err = error_of(tmp_path, text)
    assert (err.line, err.column) == (4, 1)
    s = str(err)
    assert re.match(r".*bad\.p4:4:1: unexpected '\}'; expected ';'", s)
    assert "\n    }\n    ^" in s


def test_syntax_error_lists_several_expected(tmp_path):
    text = HEADER + "header h_t { bit<8> a; }\nstruct headers_t { h_t h; }\n" \
        "parser P(packet_in pkt, out headers_t hdr) {\n    state s {\n" \
        "        pkt.extract(hdr.h);\n        transition select(hdr.h.a) { 1 parse_x; }\n" \
        "    }\n}\n"
    err = error_of(tmp_path, text)
    assert err.line == 7 and "unexpected 'parse_x'; expected one of" in str(err)
    assert "':'" in str(err) and "'&&&'" in str(err)
    assert caret_column(err) == err.column == text.splitlines()[6].index("parse_x") + 1


def test_unexpected_character(tmp_path):
    err = error_of(tmp_path, HEADER + "header h_t { bit<8> a$; }\n")
    assert err.line == 2 and "unexpected character '$'" in str(err)
    assert caret_column(err) == 22


PARSER = """#include <core.p4>
header h_t {{ bit<8> a; bit<16> b; }}
struct headers_t {{ h_t h; h_t[2] hs; }}
struct parse_info_t {{ bit<8> m; }}
parser P(packet_in pkt, out headers_t hdr, inout parse_info_t info) {{
{body}
}}
"""


@pytest.mark.parametrize("body, message, where", [
    ("state s { pkt.extract(hdr.h); transition select(hdr.h.c) { default: accept; } }",
     "header type 'h_t' has no field 'c'", "c)"),
    ("state s { pkt.extract(hdr.x); transition accept; }", "unknown header 'x'", "x)"),
    ("state s { info.m = hdr.h.b; transition accept; }",
     "width mismatch in assignment to info.m: expected bit<8>, got bit<16>", "hdr.h.b"),
    ("state s { info.m = hdr.h.a + hdr.h.b; transition accept; }",
     "width mismatch: bit<8> + bit<16>", "+"),
    ("state s { transition select(hdr.h.a, hdr.h.b) { 1: accept; default: reject; } }",
     "case has 1 value(s) but select has 2 key(s)", "1:"),
    ("state s { transition select(hdr.h.a) { 300: accept; default: reject; } }",
     "value 0x12c does not fit in bit<8>", "300"),
    ("state s { transition t; } state s { transition accept; }", "duplicate state 's'", "s {"),
    ("state s { transition nowhere; }", "unknown state 'nowhere'", "nowhere"),
    ("state s { transition accept; } state t { transition accept; }",
     "state 't' is never reached", "t {"),
    ("state s { pkt.extract(hdr.hs); transition accept; }",
     "'hs' is a header stack; extract hdr.hs.next", "hdr.hs"),
    ("state s { pkt.advance(hdr.h.a); transition accept; }",
     "width mismatch in advance: expected bit<32>, got bit<8>", "hdr.h.a"),
    ("state s { pkt.skip(8); transition accept; }", "unknown packet method 'skip'", "skip"),
])
def test_semantic_errors_are_located(tmp_path, body, message, where):
    text = PARSER.format(body=body)
    err = error_of(tmp_path, text)
    assert message in str(err)
    line = text.splitlines()[err.line - 1]
    assert line[err.column - 1:].startswith(where)
    assert caret_column(err) == err.column
    assert err.hint or "expected" in str(err) or "duplicate" in str(err)


def test_unbounded_cycle_is_refused_with_its_path(tmp_path):
    body = ("state parse_a { pkt.extract(hdr.h); transition parse_b; }\n"
            "state parse_b { transition select(hdr.h.a) { 1: parse_a; default: accept; } }")
    text = PARSER.format(body=body)
    with pytest.raises(SpecError) as e:
        build_parser([parse_protocol_text(text, "loop", "loop.p4")])
    assert "parser loop that nothing bounds: parse_a -> parse_b -> parse_a" in str(e.value)
    assert "header stack" in e.value.hint


def test_self_loop_through_a_stack_is_bounded(tmp_path):
    body = ("state parse_a { pkt.extract(hdr.hs.next); "
            "transition select(hdr.hs.last.a) { 1: parse_a; default: accept; } }")
    g = build_parser([parse_protocol_text(PARSER.format(body=body), "loop", "loop.p4")])
    assert g.parse_bytes(bytes([1, 0, 0, 2, 0, 0]))["verdict"] == "accept"
    too_many = g.parse_bytes(bytes([1, 0, 0, 1, 0, 0, 1, 0, 0]))
    assert (too_many["verdict"], too_many["error"]) == ("reject", "StackOutOfBounds")


def test_library_loops_are_bounded_by_stacks(full):
    # the cycles of the library all go through a stack extract
    for name in ("parse_vlan", "parse_mpls", "parse_ipv6_ext", "parse_ipv6_frag"):
        assert full.states[name].extracts_stack


def test_only_core_p4_may_be_included(tmp_path):
    err = error_of(tmp_path, '#include "ethernet.p4"\n')
    assert "unsupported include" in str(err) and err.line == 1


# -- user protocols -------------------------------------------------------------

def test_user_protocol_hooks_into_the_library(tmp_path):
    path = write(tmp_path, "tenant.p4", TENANT)
    g = build_parser(["ethernet", "ipv4", "udp", path], needed_fields={"tenant.tenant"})
    assert g.states["parse_udp"].transition.cases[0].target == "parse_tenant"
    assert g.needed["tenant"] == ("tenant", "flags")
    pkt = (Ether() / IP(src=IP4_A, dst=IP4_B) / UDP(sport=1, dport=4789)
           / bytes([0x12, 0x34, 0xa5, 4]) / IP(src=IP4_B, dst=IP4_A))
    r = g.parse_bytes(bytes(pkt))
    assert r["verdict"] == "accept"
    assert r["headers"]["tenant"] == {"offset": 42, "fields": {"tenant": 0x1234, "flags": 0xa5,
                                                                "nextProto": 4}}
    assert r["info"]["tenant_class"] == 5 and r["end"] == 46
    zero = g.parse_bytes(bytes(Ether() / IP() / UDP(dport=4789) / bytes(4)))
    assert (zero["verdict"], zero["error"]) == ("reject", "Reject")
    other = g.parse_bytes(bytes(Ether() / IP() / UDP(dport=53) / b"dns"))
    assert "tenant" not in other["headers"]


def test_user_protocol_looping_back_into_the_library_is_refused(tmp_path):
    inner = TENANT.replace("0: reject;", "0x0800: parse_ipv4;")
    with pytest.raises(SpecError) as e:
        build_parser(["ethernet", "ipv4", "udp", write(tmp_path, "tenant.p4", inner)])
    assert ("parse_ipv4 -> parse_ipv4_payload -> parse_udp -> parse_tenant -> parse_ipv4"
            in str(e.value))


def test_user_protocol_conflicting_with_a_listed_one(tmp_path):
    path = write(tmp_path, "tenant.p4", TENANT)
    with pytest.raises(SpecError) as e:
        build_parser(["ethernet", "ipv4", "udp", "vxlan", path])
    assert "already goes to 'parse_vxlan'" in str(e.value) and "tenant.p4:" in str(e.value)
    assert "leave protocol 'vxlan' out" in e.value.hint


def test_user_protocol_bad_hook_parent(tmp_path):
    err = error_of(tmp_path, TENANT.replace('"parse_udp"', '"parse_udpp"'), "tenant.p4")
    assert "unknown parent state 'parse_udpp'" in str(err) and err.line == 11


def test_user_protocol_may_not_shadow_library_names(tmp_path):
    err = error_of(tmp_path, TENANT, "ipv4.p4")
    assert "name of library protocol 'ipv4'" in str(err)


def test_varbit_header(tmp_path):
    text = """#include <core.p4>
header opts_t { bit<8> len; varbit<64> data; }
struct headers_t { opts_t opts; }
parser P(packet_in pkt, out headers_t hdr) {
    @ebplane_reach("parse_udp", 7777)
    state parse_opts {
        pkt.extract(hdr.opts, (bit<32>)pkt.lookahead<bit<8>>() * 8);
        transition accept;
    }
}
"""
    g = build_parser(["ethernet", "ipv4", "udp", write(tmp_path, "opts.p4", text)])
    r = g.parse_bytes(bytes(Ether() / IP() / UDP(dport=7777) / bytes([2, 0xaa, 0xbb, 0xcc])))
    assert r["headers"]["opts"]["fields"] == {"len": 2, "data": b"\xaa\xbb"}
    assert r["end"] == 14 + 20 + 8 + 3


# -- export round trip ------------------------------------------------------------

@pytest.mark.parametrize("protocols", [["ethernet", "ipv4", "udp"], LIBRARY])
def test_export_reparses_to_the_same_parser(tmp_path, protocols):
    g = build_parser(protocols)
    text = g.to_p4()
    assert "parser EbplaneParser(packet_in pkt, out headers_t hdr" in text
    again = build_parser([parse_protocol_text(text, "exported", "exported.p4")])
    assert again.to_p4().splitlines()[1:] == text.splitlines()[1:]
    assert [e for e in again.edges() if e[0] != "start"] == g.edges()
    pkt = bytes(Ether() / Dot1Q(vlan=3) / IP(dst=IP4_B) / UDP(dport=4789) / VXLAN(vni=7))
    a, b = g.parse_bytes(pkt), again.parse_bytes(pkt)
    assert a["headers"] == b["headers"] and a["verdict"] == b["verdict"]


# -- reference interpreter against scapy-built packets ---------------------------

def ip4(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def mac(s: str) -> int:
    return int(s.replace(":", ""), 16)


def fields(r: dict, name: str) -> dict:
    return r["headers"][name]["fields"]


def parse(full: ParserGraph, pkt) -> dict:
    raw = bytes(pkt)
    r = full.parse_bytes(raw)
    assert r["verdict"] == "accept", r
    return r


def test_ethernet_and_arp(full):
    r = parse(full, Ether(src=MAC_A, dst=MAC_B) / ARP(op=2, psrc=IP4_A, pdst=IP4_B, hwsrc=MAC_A))
    assert fields(r, "ethernet") == {"dstAddr": mac(MAC_B), "srcAddr": mac(MAC_A),
                                     "etherType": 0x0806}
    arp = fields(r, "arp")
    assert (arp["oper"], arp["spa"], arp["tpa"], arp["sha"]) == (2, ip4(IP4_A), ip4(IP4_B),
                                                                 mac(MAC_A))
    assert r["end"] == 42


def test_vlan_qinq_and_overflow(full):
    r = parse(full, Ether() / Dot1AD(vlan=100, prio=5) / Dot1Q(vlan=200) / IP() / ICMP())
    assert fields(r, "vlan[0]")["vid"] == 100 and fields(r, "vlan[0]")["pcp"] == 5
    assert fields(r, "vlan[1]")["vid"] == 200 and fields(r, "vlan[1]")["etherType"] == 0x0800
    assert r["headers"]["ipv4"]["offset"] == 22
    r = full.parse_bytes(bytes(Ether() / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP()))
    assert (r["verdict"], r["error"]) == ("reject", "StackOutOfBounds")


def test_mpls_stack_then_ipv6_by_lookahead(full):
    r = parse(full, Ether() / MPLS(label=16, s=0, ttl=9) / MPLS(label=17, s=1)
              / IPv6(src=IP6_A, dst=IP6_B) / UDP(dport=9))
    assert [fields(r, f"mpls[{i}]")["label"] for i in (0, 1)] == [16, 17]
    assert fields(r, "mpls[0]")["ttl"] == 9
    assert fields(r, "ipv6")["dstAddr"] == int(ipaddress.IPv6Address(IP6_B))
    assert fields(r, "udp")["dstPort"] == 9


def test_ipv4_options_tcp_options(full):
    r = parse(full, Ether() / IP(src=IP4_A, dst=IP4_B, options=b"\x01" * 8)
              / TCP(sport=1234, dport=80, flags="S", options=[("MSS", 1460), ("NOP", None),
                                                              ("NOP", None)]) / b"data")
    v4 = fields(r, "ipv4")
    assert (v4["ihl"], v4["srcAddr"], v4["dstAddr"], v4["protocol"]) == (7, ip4(IP4_A),
                                                                         ip4(IP4_B), 6)
    assert r["headers"]["tcp"]["offset"] == 14 + 28
    tcp = fields(r, "tcp")
    assert (tcp["srcPort"], tcp["dstPort"], tcp["flags"], tcp["dataOffset"]) == (1234, 80, 2, 7)
    assert r["end"] == 14 + 28 + 28 and r["info"]["l4_proto"] == 6


def test_ipv4_malformed_and_fragments(full):
    bad = bytearray(bytes(Ether() / IP() / UDP()))
    bad[14] = 0x44  # ihl 4
    assert full.parse_bytes(bytes(bad))["verdict"] == "reject"
    r = parse(full, Ether() / IP(frag=100, proto=17) / (b"\x00" * 8))
    assert "udp" not in r["headers"] and r["info"]["later_fragment"] == 1
    r = parse(full, Ether() / IP(flags="MF", frag=0) / UDP(dport=5))
    assert fields(r, "udp")["dstPort"] == 5 and r["info"]["later_fragment"] == 0
    short = full.parse_bytes(bytes(Ether() / IP() / UDP())[:40])
    assert (short["verdict"], short["error"]) == ("reject", "PacketTooShort")


def test_ipv6_extension_headers(full):
    r = parse(full, Ether() / IPv6(src=IP6_A, dst=IP6_B) / IPv6ExtHdrHopByHop()
              / IPv6ExtHdrRouting(addresses=[IP6_A]) / IPv6ExtHdrDestOpt()
              / IPv6ExtHdrFragment(offset=0, m=1) / TCP(dport=443))
    assert [fields(r, f"ipv6_ext[{i}]")["nextHdr"] for i in range(3)] == [43, 60, 44]
    assert r["headers"]["ipv6_ext[1]"]["offset"] == 14 + 40 + 8
    assert fields(r, "ipv6_frag[0]")["more"] == 1
    assert fields(r, "tcp")["dstPort"] == 443 and r["info"]["l4_proto"] == 6
    r = parse(full, Ether() / IPv6() / IPv6ExtHdrFragment(offset=10, nh=17) / (b"\x00" * 8))
    assert "udp" not in r["headers"] and r["info"]["later_fragment"] == 1
    r = full.parse_bytes(bytes(Ether() / IPv6() / IPv6ExtHdrFragment() / IPv6ExtHdrFragment()
                               / UDP()))
    assert r["error"] == "StackOutOfBounds"


def test_icmp_and_icmpv6(full):
    r = parse(full, Ether() / IP() / ICMP(type=8, id=7, seq=9))
    assert fields(r, "icmp")["type"] == 8 and fields(r, "icmp")["restOfHeader"] == (7 << 16) | 9
    r = parse(full, Ether() / IPv6() / ICMPv6EchoRequest())
    assert fields(r, "icmpv6")["type"] == 128


def test_gre_with_key_and_sequence(full):
    r = parse(full, Ether() / IP() / GRE(key_present=1, key=0xdead, seqnum_present=1, sequence_number=5)
              / IP())
    assert fields(r, "gre_key")["key"] == 0xdead and fields(r, "gre_seq")["seqNo"] == 5
    assert "gre_checksum" not in r["headers"] and fields(r, "gre")["protocol"] == 0x0800


def test_udp_tunnels(full):
    r = parse(full, Ether() / IP() / UDP(dport=4789) / VXLAN(vni=0xabcde) / Ether())
    assert fields(r, "vxlan")["vni"] == 0xabcde
    bad = full.parse_bytes(bytes(Ether() / IP() / UDP(dport=4789) / VXLAN(flags=0, vni=1)))
    assert bad["verdict"] == "reject"
    r = parse(full, Ether() / IPv6() / UDP(dport=6081) / GENEVE(vni=77, optionlen=1)
              / (b"\x00" * 4) / Ether())
    assert fields(r, "geneve")["vni"] == 77 and r["end"] == 14 + 40 + 8 + 8 + 4
    r = parse(full, Ether() / IP() / UDP(dport=2152) / GTP_U_Header(teid=0x1234, S=1, seq=3) / IP())
    assert fields(r, "gtpu")["teid"] == 0x1234 and fields(r, "gtpu_opt")["seqNo"] == 3
