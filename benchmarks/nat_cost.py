"""Program cost of the nat stage (BPF_PROG_TEST_RUN, TC): the egress program on a packet of a
masqueraded flow (translated: lookup, two checksum updates, two stores) and the ingress
program on its reply, against a tc-egress pipeline whose one filter rule passes the packet;
and a new flow per packet (a port found, both entries inserted), with the table as it is
made by default (BPF_F_NO_PREALLOC) and preallocated (``prealloc: true``).

A TC test run rewrites the same skb on every repeat (a translated packet would no longer
be the flow's), so each figure is the median of many calls of one run each, as the kernel
measures them.

    .venv/bin/python benchmarks/nat_cost.py [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from ebplane.bench.harness import load_pipeline
from ebplane.spec import parse_spec
from ebplane.stages.nat.gen import INGRESS_PROG

HEAD = "pipeline: {name}\nhook: tc-egress\nprotocols: [ethernet, ipv4, tcp, udp, icmp]\nstages:\n"
NAT = HEAD + ("  - nat: {{masquerade: {{from: [198.18.1.0/24], address: 198.18.2.1}}, "
              "size: 8192, prealloc: {prealloc}}}\n")
FILTER = HEAD + "  - filter: {{default: drop, rules: [{{src: 198.18.1.0/24, action: pass}}]}}\n"
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
OUT_PKT = bytes(E / IP(src="198.18.1.2", dst="198.18.2.2") / TCP(sport=3000, dport=80,
                                                                 flags="A") / (b"x" * 10))


def _median(prog, data: bytes, calls: int) -> float:
    return statistics.median(prog.test_run(data).duration_ns for _ in range(calls))


def _new_flows(prog, calls: int) -> float:
    """Median over ``calls`` packets, each of a new flow (another source port)."""
    pkts = [bytes(E / IP(src="198.18.1.3", dst="198.18.2.2") /
                  TCP(sport=10000 + i, dport=80, flags="S")) for i in range(calls)]
    return statistics.median(prog.test_run(p).duration_ns for p in pkts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--new", type=int, default=3000, help="new flows measured (at most 8000)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    filt = load_pipeline(parse_spec(FILTER.format(name="natcostf")))
    nat = load_pipeline(parse_spec(NAT.format(name="natcostn", prealloc="false")))
    pre = load_pipeline(parse_spec(NAT.format(name="natcostp", prealloc="true")))
    try:
        rows.append({"case": "filter, 1 rule (pass)", "program": "egress",
                     "ns": _median(filt.program, OUT_PKT, args.calls)})
        first = Ether(nat.program.test_run(OUT_PKT).data)  # the flow's translation exists
        reply = bytes(E / IP(src="198.18.2.2", dst=first[IP].src) /
                      TCP(sport=80, dport=first[TCP].sport, flags="A") / (b"y" * 10))
        rows.append({"case": "nat, masqueraded flow leaving", "program": "egress",
                     "ns": _median(nat.program, OUT_PKT, args.calls)})
        rows.append({"case": "nat, its reply arriving", "program": "ingress",
                     "ns": _median(nat.obj.programs[INGRESS_PROG], reply, args.calls)})
        rows.append({"case": "nat, a new flow per packet", "program": "egress",
                     "ns": _new_flows(nat.program, min(args.new, 8000))})
        rows.append({"case": "nat (prealloc), a new flow per packet", "program": "egress",
                     "ns": _new_flows(pre.program, min(args.new, 8000))})
    finally:
        filt.close()
        nat.close()
        pre.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['case']:<40} {r['program']:<8} {r['ns']:>7.1f} ns/packet")


if __name__ == "__main__":
    main()
