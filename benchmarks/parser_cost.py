"""Cost of generated parsers: verified instructions and ns/packet (BPF_PROG_TEST_RUN).

For three protocol sets, a pipeline (a filter on UDP/TCP ports and a count stage) is built
with its generated parser fused into the program, with a separate parser program, and -- the
baseline -- with a generic parser for the whole library (every protocol, every bound ebp_pkt
field).  All run on the same packets, in one run; each program stays attached to lo of a
throw-away namespace in generic mode while measured (platform-notes: an unattached XDP
program pays an RCU sync per test_run call).

    .venv/bin/python benchmarks/parser_cost.py [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from ebplane.codegen.pipeline import Features, spec_features
from ebplane.net import attach as att
from ebplane.net import netns
from ebplane.runtime.build import build
from ebplane.spec import parse_spec
from ebplane.spec.protocol_set import KNOWN_PROTOCOLS

SETS = {
    "ethernet ipv4 udp": ["ethernet", "ipv4", "udp"],
    "ethernet vlan ipv4 ipv6 tcp udp": ["ethernet", "vlan", "ipv4", "ipv6", "tcp", "udp"],
    "whole library": list(KNOWN_PROTOCOLS),
}
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
PACKETS = [bytes(E / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1, dport=53) / ("x" * 18)),
           bytes(E / IP(src="198.18.0.1") / UDP(sport=1, dport=4789) / ("y" * 26))]
RULES = "        - {dport: 53, action: drop}\n        - {dport: 80, action: pass}\n"


def spec_text(name: str, protocols: list[str], mode: str) -> str:
    return (f"pipeline: {name}\nhook: xdp\nprotocols: [{', '.join(protocols)}]\n"
            f"parser: {{mode: {mode}}}\nstages:\n  - filter:\n      default: next\n"
            f"      rules:\n{RULES}  - count: {{}}\n")


def measure(protocols: list[str], mode: str, features: Features | None, repeat: int) -> dict:
    spec = parse_spec(spec_text("pc", protocols, mode), "parser_cost.yaml")
    built = build(spec, features or spec_features(spec))
    try:
        insns = built.program.info()["verified_insns"]
        if built.gen.stage_prog:
            insns += built.obj.programs[built.gen.stage_prog].info()["verified_insns"]
        with netns.temporary("ebp-pc") as ns, netns.enter(ns.name):
            a = att.attach_xdp(built.program.fd, "lo", mode="generic")
            try:
                ns_per_pkt = [statistics.median(built.program.test_run(p, repeat=repeat).duration_ns
                                                for _ in range(5)) for p in PACKETS]
            finally:
                if a.link is not None:
                    a.link.detach()
                    a.link.close()
        return {"verified_insns": insns, "ns": round(sum(ns_per_pkt) / len(ns_per_pkt), 1)}
    finally:
        built.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    everything = Features(vlan=True, ipv4=True, ipv6=True, tcp=True, udp=True)
    rows = []
    for label, protos in SETS.items():
        fused = measure(protos, "fused", None, args.repeat)
        separate = measure(protos, "separate", None, args.repeat)
        generic = measure(list(KNOWN_PROTOCOLS), "fused", everything, args.repeat)
        rows.append({"set": label, "fused": fused, "separate": separate, "generic": generic})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| protocol set | fused insns | fused ns/pkt | separate insns | separate ns/pkt "
          "| generic insns | generic ns/pkt |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['set']} | {r['fused']['verified_insns']} | {r['fused']['ns']} | "
              f"{r['separate']['verified_insns']} | {r['separate']['ns']} | "
              f"{r['generic']['verified_insns']} | {r['generic']['ns']} |")


if __name__ == "__main__":
    main()
