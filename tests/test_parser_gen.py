"""The generated parser (codegen/p4c.py) against the reference interpreter and scapy.

A harness program runs the generated ``ebp_parse`` on a packet with BPF_PROG_TEST_RUN and
copies ``struct ebp_pkt`` and the return code into a map.  For every library protocol, whole
and cut at every length, and for stacks at and past their bound, the result must be what
``ParserGraph.parse_bytes`` (the P4 semantics in Python) and ebp_pkt's bindings say.
User protocols: a tenant tag after UDP 4789 is matched by a rule through replay; a broken
user .p4 gives a located error through the CLI (exit 2).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from ebplane.codegen.pipeline import Features, spec_parser
from ebplane.kernel.maps import Map
from ebplane.kernel.programs import BpfObject
from ebplane.protocols import ParserGraph
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec
from ebplane.spec.protocol_set import KNOWN_PROTOCOLS
from ebplane.toolchain.clang import compile_c

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4, V6 = "198.18.0.1", "2001:db8::1"
ALL_FLAGS = Features(vlan=True, ipv4=True, ipv6=True, tcp=True, udp=True)

PACKETS = {
    "arp": E / ARP(psrc=V4, pdst="198.18.0.2"),
    "802.3 length": Ether(dst="01:80:c2:00:00:00", type=0x26) / Raw(b"\x42" * 38),
    "unknown ethertype": E / Raw(b"\x00" * 20),
    "vlan udp": E / Dot1Q(vlan=7) / IP(src=V4) / UDP(sport=5, dport=53),
    "qinq (stack bound) tcp": E / Dot1AD(vlan=8) / Dot1Q(vlan=9) / IP(src=V4) / TCP(dport=80),
    "three tags (overflow)": E / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(),
    "mpls ipv4": E / MPLS(label=16, s=1) / IP(src=V4) / UDP(dport=7),
    "mpls x4 (bound) ipv6": E / MPLS(label=1, s=0) / MPLS(label=2, s=0) / MPLS(label=3, s=0)
    / MPLS(label=4, s=1) / IPv6(src=V6) / UDP(dport=9),
    "mpls x5 (overflow)": E / MPLS(s=0) / MPLS(s=0) / MPLS(s=0) / MPLS(s=0) / MPLS(s=1) / IP(),
    "ipv4 udp": E / IP(src=V4, dst="198.18.0.2", ttl=9) / UDP(sport=1000, dport=53),
    "ipv4 options tcp options": E / IP(src=V4, options=[IPOption_NOP()] * 4)
    / TCP(sport=7, dport=22, options=[("MSS", 1460), ("NOP", None)]),
    "ipv4 first fragment": E / IP(src=V4, flags="MF") / UDP(dport=53),
    "ipv4 later fragment": E / IP(src=V4, frag=100) / Raw(b"x" * 16),
    "ipv4 ihl 4": E / IP(src=V4, ihl=4) / UDP(),
    "ipv4 version 5": E / IP(src=V4, version=5) / UDP(),
    "icmp": E / IP(src=V4) / ICMP(type=8),
    "tcp data offset 4": E / IP(src=V4) / TCP(dataofs=4),
    "ipv6 udp": E / IPv6(src=V6, dst="2001:db8::2") / UDP(sport=3, dport=4),
    "ipv6 4 ext (bound) tcp": E / IPv6(src=V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / TCP(dport=443),
    "ipv6 5 ext (overflow)": E / IPv6(src=V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / UDP(),
    "ipv6 first fragment": E / IPv6(src=V6) / IPv6ExtHdrFragment(m=1) / UDP(dport=53),
    "ipv6 later fragment": E / IPv6(src=V6) / IPv6ExtHdrFragment(offset=8) / Raw(b"y" * 8),
    "icmpv6": E / IPv6(src=V6) / ICMPv6EchoRequest(),
    "gre key seq": E / IP(src=V4) / GRE(key_present=1, seqnum_present=1, key=5, sequence_number=6)
    / Raw(b"z" * 4),
    "gre checksum": E / IP(src=V4) / GRE(chksum_present=1) / Raw(b"z" * 4),
    "vxlan": E / IP(src=V4) / UDP(dport=4789) / VXLAN(vni=0x123456) / Raw(b"e" * 14),
    "vxlan without I flag": E / IP(src=V4) / UDP(dport=4789) / VXLAN(flags=0, vni=1),
    "geneve options": E / IP(src=V4) / UDP(dport=6081) / GENEVE(vni=77, optionlen=2)
    / Raw(b"\x00" * 8 + b"p" * 6),
    "gtpu with options": E / IP(src=V4) / UDP(dport=2152) / GTP_U_Header(teid=99, S=1)
    / Raw(b"u" * 4),
}
# the stage-visible result of a packet the parser rejects is only "malformed"
REJECTED = {"three tags (overflow)", "mpls x5 (overflow)", "ipv4 ihl 4", "ipv4 version 5",
            "tcp data offset 4", "ipv6 5 ext (overflow)", "vxlan without I flag"}

PKT_HEAD = struct.Struct("<IHHHHBBBBHH16s16s16sH")


def graph_and_harness(protocols, features: Features):
    """The specialised graph and a loaded harness running its generated parser."""
    graph, user, code = spec_parser(tuple(protocols), features)
    source = "\n".join([
        "// SPDX-License-Identifier: GPL-2.0", code.defines, '#include "ebplane.h"', code.source,
        "struct ebp_out { struct ebp_pkt pkt; int rc; };",
        "struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);",
        "\t__type(key, __u32); __type(value, struct ebp_out); } out SEC(\".maps\");",
        'SEC("xdp") int harness(struct xdp_md *ctx)', "{",
        "\tvoid *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;",
        "\t__u32 zero = 0;", "\tstruct ebp_out *o = bpf_map_lookup_elem(&out, &zero);",
        "\tstruct ebp_pkt pkt = {};", "\tint rc;", "", "\tif (!o)", "\t\treturn XDP_ABORTED;",
        "\trc = ebp_parse(data, data_end, &pkt);", "\to->pkt = pkt;", "\to->rc = rc;",
        "\treturn XDP_PASS;", "}", 'char LICENSE[] SEC("license") = "GPL";'])
    obj = BpfObject.open_bytes(compile_c(source, name="parser_harness").elf, "harness")
    obj.load()
    return graph, user, code, obj


def run(obj: BpfObject, code, frame: bytes) -> dict:
    obj.programs["harness"].test_run(frame)
    raw = obj.maps["out"].lookup(struct.pack("<I", 0))
    (length, l3, l4, eth_proto, vlan, n_vlan, family, proto, flags, sport, dport, src, dst, user,
     user_valid) = PKT_HEAD.unpack_from(raw)
    offs = struct.unpack_from(f"<{(len(raw) - 4 - PKT_HEAD.size) // 2}H", raw, PKT_HEAD.size)
    rc = struct.unpack_from("<i", raw, len(raw) - 4)[0]
    return {"rc": rc, "len": length, "l3_off": l3, "l4_off": l4, "eth_proto": eth_proto,
            "vlan": vlan, "n_vlan": n_vlan, "family": family, "proto": proto, "flags": flags,
            "sport": sport, "dport": dport, "src": src, "dst": dst, "user": user,
            "user_valid": user_valid, "hdr_off": offs}


def expected(graph: ParserGraph, code, frame: bytes, features: Features, user) -> dict:
    """ebp_pkt as the bindings define it, from the reference interpreter's result."""
    r = graph.parse_bytes(frame)
    if r["verdict"] == "reject":
        return {"rc": -1}
    h = r["headers"]
    f = lambda name, field: h[name]["fields"][field]  # noqa: E731
    out = {"rc": 0, "len": len(frame), "l3_off": 0, "l4_off": 0, "eth_proto": 0, "vlan": 0,
           "n_vlan": 0, "family": 0, "proto": 0, "flags": 0, "sport": 0, "dport": 0,
           "src": bytes(16), "dst": bytes(16), "user": bytearray(16), "user_valid": 0}
    l2 = [n for n in ("ethernet", "vlan[0]", "vlan[1]") if n in h]
    if l2:
        last = l2[-1]
        out["eth_proto"] = f(last, "etherType")
        out["l3_off"] = h[last]["offset"] + (14 if last == "ethernet" else 4)
    out["n_vlan"] = sum(1 for n in h if n.startswith("vlan["))
    if "vlan[0]" in h and features.vlan:
        out["vlan"] = f("vlan[0]", "vid")
    if "ipv4" in h:
        out["family"] = 4
        if f("ipv4", "flags") & 1 or f("ipv4", "fragOffset"):
            out["flags"] |= 2
        if features.ipv4:
            out["src"] = f("ipv4", "srcAddr").to_bytes(4, "big") + bytes(12)
            out["dst"] = f("ipv4", "dstAddr").to_bytes(4, "big") + bytes(12)
    if "ipv6" in h:
        out["family"] = 6
        if features.ipv6:
            out["src"] = f("ipv6", "srcAddr").to_bytes(16, "big")
            out["dst"] = f("ipv6", "dstAddr").to_bytes(16, "big")
    if "ipv6_frag[0]" in h:
        out["flags"] |= 2
    if "l4_proto" in r["info"]:
        out["proto"] = r["info"]["l4_proto"]
    if r["info"].get("later_fragment"):
        out["flags"] |= 4
    for l4 in ("tcp", "udp"):
        if l4 in h:
            out["l4_off"] = h[l4]["offset"]
            out["flags"] |= 1
            if getattr(features, l4):
                out["sport"], out["dport"] = f(l4, "srcPort"), f(l4, "dstPort")
    for uf in user.fields:
        elem = uf.path.instance if graph.instances[uf.path.instance].stack is None else \
            f"{uf.path.instance}[{uf.path.index or 0}]"
        if elem in h:
            out["user"][uf.offset:uf.offset + uf.size] = \
                f(elem, uf.path.field).to_bytes(uf.size, "big")
            out["user_valid"] |= 1 << uf.bit
    out["user"] = bytes(out["user"])
    offs = [0xFFFF] * len(graph_offsets(graph, code))
    for name, slot in graph_offsets(graph, code).items():
        if name in h:
            offs[slot] = h[name]["offset"]
    out["hdr_off"] = tuple(offs)
    return out


