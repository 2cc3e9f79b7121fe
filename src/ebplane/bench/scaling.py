"""Section 4, scaling: program cost against the number of rules, the number of rule shapes
(rules with distinct prefix lengths: what a tuple-space classifier pays one hash probe for)
and the protocol set.  Same method as section 1 (``CostHarness``)."""

from __future__ import annotations

import dataclasses
import ipaddress

from ebplane.bench.harness import CostHarness, Progress, frame, load_pipeline
from ebplane.lab.traffic import Flow
from ebplane.spec import FilterStage, PipelineSpec, Rule, parse_rule, parse_spec

BASE = ipaddress.IPv4Address("198.18.0.0")  # rules and packets stay in 198.18.0.0/15
SRC = "198.18.1.2"

# protocol-set steps: each lists more protocols and adds a rule that needs the new ones
PROTOCOL_STEPS: tuple[tuple[tuple[str, ...], tuple[dict, ...]], ...] = (
    (("ethernet",), ()),
    (("ethernet", "ipv4"), ({"src": "198.18.0.1/32", "action": "drop"},)),
    (("ethernet", "ipv4", "udp"), ({"proto": "udp", "dport": 53, "action": "drop"},)),
    (("ethernet", "ipv4", "ipv6", "tcp", "udp"),
     ({"dst": "2001:db8::/32", "proto": "tcp", "dport": 22, "action": "drop"},)),
    (("ethernet", "vlan", "ipv4", "ipv6", "tcp", "udp", "icmp", "icmpv6"),
     ({"vlan": 100, "action": "pass"},)),
)


def filter_spec(name: str, protocols: tuple[str, ...], rules: list[Rule],
                 capacity: int, classifier: str = "auto") -> PipelineSpec:
    """A one-filter pipeline holding ``rules`` (built directly: parsing 100k rules from YAML
    would measure the YAML parser)."""
    spec = parse_spec(f"pipeline: {name}\nhook: xdp\nprotocols: [{', '.join(protocols)}]\n"
                      f"stages:\n  - filter: {{name: acl, default: pass, capacity: {capacity}}}\n",
                      f"<bench {name}>")
    st: FilterStage = spec.stages[0]
    return dataclasses.replace(spec, stages=(dataclasses.replace(st, rules=tuple(rules),
                                                                 classifier=classifier),))


def host_rules(n: int, dport: int = 53) -> list[Rule]:
    """``n`` rules of one shape: UDP to ``dport`` from 198.18.0.0 + i (a /32 each)."""
    if n > 2 ** 17:
        raise ValueError("198.18.0.0/15 holds 131072 hosts")
    base = int(BASE)
    return [Rule(action="drop", src=ipaddress.IPv4Network((base + i, 32)), proto=17,
                 dport=(dport, dport)) for i in range(n)]


def _measure(harness: CostHarness, spec: PipelineSpec, packets: dict[str, Flow]) -> dict:
    built = load_pipeline(spec)
    try:
        out = {}
        for name, flow in packets.items():
            res = harness.measure(built.program, frame(flow))
            out[name] = res.to_dict()
        return out
    finally:
        built.close()


def run_scaling(harness: CostHarness, rule_counts: tuple[int, ...], shape_counts: tuple[int, ...],
                progress: Progress) -> dict:
    rules_rows = []
    for n in rule_counts:
        progress(f"scaling: {n} rules")
        last = str(BASE + (n - 1))
        packets = {"hit": Flow("udp", last, "198.18.2.2", 40000, 53),
                   "miss": Flow("udp", last, "198.18.2.2", 40000, 80)}
        spec = filter_spec("scale", ("ethernet", "ipv4", "udp"), host_rules(n), max(n, 1))
        rules_rows.append({"rules": n, **_measure(harness, spec, packets)})
    shape_rows = []
    miss = {"miss": Flow("udp", SRC, "198.18.2.2", 40000, 80)}
    for n in shape_counts:
        progress(f"scaling: {n} rule shapes")
        rules = [Rule(action="drop", src=ipaddress.IPv4Network((int(BASE), 32 - i)), proto=17,
                      dport=(53, 53)) for i in range(n)]
        spec = filter_spec("shapes", ("ethernet", "ipv4", "udp"), rules, max(n, 1))
        shape_rows.append({"shapes": n, **_measure(harness, spec, miss)})
    proto_rows = []
    rules: list[Rule] = []
    for protocols, new_rules in PROTOCOL_STEPS:
        progress(f"scaling: protocols {'+'.join(protocols)}")
        rules += [parse_rule(r, protocols=protocols) for r in new_rules]
        spec = filter_spec("protos", protocols, rules, 64)
        proto_rows.append({"protocols": list(protocols), "rules": len(rules),
                           **_measure(harness, spec, miss)})
    return {"method": "as section cost; one filter stage, default pass",
            "rules": rules_rows, "shapes": shape_rows, "protocols": proto_rows}
