"""Cost of the multicast and mirror stages: ns/packet (BPF_PROG_TEST_RUN) against a
count-only pipeline at the same hook.

A throw-away namespace with four veths (p0..p3) holds the devmaps' members.  XDP programs
stay attached (generic, on p3) while measured (platform-notes: an unattached XDP program
pays an RCU sync per test_run call).  test_run decides a devmap broadcast but does not send
it, so the XDP rows are the program's cost; the copies themselves are the kernel's work after
the program (see the lab tests for delivery).  At TC, bpf_clone_redirect really clones and
transmits, so those rows include sending the copies out of veths (test_run gives the TC
program no ingress port, so all three members get one).

    .venv/bin/python benchmarks/replicate_cost.py [--repeat N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ebplane.kernel.libbpf import XdpMd
from ebplane.net import attach as att
from ebplane.net import iface, netns
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec

MC = "  - multicast: {groups: {g: {members: [p1, p2, p3], addresses: [239.1.1.1]}}}\n"
MC_FRAME = Ether(dst="01:00:5e:01:01:01") / IP(dst="239.1.1.1") / UDP() / bytes(18)
UNICAST = Ether(dst="02:00:00:00:00:01") / IP(dst="198.18.0.1") / UDP() / bytes(18)
CASES = [
    ("xdp: count only", "xdp", "  - count: {}\n", UNICAST),
    ("xdp: multicast, unicast frame", "xdp", MC, UNICAST),
    ("xdp: multicast, group hit (3 members)", "xdp", MC, MC_FRAME),
    ("xdp: mirror, selected (devmap broadcast to to: and out:)", "xdp",
     "  - mirror: {to: p2, out: p1}\n", UNICAST),
    ("tc: count only", "tc-ingress", "  - count: {}\n", UNICAST),
    ("tc: multicast, group hit (3 members: 2 clones, 1 redirect)", "tc-ingress", MC, MC_FRAME),
    ("tc: mirror, not selected", "tc-ingress",
     "  - mirror: {to: p2, match: [{ethertype: arp}]}\n", UNICAST),
    ("tc: mirror, cloned out of a veth", "tc-ingress", "  - mirror: {to: p2}\n", UNICAST),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with netns.temporary() as ns:
        for i in range(4):
            for cmd in (f"ip link add p{i} type veth peer name q{i}", f"ip link set p{i} up",
                        f"ip link set q{i} up"):
                netns.run(ns.name, cmd.split())
        with netns.enter(ns.name):
            for name, hook, stages, frame in CASES:
                spec = parse_spec(f"pipeline: c\nhook: {hook}\nprotocols: [ethernet, ipv4, "
                                  f"ipv6, udp]\nstages:\n{stages}")
                data = bytes(frame)
                with Replayer(spec) as rp:
                    ctx, link = None, None
                    if hook == "xdp":
                        ctx = XdpMd(data_end=len(data), ingress_ifindex=iface.ifindex("p0"))
                        link = att.attach_xdp(rp.program.fd, "p3", mode="generic").link
                    try:
                        ns_pkt = statistics.median(
                            rp.program.test_run(data, repeat=args.repeat, ctx=ctx).duration_ns
                            for _ in range(args.rounds))
                        verdict = rp.program.test_run(data, ctx=ctx).verdict
                    finally:
                        if link is not None:
                            link.close()
                rows.append({"case": name, "ns_per_packet": ns_pkt, "verdict": verdict})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['case']:60} {r['ns_per_packet']:6} ns  {r['verdict']}")


if __name__ == "__main__":
    main()
