"""Several pipelines on one XDP hook: the tail-call chain ebplane builds (a root program and a
PROG_ARRAY of members, docs/composition.md) against one fused program holding the stages of
every pipeline, for 1, 2 and 4 pipelines; and what changing one pipeline costs in each.

Each pipeline is a count stage and a filter of 8 rules the measured frame matches none of, so
every pipeline passes it on and all of them run.  Both forms are applied for real (``apply``)
on a veth of a throw-away namespace, with a private state directory and bpffs root, and
measured with BPF_PROG_TEST_RUN on the program the interface runs (the root, or the fused
program), which stays attached while measured (platform-notes: no RCU sync per call); the
context names the veth (the members find the interface's slots by ingress ifindex).  The
count stages must see every run: the chain really ran every member.

    .venv/bin/python benchmarks/dispatch_cost.py [--repeat N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import tempfile
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
              IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=4000, dport=9999) / (b"x" * 64))
DEV = "dc0"


def stages(i: int, extra_rule: bool = False) -> str:
    rules = "".join(f"        - {{dst: 198.19.{i}.{r}, proto: udp, dport: {100 + r}, action: drop}}\n"
                    for r in range(8 + extra_rule))
    return (f"  - count: {{name: c{i}}}\n"
            f"  - filter:\n      name: f{i}\n      classifier: inline\n      rules:\n{rules}")


def spec(ns: str, name: str, body: str, priority: int | None, devs: str = DEV) -> str:
    prio = f"priority: {priority}\n" if priority is not None else ""
    return (f"pipeline: {name}\nhook: xdp\nmode: native\n{prio}netns: {ns}\n"
            f"interfaces: [{devs}]\nprotocols: [ethernet, ipv4, ipv6, tcp, udp]\nstages:\n{body}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ebp-dispatch-bench-"))
    os.environ["EBPLANE_STATE_DIR"] = str(work / "state")
    os.environ["EBPLANE_BPFFS_ROOT"] = f"/sys/fs/bpf/ebp-bench-{secrets.token_hex(4)}"
    os.environ["EBPLANE_CACHE_DIR"] = str(work / "cache")  # every change compiles anew
    from ebplane.kernel.libbpf import XdpMd
    from ebplane.kernel.links import Link
    from ebplane.kernel.programs import Program
    from ebplane.net import iface, netns
    from ebplane.runtime import pipeline
    from ebplane.runtime.state import all_names

    def apply(name: str, body: str, priority: int | None, devs: str = DEV):
        p = work / f"{name}.yaml"
        p.write_text(spec(ns.name, name, body, priority, devs))
        return pipeline.apply(p)

    def attached_prog(name: str) -> Program:
        a = pipeline.status(name)[0]["attachments"][0]
        pin = a.get("root_pin") or a["link_pin"]
        with Link.from_pin(pin) as link:
            return Program.from_id(link.prog_id())

    def measure(prog: Program, counts: list[str]) -> dict:
        with netns.enter(ns.name):
            ctx = XdpMd(data_end=len(FRAME), ingress_ifindex=iface.ifindex(DEV))
            before = [_count(c) for c in counts]
            assert prog.test_run(FRAME, ctx=ctx).verdict == "XDP_PASS"
            runs = [prog.test_run(FRAME, repeat=args.repeat, ctx=ctx).duration_ns
                    for _ in range(args.rounds)]
            after = [_count(c) for c in counts]
        want = 1 + args.repeat * args.rounds
        assert all(a - b == want for a, b in zip(after, before)), (before, after, want)
        return {"ns_median": statistics.median(runs), "ns_min": min(runs), "ns_max": max(runs)}

    def _count(where: str) -> int:
        name, stage = where.split("/")
        st = pipeline.stats(name)[0]
        return next(s for s in st["stages"] if s["stage"] == stage)["counts"]["all"]["packets"]

    rows = []
    try:
        with netns.temporary("ebp-bench") as ns:
            netns.run(ns.name, ["ip", "link", "add", DEV, "type", "veth", "peer", "name", "dc1"])
            for d in (DEV, "dc1"):
                netns.run(ns.name, ["ip", "link", "set", d, "up"])
            # dc1's own member programs stay idle: only dc0's root is measured
            for n in (1, 2, 4):
                for i in range(n):
                    apply(f"m{i}", stages(i), i)
                with contextlib.closing(attached_prog("m0")) as root:
                    chain = measure(root, [f"m{i}/c{i}" for i in range(n)])
                res = apply(f"m{n - 1}", stages(n - 1, extra_rule=True), n - 1)
                chain_change = res.seconds
                for i in range(n):
                    pipeline.detach(f"m{i}")
                # members of two interfaces: slots looked up per packet, indirect tail calls
                for i in range(n):
                    apply(f"m{i}", stages(i), i, devs=f"{DEV}, dc1")
                with contextlib.closing(attached_prog("m0")) as root:
                    lookup = measure(root, [f"m{i}/c{i}" for i in range(n)])
                for i in range(n):
                    pipeline.detach(f"m{i}")
                apply("fused", "".join(stages(i) for i in range(n)), None)
                with contextlib.closing(attached_prog("fused")) as prog:
                    fused = measure(prog, [f"fused/c{i}" for i in range(n)])
                res = apply("fused", "".join(stages(i, extra_rule=i == n - 1)
                                             for i in range(n)), None)
                fused_change = res.seconds
                pipeline.detach("fused")
                rows.append({"pipelines": n, "chain_ns": chain["ns_median"],
                             "chain_lookup_ns": lookup["ns_median"],
                             "fused_ns": fused["ns_median"],
                             "chain_range": [chain["ns_min"], chain["ns_max"]],
                             "fused_range": [fused["ns_min"], fused["ns_max"]],
                             "change_one_chain_s": chain_change,
                             "change_one_fused_s": fused_change})
    finally:
        for name in all_names():
            with contextlib.suppress(Exception):
                pipeline.detach(name)
        shutil.rmtree(os.environ["EBPLANE_BPFFS_ROOT"], ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"ns/packet (BPF_PROG_TEST_RUN, median of {args.rounds} x {args.repeat}); "
          f"seconds to apply a change of one pipeline")
    print("pipelines  chain  chain(2 interfaces)  fused  change one: chain  fused")
    for r in rows:
        print(f"{r['pipelines']:>9}  {r['chain_ns']:>5.0f}  {r['chain_lookup_ns']:>19.0f}  "
              f"{r['fused_ns']:>5.0f}  {r['change_one_chain_s']:>17.3f}  "
              f"{r['change_one_fused_s']:>5.3f}")


if __name__ == "__main__":
    main()
