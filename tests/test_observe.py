"""Observability without a lab: the capture hooks (classic BPF filter translated to C, the
record of the deciding stage and rule), run on frames with BPF_PROG_TEST_RUN."""

from __future__ import annotations

import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from ebplane.codegen.capture import CAPTURE_COUNTERS, REC_HEADER, CaptureSpec
from ebplane.codegen.pipeline import generate, spec_features
from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.ringbuf import RingBuffer
from ebplane.runtime.build import build
from ebplane.runtime.pcap import read_pcap, write_pcap
from ebplane.runtime.trace import _REC, decision, malformed_detail
from ebplane.spec import parse_spec
from ebplane.toolchain.pcapfilter import compile_filter

SPEC = """\
pipeline: obs
hook: {hook}
interfaces: [lo]
protocols: [ethernet, vlan, ipv4, ipv6, tcp, udp, icmp, icmpv6]
stages:
  - filter:
      name: acl
      default: next
      malformed: drop
      rules:
        - {{dst: 198.18.2.2, proto: udp, dport: 53, action: drop}}
        - {{dst: "2001:db8:2::2", proto: tcp, dport: 80, action: pass}}
  - count: {{}}
"""

FRAMES = [
    Ether() / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=4000, dport=53) / b"q",
    Ether() / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=53, dport=4000) / b"r",
    Ether() / IP(src="198.18.1.2", dst="198.18.2.3") / TCP(sport=4000, dport=80, flags="S"),
    Ether() / IPv6(src="2001:db8:1::2", dst="2001:db8:2::2") / TCP(sport=1, dport=80, flags="S"),
    Ether() / IPv6(src="2001:db8:1::2", dst="2001:db8:2::2") / TCP(sport=1, dport=80, flags="A"),
    Ether() / Dot1Q(vlan=100) / IP(src="198.18.1.2", dst="198.18.2.2") / ICMP(),
    Ether() / IP(src="198.18.1.9", dst="198.18.2.2") / ICMP(),
    Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="198.18.2.2"),
    bytes(Ether() / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(dport=53))[:20],  # cut short
]
FILTERS = ["udp port 53", "tcp[tcpflags] & tcp-syn != 0", "ip6 and tcp dst port 80",
           "ip host 198.18.1.9 or arp", "vlan 100", "len > 60", "greater 1000",
           "ip[8] = 64 and not udp", "icmp or ip6"]


def _frames() -> list[bytes]:
    return [bytes(f) for f in FRAMES]


def _run(hook: str, cap: CaptureSpec, frames: list[bytes]) -> tuple[list[bytes], dict, list]:
    spec = parse_spec(SPEC.format(hook=hook), "obs.yaml")
    b = build(spec, spec_features(spec), capture=cap)
    try:
        b.install_spec_rules()
        got: list[bytes] = []
        with RingBuffer(b.map("ebp_cap_ring"), got.append) as rb:
            for fr in frames:
                b.program.test_run(fr if len(fr) >= 14 else fr + bytes(14 - len(fr)))
            rb.consume()
        counts = b.map("ebp_cap_cnt").with_codecs(U32, COUNT)
        c = {k: counts.lookup_sum(i).packets for i, k in enumerate(CAPTURE_COUNTERS)}
    finally:
        b.close()
    recs = [_REC.decode(r) for r in got]
    return [r[REC_HEADER:REC_HEADER + rec[3]] for r, rec in zip(got, recs)], c, recs


def _tcpdump_keeps(tmp_path, frames: list[bytes], expr: str) -> list[bytes]:
    """libpcap's own verdict, offline: tcpdump -r IN -w OUT EXPR."""
    src, dst = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(src, frames)
    subprocess.run(["tcpdump", "-r", str(src), "-w", str(dst), expr], check=True,
                   capture_output=True)
    return list(read_pcap(dst))


@pytest.mark.parametrize("expr", FILTERS)
def test_filter_in_the_kernel_keeps_what_libpcap_keeps(expr, tmp_path):
    frames = _frames()
    cap = CaptureSpec(snaplen=2048, filter=tuple(compile_filter(expr)), filter_text=expr)
    got, counts, _ = _run("xdp", cap, frames)
    want = _tcpdump_keeps(tmp_path, frames, expr)
    assert got == want
    assert counts["captured"] == len(want)
    assert counts["filtered_out"] == len(frames) - len(want)


