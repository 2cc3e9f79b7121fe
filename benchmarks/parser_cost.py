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

from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

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
A, B = "198.18.0.1", "198.18.0.2"
A6, B6 = "2001:db8::1", "2001:db8::2"
# a mix of traffic: what a link carries, not only what the pipeline cares about
PACKETS = {
    "ipv4/udp": E / IP(src=A, dst=B) / UDP(sport=1, dport=53) / ("x" * 18),
    "ipv4/tcp": E / IP(src=A, dst=B) / TCP(sport=1, dport=80),
    "vlan/ipv4/udp": E / Dot1Q(vlan=10) / IP(src=A, dst=B) / UDP(sport=1, dport=53),
    "qinq/ipv6/tcp": E / Dot1AD(vlan=20) / Dot1Q(vlan=10) / IPv6(src=A6, dst=B6) / TCP(dport=80),
    "ipv6+ext/udp": E / IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    / UDP(dport=53),
    "vxlan": E / IP(src=A, dst=B) / UDP(sport=1, dport=4789) / VXLAN(vni=42) / E / IP() / UDP(),
    "gre": E / IP(src=A, dst=B) / GRE() / IP() / UDP(),
    "mpls": E / MPLS(label=16, s=0) / MPLS(label=17, s=1) / IP(src=A, dst=B) / UDP(dport=53),
    "arp": E / ARP(pdst=B),
}
RULES = "        - {dport: 53, action: drop}\n        - {dport: 80, action: pass}\n"


def spec_text(name: str, protocols: list[str], mode: str) -> str:
    return (f"pipeline: {name}\nhook: xdp\nprotocols: [{', '.join(protocols)}]\n"
            f"parser: {{mode: {mode}}}\nstages:\n  - filter:\n      default: next\n"
            f"      rules:\n{RULES}  - count: {{}}\n")


def load(protocols: list[str], mode: str, features: Features | None):
    spec = parse_spec(spec_text("pc", protocols, mode), "parser_cost.yaml")
    built = build(spec, features or spec_features(spec))
    insns = built.program.info()["verified_insns"]
    if built.gen.stage_prog:
        insns += built.obj.programs[built.gen.stage_prog].info()["verified_insns"]
    return built, insns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    everything = Features(vlan=True, ipv4=True, ipv6=True, tcp=True, udp=True)
    progs: dict[tuple[str, str], tuple] = {}
    for label, protos in SETS.items():
        progs[(label, "fused")] = load(protos, "fused", None)
        progs[(label, "separate")] = load(protos, "separate", None)
    progs[("generic", "generic")] = load(list(KNOWN_PROTOCOLS), "fused", everything)
    frames = {k: bytes(p) for k, p in PACKETS.items()}
    samples: dict[tuple, dict[str, list[int]]] = {k: {p: [] for p in frames} for k in progs}
    links = []
    try:
        with netns.temporary("ebp-pc") as ns, netns.enter(ns.name):
            # every program stays attached (generic XDP on its own veth) while measured
            for i, (built, _insns) in enumerate(progs.values()):
                netns.run(ns.name, ["ip", "link", "add", f"pc{i}", "type", "veth", "peer",
                                    "name", f"pq{i}"])
                links.append(att.attach_xdp(built.program.fd, f"pc{i}", mode="generic").link)
            # interleaved rounds: a disturbance hits every program alike
            for _ in range(args.rounds):
                for key, (built, _insns) in progs.items():
                    for name, frame in frames.items():
                        samples[key][name].append(
                            built.program.test_run(frame, repeat=args.repeat).duration_ns)
    finally:
        for link in links:
            link.close()
        for built, _insns in progs.values():
            built.close()

    def cost(key) -> float:
        return round(statistics.mean(statistics.median(v) for v in samples[key].values()), 1)
    generic = {"verified_insns": progs[("generic", "generic")][1], "ns": cost(("generic", "generic"))}
    rows = []
    for label in SETS:
        row = {"set": label, "generic": generic}
        for mode in ("fused", "separate"):
            row[mode] = {"verified_insns": progs[(label, mode)][1], "ns": cost((label, mode))}
            row[mode]["ratio_to_generic"] = round(row[mode]["ns"] / generic["ns"], 2)
        rows.append(row)
    if args.json:
        print(json.dumps({"packets": list(frames), "rows": rows}, indent=2))
        return
    print(f"packets: {', '.join(frames)} (ns/pkt = mean over them of the median of "
          f"{args.rounds} interleaved rounds of {args.repeat} runs)\n")
    print("| protocol set | fused insns | fused ns/pkt | separate insns | separate ns/pkt "
          "| generic insns | generic ns/pkt | fused / generic |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['set']} | {r['fused']['verified_insns']} | {r['fused']['ns']} | "
              f"{r['separate']['verified_insns']} | {r['separate']['ns']} | "
              f"{r['generic']['verified_insns']} | {r['generic']['ns']} | "
              f"{r['fused']['ratio_to_generic']:.2f}x |")


if __name__ == "__main__":
    main()