def graph_offsets(graph: ParserGraph, code) -> dict[str, int]:
    """Element name (``vlan[1]``) -> index in ebp_pkt.hdr_off."""
    out = {}
    for inst in graph.instances.values():
        base = code.header_slots[inst.name]
        for i, elem in enumerate(inst.elements):
            out[elem] = base + i
    return out


def compare(obj, graph, code, user, features, frame: bytes, what: str) -> None:
    want = expected(graph, code, frame, features, user)
    got = run(obj, code, frame)
    if want["rc"] != 0:
        assert got["rc"] == want["rc"], what
        return
    got["hdr_off"] = got["hdr_off"][:len(want["hdr_off"])]
    assert got == want, what


@pytest.fixture(scope="module")
def whole_library():
    features = Features(vlan=True, ipv4=True, ipv6=True, tcp=True, udp=True,
                        fields=("vxlan.vni", "mpls[3].label", "ipv4.ttl", "gtpu.teid"))
    graph, user, code, obj = graph_and_harness(KNOWN_PROTOCOLS, features)
    yield graph, user, code, obj, features
    obj.close()


@pytest.mark.parametrize("name", sorted(PACKETS))
def test_whole_library_parser_equals_reference_whole_and_cut(whole_library, name):
    graph, user, code, obj, features = whole_library
    frame = bytes(PACKETS[name])
    assert (graph.parse_bytes(frame)["verdict"] == "reject") == (name in REJECTED)
    for cut in range(14, len(frame) + 1):  # test_run needs 14 bytes at least
        compare(obj, graph, code, user, features, frame[:cut], f"{name} cut at {cut}")


