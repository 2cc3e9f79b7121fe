"""Section l4, stateful functions live: a stateful firewall (conntrack + a filter on state:)
and masquerading NAT on the dut, against nftables with the kernel's conntrack doing the same
job in the dut's namespace, on the live lab of section live (``bench/live.py``).

The traffic is the suite's one UDP flow from gen (inside, 198.18.1.0/24) through the dut to
the sink: every packet looks its connection up (a hit after the first), and passes.  A rate
counts what reaches the sink; the NAT rows also check that what arrives was translated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import yaml

from ebplane.bench.harness import Progress, Spread
from ebplane.bench.live import XDP_DROP, LiveLab, LiveRow, _measure, _ratios, _run
from ebplane.net import netns

NFT_TABLE = "ebpbench_l4"
INSIDE = "198.18.1.0/24"

SFW_SPEC = {
    "pipeline": "l4sfw", "hook": "xdp",
    "protocols": ["ethernet", "ipv4", "tcp", "udp", "icmp"],
    "stages": [
        {"conntrack": {"size": 65536}},
        {"filter": {"name": "fw", "default": "drop", "rules": [
            {"state": ["established", "related"], "action": "pass"},
            {"src": INSIDE, "action": "pass"},
            {"state": "new", "proto": "tcp", "dport": 443, "action": "pass"},
            {"state": "untracked", "action": "pass"}]}}]}
SFW_NFT = f"""table inet {NFT_TABLE} {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ip saddr {INSIDE} accept
    ct state new tcp dport 443 accept
  }}
}}
"""
NAT_SPEC = {
    "pipeline": "l4nat", "hook": "tc-egress",
    "protocols": ["ethernet", "ipv4", "tcp", "udp", "icmp"],
    "stages": [{"nat": {"masquerade": {"from": [INSIDE], "interface": "eth1"},
                        "size": 65536}}]}
NAT_NFT = f"""table ip {NFT_TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    ip saddr {INSIDE} masquerade
  }}
}}
"""


def run_l4(lab: LiveLab, seconds: float, repeats: int, progress: Progress) -> dict:
    from ebplane.runtime.pipeline import apply, detach, stats

    dut = lab.ns("dut")
    gen = LiveRow("generator-only", "the generator drops its own frames (subtracted below)")
    progress(f"l4: generator only ({repeats} x {seconds:g} s)")
    _run(lab, gen, lab.sent, seconds, repeats, action=XDP_DROP)
    gen_ns = 1e9 / Spread.of(gen.pps).median
    checks: dict[str, int] = {}

    def ebplane(spec: dict, interfaces: list[str], native: bool) -> Callable:
        @contextlib.contextmanager
        def setup() -> Iterator[str]:
            d = {**spec, "netns": dut, "interfaces": interfaces}
            if native:
                d["mode"] = "native"
            path = lab.workdir / f"{spec['pipeline']}.yaml"
            path.write_text(yaml.safe_dump(d, sort_keys=False))
            name = apply(path).name
            try:
                yield name
                st = next(s for s in stats(name)[0]["stages"] if s["kind"] in ("nat", "filter"))
                if st["kind"] == "nat":
                    checks["ebplane_nat_translated"] = checks.get(
                        "ebplane_nat_translated", 0) + st["counts"]["translated_out"]["packets"]
            finally:
                detach(name)
        return setup

    def nft(ruleset: str) -> Callable:
        @contextlib.contextmanager
        def setup() -> Iterator[None]:
            netns.run(dut, ["nft", "-f", "-"], input=ruleset)
            try:
                yield None
            finally:
                family = ruleset.split()[1]
                netns.run(dut, ["nft", "delete", "table", family, NFT_TABLE], check=False)
        return setup

    def sink(_) -> Callable[[], int]:
        return lab.sink_received

    duts = [
        (LiveRow("kernel", "kernel IPv4 forwarding, no filtering, no NAT"),
         contextlib.nullcontext),
        (LiveRow("ebplane-firewall", "conntrack + filter on state: (4 rules), native XDP on "
                                     "eth0 and eth1, then kernel forwarding"),
         ebplane(SFW_SPEC, ["eth0", "eth1"], True)),
        (LiveRow("ebplane-firewall-tc", "the same pipeline at tc-ingress of eth0 and eth1"),
         ebplane({**SFW_SPEC, "pipeline": "l4sfwtc", "hook": "tc-ingress"}, ["eth0", "eth1"],
                 False)),
        (LiveRow("nftables-firewall", "nftables forward chain with conntrack: ct state "
                                      f"established,related accept; ip saddr {INSIDE} accept; "
                                      "ct state new tcp dport 443 accept; policy drop"),
         nft(SFW_NFT)),
        (LiveRow("ebplane-nat", f"nat stage: masquerade {INSIDE} to eth1's address, "
                                "tc-egress (and tc-ingress) on eth1"),
         ebplane(NAT_SPEC, ["eth1"], False)),
        (LiveRow("nftables-nat", f"nftables postrouting: ip saddr {INSIDE} masquerade "
                                 "(conntrack translates)"),
         nft(NAT_NFT)),
    ]
    # round-robin: each device under test once per round, so that a burst of other work on
    # the machine spreads over all of them instead of spoiling one
    for _ in range(repeats):
        for row, setup in duts:
            if row.error is None:
                _measure(lab, row, setup, sink, seconds, 1, progress)
    rows = [row for row, _ in duts]
    out = [r.to_dict(gen_ns) for r in rows]
    _ratios(out, "kernel")
    by = {r["name"]: r for r in out}
    ratios = {}
    for a, b in (("ebplane-firewall", "nftables-firewall"),
                 ("ebplane-firewall-tc", "nftables-firewall"), ("ebplane-nat", "nftables-nat")):
        if "mpps" in by.get(a, {}) and "mpps" in by.get(b, {}):
            ratios[f"{a} / {b}"] = {
                "rate": round(by[a]["mpps"]["median"] / by[b]["mpps"]["median"], 2),
                "dut_cost": round(by[a]["dut_ns_per_packet"] / by[b]["dut_ns_per_packet"], 2)
                if by[a].get("dut_ns_per_packet") and by[b].get("dut_ns_per_packet") else None}
    t = lab.suite.traffic
    return {"method": "as section live: one CPU runs the generator and the dut; a rate counts "
                      "the packets that reach the sink; dut_ns_per_packet subtracts the "
                      "generator-only run",
            "traffic": f"one flow, {t.proto} {t.src}:{t.sport} > {t.dst}:{t.dport} "
                       "(inside to outside; every packet after the first finds its connection)",
            "seconds": seconds, "repeats": repeats, "generator": gen.to_dict(None),
            "rows": out, "ratios": ratios, "checks": checks}
