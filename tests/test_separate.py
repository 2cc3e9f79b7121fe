"""Separate parser mode: a parser program hands a parse-info to the stage program in the XDP
metadata area and tail-calls it.  Fused and separate give the same verdicts on the same
packets; a parse-info over 32 bytes is refused at compile time naming the fields; an XDP
parser's metadata is read by a TC program on the same packet (XDP and TC cooperating)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from ebplane.codegen.pipeline import generate
from ebplane.errors import SpecError
from ebplane.kernel.programs import BpfObject
from ebplane.net import attach as att
from ebplane.net import netns as _netns
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec
from ebplane.toolchain.clang import compile_c

from pipeline_fixtures import send_frames

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

EDGE = """\
pipeline: {name}
hook: xdp
protocols: [ethernet, vlan, ipv4, ipv6, tcp, udp, icmp, icmpv6]
parser: {{mode: {mode}}}
stages:
  - filter:
      name: acl
      default: next
      rules:
        - {{src: 198.18.0.0/24, proto: udp, dport: 53, action: drop}}
        - {{dst: "2001:db8::/32", proto: tcp, dport: "22-23", action: drop}}
        - {{vlan: 100, action: pass}}
        - {{match: {{ipv4.ttl: "1-2"}}, action: drop}}
  - count: {{}}
  - filter:
      name: last
      default: pass
      rules:
        - {{proto: icmp, action: drop}}
"""


def tag(tenant: int, app: int, version: int = 1) -> bytes:
    return bytes([version << 4]) + tenant.to_bytes(3, "big") + app.to_bytes(2, "big") + bytes(2)


CORPUS = [
    E / IP(src="198.18.0.9") / UDP(dport=53),
    E / IP(src="198.18.1.9") / UDP(dport=53),
    E / IPv6(dst="2001:db8::5") / TCP(dport=22),
    E / IPv6(dst="2001:db8::5") / IPv6ExtHdrHopByHop() / TCP(dport=23),
    E / IPv6(dst="2001:db8::5") / IPv6ExtHdrFragment(offset=3) / Raw(b"x" * 8),
    E / Dot1Q(vlan=100) / IP(src="198.18.0.9") / UDP(dport=53),
    E / Dot1Q(vlan=5) / Dot1Q(vlan=6) / Dot1Q(vlan=7) / IP(),
    E / IP(ttl=2) / TCP(),
    E / IP(ttl=64) / ICMP(),
    E / IP(src="198.18.0.9", ihl=4) / UDP(dport=53),
    E / Raw(b"\x08\x00\x45"),
    E / IP(src="198.18.0.9") / UDP(dport=4789) / Raw(tag(7, 5)),
    E / IP(src="198.18.0.9") / UDP(dport=4789) / Raw(tag(9, 150)),
    E / IP(src="198.18.3.3") / UDP(dport=4789) / Raw(tag(0x1A5, 1)),
    E / IP(src="198.18.0.9") / UDP(dport=4789) / Raw(tag(9, 5, version=3)),
    E / IP(src="198.18.0.9") / UDP(dport=4789) / Raw(tag(9, 5)[:5]),
]


def decisions(spec_text: str, source: str) -> list[tuple]:
    with Replayer(parse_spec(spec_text, source)) as rp:
        return [(d.verdict, d.stage, d.rule, d.reason)
                for d in rp.run_all(bytes(p) for p in CORPUS)]


def test_fused_and_separate_give_identical_verdicts():
    fused = decisions(EDGE.format(name="edge-f", mode="fused"), "edge.yaml")
    separate = decisions(EDGE.format(name="edge-s", mode="separate"), "edge.yaml")
    assert fused == separate
    assert {d[0] for d in fused} == {"XDP_DROP", "XDP_PASS"}
    assert {d[3] for d in fused} >= {"rule", "malformed", "default"}
    text = (EXAMPLES / "tenant.yaml").read_text()
    source = str(EXAMPLES / "tenant.yaml")
    assert decisions(text, source) == \
        decisions(text.replace("mode: fused", "mode: separate"), source)


def test_separate_program_pair_and_prog_array():
    spec = parse_spec(EDGE.format(name="edge-s", mode="separate"), "edge.yaml")
    gen = generate(spec)
    assert gen.stage_prog == "ebp_stages" and "bpf_tail_call(ctx, &ebp_progs, 0)" in gen.source
    assert "bpf_xdp_adjust_meta" in gen.source and gen.map_for(None, "progs") == "ebp_progs"
    with Replayer(spec) as rp:
        parser = rp.built.program.info()
        stages = rp.built.obj.programs["ebp_stages"].info()
        assert parser["verified_insns"] > 0 and stages["verified_insns"] > 0


def test_parse_info_over_32_bytes_names_the_fields(tmp_path):
    text = EDGE.format(name="big", mode="separate").replace(
        '{match: {ipv4.ttl: "1-2"}, action: drop}',
        "{match: {ipv4.ttl: 1, ipv4.identification: 2, ipv4.hdrChecksum: 3, "
        "ipv6.flowLabel: 4, tcp.seqNo: 5, tcp.ackNo: 6}, action: drop}")
    spec = parse_spec(text, "big.yaml")
    with pytest.raises(SpecError) as info:
        generate(spec)
    msg = str(info.value)
    assert "32 bytes of XDP metadata" in msg and "tcp.seqNo: 4" in msg and "ipv4.ttl: 1" in msg
    assert "mode: fused" in info.value.hint
    generate(parse_spec(text.replace("mode: separate", "mode: fused"), "big.yaml"))  # fits 16


def test_separate_needs_xdp():
    text = EDGE.format(name="t", mode="separate").replace("hook: xdp", "hook: tc-ingress")
    with pytest.raises(SpecError, match="needs hook xdp"):
        parse_spec(text, "t.yaml")


# -- XDP parser + TC stage on one packet ------------------------------------------------------

COOP = r"""
// SPDX-License-Identifier: GPL-2.0
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct pinfo { __u32 magic; __u16 l3_off; __u16 eth_proto; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, __u32);
         __type(value, __u32); } seen SEC(".maps");