def test_scapy_expectations_of_the_generated_parser(whole_library):
    """Independent of the interpreter: what scapy says the headers are."""
    graph, user, code, obj, features = whole_library
    offsets = graph_offsets(graph, code)
    p = run(obj, code, bytes(PACKETS["qinq (stack bound) tcp"]))
    assert (p["rc"], p["n_vlan"], p["vlan"], p["eth_proto"], p["l3_off"]) == (0, 2, 8, 0x0800, 22)
    assert (p["family"], p["proto"], p["dport"], p["l4_off"], p["flags"]) == (4, 6, 80, 42, 1)
    assert p["src"][:4] == bytes([198, 18, 0, 1])
    p = run(obj, code, bytes(PACKETS["ipv6 4 ext (bound) tcp"]))
    assert (p["family"], p["proto"], p["dport"]) == (6, 6, 443)
    assert p["hdr_off"][offsets["ipv6_ext[3]"]] == 14 + 40 + 24 and p["l4_off"] == 14 + 40 + 32
    p = run(obj, code, bytes(PACKETS["ipv6 later fragment"]))
    assert p["flags"] == 2 | 4 and p["proto"] == 59  # scapy: no next header
    p = run(obj, code, bytes(PACKETS["vxlan"]))
    vni = user.field("vxlan.vni")
    assert p["user"][vni.offset:vni.offset + 3] == b"\x12\x34\x56" and p["user_valid"] >> vni.bit & 1
    p = run(obj, code, bytes(PACKETS["mpls x4 (bound) ipv6"]))
    lab = user.field("mpls[3].label")
    assert int.from_bytes(p["user"][lab.offset:lab.offset + lab.size], "big") == 4
    assert p["family"] == 6 and p["eth_proto"] == 0x8847 and p["dport"] == 9
    for name in REJECTED:
        assert run(obj, code, bytes(PACKETS[name]))["rc"] == -1, name


