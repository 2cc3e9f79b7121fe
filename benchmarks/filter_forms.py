"""Where the inline form stops paying: program cost of the two compiled forms of the filter
against the number of rules, measured in one run (BPF_PROG_TEST_RUN, as `ebplane bench`
section cost).  Rules look like an ACL's: a source prefix, a protocol and a destination port
or range each; the packet misses every rule (the inline form's worst case) or hits the last.

    .venv/bin/python benchmarks/filter_forms.py [--repeat N] [--runs N] [--json]

Prints ns/packet per form and rule count, and the ratio tree/inline: the threshold
(plan.INLINE_MAX) is where it falls below 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import random

from ebplane.bench.harness import CostHarness, frame, load_pipeline
from ebplane.bench.scaling import filter_spec
from ebplane.lab.traffic import Flow
from ebplane.spec import Rule

SIZES = tuple(int(x) for x in __import__("os").environ.get("EBP_SIZES", "1,2,4,8,16,24,32,48,64,128,256").split(","))


def acl(n: int, seed: int = 1) -> list[Rule]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        plen = rng.choice([16, 20, 24, 28, 32])
        base = int(ipaddress.IPv4Address("198.18.0.0")) + rng.randrange(1 << 16)
        src = ipaddress.IPv4Network((base & ~((1 << (32 - plen)) - 1), plen))
        lo = rng.choice([22, 53, 80, 443, 1024, 6000])
        hi = lo if rng.random() < 0.6 else lo + rng.choice([1, 63, 1000])
        out.append(Rule("drop", src=src, proto=rng.choice([6, 17]), dport=(lo, hi)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with CostHarness(args.repeat, args.runs) as h:
        for n in SIZES:
            rules = acl(n)
            last = rules[-1]
            hit = Flow("tcp" if last.proto == 6 else "udp", str(last.src[0]), "198.18.2.2",
                       40000, last.dport[0])
            miss = Flow("udp", "198.19.255.1", "198.18.2.2", 40000, 9)
            row = {"rules": n}
            for form in ("inline", "tree"):
                spec = filter_spec("forms", ("ethernet", "ipv4", "tcp", "udp"), rules, n,
                                   classifier=form)
                built = load_pipeline(spec)
                try:
                    for pname, flow in (("miss", miss), ("hit", hit)):
                        row[f"{form}_{pname}"] = h.measure(built.program, frame(flow)).ns.median
                finally:
                    built.close()
            for pname in ("miss", "hit"):
                row[f"tree/inline_{pname}"] = round(row[f"tree_{pname}"] / row[f"inline_{pname}"], 2)
            rows.append(row)
            if not args.json:
                print(row, flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
