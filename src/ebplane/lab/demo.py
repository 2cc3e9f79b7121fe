"""``ebplane demo``: the whole story in one command, on a throw-away lab.

Builds client -- dut -- server, applies a firewall pipeline at XDP on the dut's client-facing
port, sends real traffic of several flows, shows the counters as they grow, changes a rule
while traffic flows, and reports what was dropped and passed and why.  Everything is torn
down at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from ebplane.lab.topology import Lab
from ebplane.lab.traffic import Capture, Flow, send

LAB_NAME = "ebp-demo"
PIPELINE = "demo-fw"

SPEC = """\
# The demo firewall: XDP on the dut's port towards the client.
pipeline: {name}
hook: xdp
netns: {netns}
interfaces: [eth0]
protocols: [ethernet, ipv4, ipv6, tcp, udp, icmp, icmpv6]
stages:
  - filter:
      name: fw
      default: pass
      malformed: drop
      rules:
        - {{proto: tcp, dport: 22, action: drop}}                     # no SSH into the server net
        - {{dst: "2001:db8:2::/64", proto: udp, dport: "9000-9999", action: drop}}
        - {{src: 198.18.1.2, dst: 198.18.2.2, proto: udp, dport: 53, action: pass}}
  - count: {{}}
"""


@dataclass
class DemoFlow:
    label: str
    flow: Flow


FLOWS = [
    DemoFlow("DNS query (udp/53)", Flow("udp", "198.18.1.2", "198.18.2.2", 40000, 53)),
    DemoFlow("SSH connect (tcp/22)", Flow("tcp", "198.18.1.2", "198.18.2.2", 40001, 22)),
    DemoFlow("web (tcp/80)", Flow("tcp", "198.18.1.2", "198.18.2.2", 40002, 80)),
    DemoFlow("IPv6 game (udp/9100)", Flow("udp", "2001:db8:1::2", "2001:db8:2::2", 40003, 9100)),
    DemoFlow("IPv6 web (tcp/443)", Flow("tcp", "2001:db8:1::2", "2001:db8:2::2", 40004, 443)),
    DemoFlow("ping (icmp)", Flow("icmp", "198.18.1.2", "198.18.2.2", 7, 0)),
]


def run(*, rounds: int = 4, per_round: int = 25, out: Callable[[str], None] = print,
        pause: float = 0.3) -> dict:
    """Run the demo; returns the summary (flows, what arrived, counters)."""
    from ebplane.runtime import pipeline as pl
    from ebplane.spec import parse_rule

    lab = Lab.load(None, name=LAB_NAME)
    if lab.is_up() or Lab.running(LAB_NAME):
        Lab.running(LAB_NAME).down()  # a demo interrupted by a crash: start clean
    summary: dict = {"flows": [], "rounds": []}
    applied = False
    with tempfile.TemporaryDirectory(prefix="ebplane-demo-") as tmp:
        try:
            out(f"[1/5] building the lab: {', '.join(lab.namespaces())}")
            lab.up()
            spec_path = os.path.join(tmp, "demo-fw.yaml")
            with open(spec_path, "w") as f:
                f.write(SPEC.format(name=PIPELINE, netns=lab.ns("dut")))
            out(f"[2/5] applying the firewall at XDP on {lab.ns('dut')}:eth0")
            res = pl.apply(spec_path)
            applied = True
            a = res.attachments[0]
            out(f"      program {res.prog_id} attached via {a['method']} ({a.get('mode')}), "
                f"{res.rules['fw']} rules, {res.seconds} s")
            captures = {d.label: Capture(lab.ns("server"), "eth0", d.flow) for d in FLOWS}
            sent = {d.label: 0 for d in FLOWS}
            try:
                # warm-up: let the dut resolve the server's address before counting
                for d in FLOWS:
                    send(lab.ns("client"), "eth0", d.flow, 1)
                time.sleep(0.3)
                for c in captures.values():
                    c.wait(0, timeout=0.05)
                    c.count = 0
                warm = pl.stats(PIPELINE)[0]
                out(f"[3/5] sending {per_round} packets per flow per round, {rounds} rounds")
                for r in range(rounds):
                    if r == rounds // 2:
                        rule = parse_rule({"proto": "icmp", "action": "drop"},
                                          protocols=("ethernet", "ipv4", "ipv6", "tcp", "udp", "icmp", "icmpv6"))
                        pl.RuleTable(PIPELINE, "fw").add(rule, at=0)
                        out("      live change: rule 'drop icmp' inserted at the top "
                            "(atomic, program not reloaded)")
                    for d in FLOWS:
                        send(lab.ns("client"), "eth0", d.flow, per_round)
                        sent[d.label] += per_round
                    time.sleep(pause)
                    st = pl.stats(PIPELINE)[0]
                    v = st["verdicts"]
                    drop = v["XDP_DROP"]["packets"] - warm["verdicts"]["XDP_DROP"]["packets"]
                    passed = v["XDP_PASS"]["packets"] - warm["verdicts"]["XDP_PASS"]["packets"]
                    out(f"      round {r + 1}: dropped {drop:5d}  passed {passed:5d}")
                    summary["rounds"].append({"dropped": drop, "passed": passed})
                for label, c in captures.items():
                    c.wait(sent[label], timeout=1.0)
            finally:
                for c in captures.values():
                    c.close()
            st = pl.stats(PIPELINE)[0]
            fw = next(s for s in st["stages"] if s["stage"] == "fw")
            out("[4/5] what happened to each flow (arrived = seen on the server; the reason is "
                "the final rule set's)")
            for d in FLOWS:
                arrived = captures[d.label].count
                why = _why(d.flow, fw)
                out(f"      {d.label:<22} sent {sent[d.label]:4d}  arrived {arrived:4d}  {why}")
                summary["flows"].append({"flow": d.label, "sent": sent[d.label],
                                         "arrived": arrived, "why": why})
            out("      per-rule counters, summed over CPUs (one warm-up packet per flow included):")
            for r in fw["rules"]:
                text = " ".join(f"{k}={v}" for k, v in r["rule"].items() if k != "action")
                out(f"        #{r['index']} {r['rule']['action']:<4} {text:<58} {r['packets']:5d} pkts")
            out(f"        default pass {'':<58} {fw['default']['packets']:5d} pkts")
            summary["stats"] = st
        finally:
            out("[5/5] tearing down")
            if applied:
                with contextlib.suppress(Exception):
                    pl.detach(PIPELINE)
            lab.down()
    return summary


def _why(flow: Flow, fw: dict) -> str:
    """Which rule of the final rule set decides this flow (the same logic as the kernel's)."""
    from ebplane.stages.filter.model import match_packet
    from ebplane.spec import Rule
    import ipaddress
    rules = [Rule.from_dict(r["rule"]) for r in fw["rules"]]
    proto = {"udp": 17, "tcp": 6, "icmp": 1 if flow.version == 4 else 58}[flow.proto]
    fields = {"family": flow.version, "src": ipaddress.ip_address(flow.src).packed,
              "dst": ipaddress.ip_address(flow.dst).packed, "proto": proto,
              "sport": flow.sport, "dport": flow.dport, "has_l4": flow.proto in ("udp", "tcp"),
              "vlan": 0, "has_vlan": False}
    m = match_packet(rules, fields)
    if m is None:
        return "passed: no rule matched (default pass)"
    r = fw["rules"][m.prio]["rule"]
    verb = "dropped" if r["action"] == "drop" else "passed"
    return f"{verb} by rule #{m.prio} ({' '.join(f'{k}={v}' for k, v in r.items() if k != 'action')})"