SEC("xdp") int xdp_parser(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct pinfo *pi;
	__u16 proto;

	if (data + 14 > data_end)
		return XDP_PASS;
	proto = bpf_ntohs(*(__be16 *)(data + 12));
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*pi)))
		return XDP_PASS;
	pi = (void *)(long)ctx->data_meta;
	if ((void *)(pi + 1) > (void *)(long)ctx->data)
		return XDP_PASS;
	pi->magic = 0xeb9a55ed;
	pi->l3_off = 14;
	pi->eth_proto = proto;
	return XDP_PASS;
}

SEC("tc") int tc_stage(struct __sk_buff *skb)
{
	struct pinfo *pi = (void *)(long)skb->data_meta;
	__u32 k, *v;

	if (skb->protocol != bpf_htons(0x0800))
		k = 3;  /* not the test's frames: IPv6 neighbour discovery of the fresh veths */
	else if ((void *)(pi + 1) > (void *)(long)skb->data)
		k = 0;  /* no parse-info */
	else if (pi->magic == 0xeb9a55ed && pi->eth_proto == 0x0800 && pi->l3_off == 14)
		k = 1;  /* the XDP parser's parse-info */
	else
		k = 2;
	v = bpf_map_lookup_elem(&seen, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	return TC_ACT_OK;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_tc_reads_parse_info_left_by_xdp(veth_pair):
    ns, tx, rx = veth_pair
    obj = BpfObject.open_bytes(compile_c(COOP, name="coop").elf, "coop")
    obj.load()
    links = []
    try:
        with _netns.enter(ns):
            links.append(att.attach_xdp(obj.programs["xdp_parser"].fd, rx, mode="native"))
            links.append(att.attach_tc(obj.programs["tc_stage"].fd, rx, "ingress"))
        frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / IP(src="198.18.0.1", dst="198.18.0.2")
                      / UDP(dport=9) / Raw(b"m" * 20))
        sent = send_frames(ns, tx, [frame], count=5)
        assert sent == 5
        seen = obj.maps["seen"]

        def count(k: int) -> int:
            return struct.unpack("<I", seen.lookup(struct.pack("<I", k)))[0]
        assert count(1) == 5 and count(2) == 0
    finally:
        with _netns.enter(ns):
            for a in links:
                if a.link is not None:
                    a.link.detach()
                    a.link.close()
                elif a.method == "clsact":
                    att.detach_clsact(rx, "ingress", a.tc_priority, a.tc_handle)
        obj.close()