def test_tc_capture_and_snaplen(tmp_path):
    # the kernel's TC test_run refuses an IPv4 frame shorter than its header (EINVAL)
    frames = _frames()[:-1]
    got, counts, recs = _run("tc-ingress", CaptureSpec(snaplen=32), frames)
    assert got == [f[:32] for f in frames]
    assert [r[2] for r in recs] == [len(f) for f in frames]  # pkt_len: the whole frame
    assert counts["captured"] == len(frames) and counts["ring_full"] == 0


def test_records_name_the_stage_rule_and_verdict():
    frames = _frames()
    spec = parse_spec(SPEC.format(hook="xdp"), "obs.yaml")
    live = {"acl": [{"id": i, "rule": r.to_dict()} for i, r in enumerate(spec.stages[0].rules)]}
    _, _, recs = _run("xdp", CaptureSpec(), frames)
    seen = [(decision(spec, live, r[4], r[5])[1:] + (r[6],)) for r in recs]
    # (kind, rule index, reason, action)
    assert seen[0] == ("filter", 0, "rule 0 drop", 1)
    assert seen[1] == (None, None, "end of pipeline", 2)      # default next, count passes
    assert seen[3] == ("filter", 1, "rule 1 pass", 2)
    assert seen[8] == ("filter", None, "malformed drop", 1)   # IPv4 header cut short


def test_selection_by_verdict_and_rule_and_rate_limit():
    frames = _frames()
    _, c, recs = _run("xdp", CaptureSpec(verdict=1), frames)   # XDP_DROP
    assert {r[6] for r in recs} == {1} and c["captured"] == 2
    _, c, recs = _run("xdp", CaptureSpec(stage=0, slot=1), frames)
    assert len(recs) == 2 and c["selected"] == 2
    _, c, recs = _run("xdp", CaptureSpec(rate=3), frames * 2)
    assert len(recs) == 3 and c["rate_limited"] == 2 * len(frames) - 3


def test_trace_free_program_has_no_capture_code():
    spec = parse_spec(SPEC.format(hook="xdp"), "obs.yaml")
    plain = generate(spec, spec_features(spec))
    assert "ebp_cap" not in plain.source and "EBP_TRACE 1" not in plain.source
    traced = generate(spec, spec_features(spec), capture=CaptureSpec())
    assert "ebp_capture(ctx, &pkt, action)" in traced.source


def test_malformed_names_the_header_cut_short():
    from ebplane.codegen.pipeline import spec_parser
    spec = parse_spec(SPEC.format(hook="xdp"), "obs.yaml")
    graph = spec_parser(spec.protocols, spec_features(spec))[0]
    cut = _frames()[-1]  # IPv4 cut after 6 of its 20 bytes
    assert malformed_detail(graph, cut, len(cut)) == "PacketTooShort in parser state parse_ipv4"
    assert malformed_detail(graph, cut, 100).startswith("cut beyond snaplen in parse_ipv4")
    ok = _frames()[0]
    assert malformed_detail(graph, ok, len(ok)) == "parses in user space"


def test_trace_options_become_capture_constants():
    from types import SimpleNamespace

    from ebplane.errors import NotFound, UsageError
    from ebplane.runtime.trace import TraceRequest, capture_spec
    spec = parse_spec(SPEC.format(hook="tc-ingress"), "obs.yaml")
    # rule ids as run-time edits leave them: index 1 holds id 7
    st = SimpleNamespace(live_rules={"acl": [{"id": 3, "rule": {}}, {"id": 7, "rule": {}}]})
    cap = capture_spec(spec, st, TraceRequest(rule=1, verdict="drop", snaplen=64, rate=10))
    assert (cap.stage, cap.slot, cap.verdict, cap.snaplen) == (0, 7, 2, 64)  # TC_ACT_SHOT
    assert cap.rate >= 10 // 2 and cap.rate * 2 >= 10  # per CPU, rounded up
    assert capture_spec(spec, st, TraceRequest(stage="count")).stage == 1
    with pytest.raises(NotFound):
        capture_spec(spec, st, TraceRequest(stage="nope"))
    with pytest.raises(UsageError):
        capture_spec(spec, st, TraceRequest(rule=2))
    with pytest.raises(UsageError):
        capture_spec(spec, st, TraceRequest(verdict="tx"))  # not a TC verdict
    with pytest.raises(UsageError):
        capture_spec(spec, st, TraceRequest(filter="udp prot 53"))
    with pytest.raises(UsageError):
        capture_spec(spec, st, TraceRequest(snaplen=0))
