"""Cost of the encap and decap stages: ns/packet (BPF_PROG_TEST_RUN, kernel-measured) of a
pipeline that only counts (the floor: parse + one counter), against pipelines that add a
header and take it off again in the same program.

With ``repeat`` > 1 the kernel runs the program again on the packet as the previous run left
it: an encap alone would grow the frame by each run (and soon run out of headroom), a decap
alone would see a plain frame from the second run on.  So each measured program is a round
trip whose frame ends as it started: ``encap; decap`` on a plain frame, ``decap; encap`` on a
VXLAN frame; each includes two parses of the changed packet.  ``decap, no tunnel`` is what a
decap stage costs a packet that carries none of its tunnels.

TC: the kernel refuses a second encapsulation of one skb (bpf_skb_adjust_room: EALREADY once
skb->encapsulation is set, which a decap does not clear), so TC programs run once per call
(``--calls`` calls, the median of the kernel-measured durations, timer reads included: the
floor pays them too); XDP programs run ``repeat`` times per call.

XDP programs stay attached (generic XDP on a veth of a throw-away namespace) while measured
(platform-notes: an unattached XDP program pays an RCU sync per test_run call).

    .venv/bin/python benchmarks/encap_cost.py [--repeat N] [--rounds N] [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from ebplane.codegen.pipeline import spec_features
from ebplane.net import attach as att
from ebplane.net import netns
from ebplane.runtime.build import build
from ebplane.spec import parse_spec

PLAIN = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
         / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=4000, dport=9999) / (b"x" * 64))
VXLAN_FRAME = bytes(Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
                    / IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=50000, dport=4789)
                    / VXLAN(vni=42) / PLAIN)
PLAIN = bytes(PLAIN)
ENCAP = {"vxlan": "encap: {tunnel: vxlan, src: 198.18.0.1, dst: 198.18.0.2, vni: 42}",
         "ipip": "encap: {tunnel: ipip, src: 198.18.0.1, dst: 198.18.0.2}",
         "gre": "encap: {tunnel: gre, src: 198.18.0.1, dst: 198.18.0.2}",
         "vxlan6": "encap: {tunnel: vxlan, src: '2001:db8::1', dst: '2001:db8::2', vni: 42}"}
CASES = {  # label -> (stages, frame)
    "count only (floor)": (["count: {}"], PLAIN),
    "decap, no tunnel": (["decap: {tunnels: [vxlan, gre, ipip]}", "count: {}"], PLAIN),
    "encap vxlan + decap": ([ENCAP["vxlan"], "decap: {tunnels: [vxlan]}", "count: {}"], PLAIN),
    "decap vxlan + encap": (["decap: {tunnels: [vxlan]}", ENCAP["vxlan"], "count: {}"],
                            VXLAN_FRAME),
    "encap vxlan/v6 + decap": ([ENCAP["vxlan6"], "decap: {tunnels: [vxlan]}", "count: {}"],
                               PLAIN),
    "encap ipip + decap": ([ENCAP["ipip"], "decap: {tunnels: [ipip]}", "count: {}"], PLAIN),
    "encap gre + decap": ([ENCAP["gre"], "decap: {tunnels: [gre]}", "count: {}"], PLAIN),
}


def spec_text(hook: str, stages: list[str]) -> str:
    return (f"pipeline: ec\nhook: {hook}\nprotocols: [ethernet, ipv4, ipv6, udp, tcp, vxlan, gre]"
            "\nstages:\n" + "".join(f"  - {s}\n" for s in stages))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=3000, help="TC: single runs per case")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for hook in ("xdp", "tc-ingress"):
        progs = {}
        for label, (stages, frame) in CASES.items():
            spec = parse_spec(spec_text(hook, stages))
            b = build(spec, spec_features(spec))
            # one run first: a round trip's output is then a fixed point (decap + encap
            # writes the configured outer addresses and the flow's source port)
            progs[label] = (b, b.program.test_run(frame).data)
        samples: dict[str, list[float]] = {k: [] for k in CASES}
        links = []
        try:
            with netns.temporary("ebp-ec") as ns, netns.enter(ns.name):
                if hook == "xdp":
                    for i, (b, _) in enumerate(progs.values()):
                        netns.run(ns.name, ["ip", "link", "add", f"ec{i}", "type", "veth",
                                            "peer", "name", f"ed{i}"])
                        links.append(att.attach_xdp(b.program.fd, f"ec{i}", mode="generic").link)
                rounds = args.rounds if hook == "xdp" else args.calls
                for _ in range(rounds):
                    for label, (b, frame) in progs.items():
                        res = b.program.test_run(frame, repeat=args.repeat if hook == "xdp"
                                                 else 1)
                        assert res.verdict.endswith(("PASS", "OK")) and res.data == frame, \
                            (hook, label, "the frame did not come back as it went in")
                        samples[label].append(res.duration_ns)
        finally:
            for link in links:
                link.close()
            for b, _ in progs.values():
                b.close()
        floor = statistics.median(samples["count only (floor)"])
        for label, v in samples.items():
            ns_ = statistics.median(v)
            rows.append({"hook": hook, "case": label,
                         "ns": round(ns_, 1), "over_floor": round(ns_ - floor, 1)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'hook':<11} {'case':<24} {'ns/pkt':>7} {'+ns':>6}")
    for r in rows:
        print(f"{r['hook']:<11} {r['case']:<24} {r['ns']:>7.0f} {r['over_floor']:>6.0f}")


if __name__ == "__main__":
    main()
