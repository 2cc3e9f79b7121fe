"""Connection tracking through the kernel's conntrack kfuncs against ebplane's own table:
ns/packet (BPF_PROG_TEST_RUN, XDP) of the programs of baselines/conntrack_cmp.bpf.c, for a
packet of an established flow (original and reply direction) and for a new flow per packet.

Everything runs inside a throw-away network namespace (``ebp-ctk-*``): the kfuncs track in
the namespace of the caller of BPF_PROG_TEST_RUN, so the kernel's entries live and die with
it.  Each program is attached (native XDP on a veth there) while measured (platform notes:
an unattached program pays an RCU sync per call).

    .venv/bin/python benchmarks/conntrack_kfunc.py [--repeat N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ebplane.codegen.layout import COUNT as COUNT_LAYOUT
from ebplane.codegen.p4c import USER_BYTES
from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.programs import BpfObject
from ebplane.net import attach as att
from ebplane.net import netns
from ebplane.stages.conntrack.gen import LAYOUTS, c_defines
from ebplane.toolchain.clang import compile_file

SOURCE = Path(__file__).parent / "baselines" / "conntrack_cmp.bpf.c"
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
ORIG = bytes(E / IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=4000, dport=53) / (b"x" * 32))
REPLY = bytes(E / IP(src="198.18.2.2", dst="198.18.1.2") / UDP(sport=53, dport=4000) / (b"y" * 32))
WAYS = {"kf": "kernel conntrack (kfuncs)", "own": "own table (as the stage)",
        "pre": "own table, preallocated"}
RESULTS = ("hit", "inserted", "insert_failed", "not_parsed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ebp-ctk-") as tmp:
        # the conntrack stage's structs, from their one definition (as a program gets them)
        (Path(tmp) / "ct_layouts.h").write_text(
            "\n\n".join(t.c() for t in (COUNT_LAYOUT, *LAYOUTS)) + "\n")
        elf = compile_file(SOURCE, extra_flags=[f"-I{SOURCE.parent}", f"-I{tmp}"],
                           defines={"EBP_USER_BYTES": USER_BYTES, **c_defines()},
                           use_cache=False).elf
    rows = []
    with netns.temporary("ebp-ctk") as ns, netns.enter(ns.name):
        netns.run(ns.name, ["ip", "link", "add", "ck0", "type", "veth", "peer", "name", "ck1"])
        netns.run(ns.name, ["ip", "link", "set", "ck0", "up"])
        obj = BpfObject.open_bytes(elf, "conntrack_cmp")
        try:
            obj.load()
            res = obj.maps["results"].with_codecs(U32, COUNT)
            for way in WAYS:
                cases = [("established, original direction", f"{way}_est", ORIG),
                         ("established, reply direction", f"{way}_est", REPLY),
                         ("new flow per packet", f"{way}_new", ORIG)]
                for label, pname, pkt in cases:
                    prog = obj.programs[pname]
                    prog.test_run(ORIG)  # the flow exists (est cases)
                    before = [res.lookup_sum(i).packets for i in range(len(RESULTS))]
                    a = att.attach_xdp(prog.fd, "ck0", mode="native", use_link=True)
                    try:
                        prog.test_run(pkt, repeat=args.repeat)
                        ns_pp = [float(prog.test_run(pkt, repeat=args.repeat).duration_ns)
                                 for _ in range(args.rounds)]
                    finally:
                        a.link.detach()
                        a.link.close()
                    after = [res.lookup_sum(i).packets for i in range(len(RESULTS))]
                    rows.append({"way": WAYS[way], "case": label,
                                 "ns": round(statistics.median(ns_pp), 1),
                                 "insns": prog.info()["insns"] if "insns" in prog.info()
                                 else None,
                                 "results": {r: after[i] - before[i]
                                             for i, r in enumerate(RESULTS)
                                             if after[i] != before[i]}})
        finally:
            obj.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'way':<27} {'case':<33} {'ns/pkt':>7}  results")
    for r in rows:
        print(f"{r['way']:<27} {r['case']:<33} {r['ns']:>7}  {r['results']}")


if __name__ == "__main__":
    main()