@pytest.mark.parametrize("protocols", [("ethernet", "ipv4", "udp"),
                                       ("ethernet", "vlan", "ipv4", "ipv6", "tcp", "udp")])
def test_smaller_protocol_sets_parse_only_their_headers(protocols):
    """Protocols not listed are not parsed: a VLAN tag without vlan ends the parse, a TCP
    header cut short is no harm without tcp.  Fields no stage reads stay empty."""
    features = Features(ipv4=True, udp=True)
    graph, user, code, obj = graph_and_harness(protocols, features)
    try:
        assert set(graph.states) <= {s for s in graph.states}
        assert not any(st.protocol not in protocols for st in graph.states.values())
        assert "srcPort" in graph.needed["udp"] and "checksum" not in graph.needed["udp"]
        for name in sorted(PACKETS):
            frame = bytes(PACKETS[name])
            for cut in range(14, len(frame) + 1):
                compare(obj, graph, code, user, features, frame[:cut], f"{name} cut at {cut}")
        p = run(obj, code, bytes(PACKETS["vlan udp"]))
        if "vlan" in protocols:
            assert p["n_vlan"] == 1 and p["vlan"] == 0  # vlan not wanted: id not loaded
        else:
            assert p["eth_proto"] == 0x8100 and p["family"] == 0
    finally:
        obj.close()


# -- user protocols ---------------------------------------------------------------------------

TENANT_PORT = 4789


def tenant_frame(tenant: int, app: int, version: int = 1, src: str = V4) -> bytes:
    tag = bytes([version << 4]) + tenant.to_bytes(3, "big") + app.to_bytes(2, "big") + bytes(2)
    return bytes(E / IP(src=src) / UDP(sport=1, dport=TENANT_PORT) / Raw(tag + b"payload"))


def test_user_protocol_file_matched_by_rules_in_replay():
    spec = parse_spec((EXAMPLES / "tenant.yaml").read_text(), str(EXAMPLES / "tenant.yaml"))
    with Replayer(spec) as rp:
        def decide(frame):
            d = rp.run(0, frame)
            return d.verdict, d.rule, d.reason
        assert decide(tenant_frame(7, 5)) == ("XDP_DROP", 0, "rule")
        assert decide(tenant_frame(8, 150)) == ("XDP_DROP", 1, "rule")
        assert decide(tenant_frame(8, 99)) == ("XDP_PASS", None, "default")
        assert decide(tenant_frame(0x1A5, 250, src="198.18.3.3")) == ("XDP_PASS", 2, "rule")
        assert decide(tenant_frame(0x2A5, 250, src="198.18.3.3")) == ("XDP_PASS", None, "default")
        # a bad version is rejected by the user's parser: malformed
        assert decide(tenant_frame(7, 5, version=2)) == ("XDP_DROP", None, "malformed")
        # no tenant header (another port): the match: rules cannot match, even on zeros
        other = bytes(E / IP(src=V4) / UDP(dport=53) / Raw(bytes(8)))
        assert decide(other) == ("XDP_PASS", None, "default")


BROKEN = """\
#include <core.p4>
header tenant_t { bit<8> id; }
struct headers_t { tenant_t tenant; }
parser TenantParser(packet_in pkt, out headers_t hdr) {
    @ebplane_reach("parse_udp", 4789)
    state parse_tenant {
        pkt.extract(hdr.tenant)
        transition accept;
    }
}
"""


def test_broken_user_protocol_gives_located_error(tmp_path):
    (tmp_path / "tenant.p4").write_text(BROKEN)
    spec = tmp_path / "t.yaml"
    spec.write_text("pipeline: t\nhook: xdp\nprotocols: [ethernet, ipv4, udp, tenant.p4]\n"
                    "stages:\n  - filter:\n      rules:\n"
                    "        - {match: {tenant.id: 1}, action: drop}\n")
    pcap = tmp_path / "empty.pcap"
    pcap.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for cmd in (["replay", str(spec), "--pcap", str(pcap)], ["parser", "show", str(spec)]):
        proc = subprocess.run([sys.executable, "-m", "ebplane.cli.main", *cmd],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert f"{tmp_path / 'tenant.p4'}:8:" in proc.stderr, proc.stderr
        assert "transition accept;" in proc.stderr  # the source line is shown


def test_match_on_unknown_field_of_user_protocol_is_located(tmp_path):
    (tmp_path / "tenant.p4").write_text((EXAMPLES / "tenant.p4").read_text())
    text = ("pipeline: t\nhook: xdp\nprotocols: [ethernet, ipv4, udp, tenant.p4]\n"
            "stages:\n  - filter:\n      rules:\n"
            "        - {match: {tenant.vni: 1}, action: drop}\n")
    from ebplane.errors import SpecError
    with pytest.raises(SpecError) as info:
        parse_spec(text, str(tmp_path / "t.yaml"))
    err = info.value
    assert (err.line, err.field) == (7, "stages[0].filter.rules[0].match.tenant.vni")
    assert "no field 'vni'" in err.reason and "id" in err.allowed


def test_cli_parser_show_and_export(tmp_path):
    spec = EXAMPLES / "tenant.yaml"
    cli = [sys.executable, "-m", "ebplane.cli.main", "parser"]
    show = subprocess.run([*cli, "show", str(spec)], capture_output=True, text=True, check=True)
    assert "parse_udp --udp.dstPort == 0x12b5--> parse_tenant" in show.stdout  # 4789
    assert "parse-info layout" in show.stdout and "tenant_off" in show.stdout
    js = subprocess.run([*cli, "show", str(spec), "--json"], capture_output=True, text=True,
                        check=True)
    import json
    d = json.loads(js.stdout)
    needed = {f["name"]: f["needed"] for f in d["parser"]["headers"]["tenant"]["fields"]}
    # id and app: rules read them; version: the parser selects on it; the rest is skipped
    assert needed == {"version": True, "flags": False, "id": True, "app": True,
                      "reserved": False}
    assert d["user_layout"][0]["field"] == "tenant.app"
    out = tmp_path / "p.p4"
    subprocess.run([*cli, "export", str(spec), "-o", str(out)], check=True)
    from ebplane.protocols import parse_protocol_text
    m = parse_protocol_text(out.read_text(), "exported")
    assert "parse_tenant" in m.states and "parse_udp" in m.states
    stdout = subprocess.run([*cli, "export", str(spec)], capture_output=True, text=True,
                            check=True).stdout
    assert stdout == out.read_text()
