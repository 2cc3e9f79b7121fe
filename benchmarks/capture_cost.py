"""Cost of ebplane trace's capture hooks: ns/packet (BPF_PROG_TEST_RUN) of a pipeline's
program without them (before and after a trace: the same program), and with them for a
packet that is captured and for one that is not (not selected by --verdict, or rejected by
the tcpdump filter in the kernel, or over the rate limit).

The edge firewall of examples/edge.yaml (a filter of 4 rules and a count stage) runs on a
UDP frame its default lets through.  Each program stays attached (generic XDP on a veth of a
throw-away namespace) while measured (platform-notes: an unattached XDP program pays an RCU
sync per test_run call).  Captured frames are drained from the ring buffer between runs, so
every measured run reserves, copies and submits a record.

    .venv/bin/python benchmarks/capture_cost.py [--repeat N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ebplane.codegen.capture import CAPTURE_COUNTERS, CaptureSpec
from ebplane.codegen.pipeline import spec_features
from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.ringbuf import RingBuffer
from ebplane.net import attach as att
from ebplane.net import netns
from ebplane.runtime.build import build
from ebplane.spec import load_spec
from ebplane.toolchain.pcapfilter import compile_filter

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
              IP(src="198.18.1.2", dst="198.18.2.2") / UDP(sport=4000, dport=9999) /
              (b"x" * 64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spec = load_spec("examples/edge.yaml")
    features = spec_features(spec)
    cases = {
        "trace off": None,
        "trace on, packet captured (snaplen 256)": CaptureSpec(snaplen=256),
        "trace on, packet captured (snaplen 1514)": CaptureSpec(snaplen=1514),
        "trace on, captured through a filter ('udp')":
            CaptureSpec(filter=tuple(compile_filter("udp"))),
        "trace on, not selected (--verdict drop)": CaptureSpec(verdict=1),
        "trace on, rejected by the filter ('tcp port 22')":
            CaptureSpec(filter=tuple(compile_filter("tcp port 22"))),
        "trace on, over the rate limit (--rate 1)": CaptureSpec(rate=1),
        "trace off again": None,
    }
    progs = {}
    for label, cap in cases.items():
        b = build(spec, features, capture=cap)
        b.install_spec_rules()
        progs[label] = (b, b.program.info()["insns"])
    samples: dict[str, list[float]] = {k: [] for k in cases}
    links, rings = [], []
    try:
        with netns.temporary("ebp-cc") as ns, netns.enter(ns.name):
            for i, (b, _) in enumerate(progs.values()):
                netns.run(ns.name, ["ip", "link", "add", f"cc{i}", "type", "veth", "peer",
                                    "name", f"cd{i}"])
                links.append(att.attach_xdp(b.program.fd, f"cc{i}", mode="generic").link)
            for label, (b, _) in progs.items():
                rings.append(RingBuffer(b.map("ebp_cap_ring"), lambda d: None)
                             if "ebp_cap_ring" in b.obj.maps else None)
            for _ in range(args.rounds):
                for (label, (b, _)), rb in zip(progs.items(), rings):
                    samples[label].append(b.program.test_run(FRAME, repeat=args.repeat)
                                          .duration_ns)
                    if rb is not None:
                        rb.consume()
            full = {label: b.obj.maps["ebp_cap_cnt"].with_codecs(U32, COUNT).lookup_sum(
                CAPTURE_COUNTERS.index("ring_full")).packets
                    if "ebp_cap_cnt" in b.obj.maps else 0 for label, (b, _) in progs.items()}
    finally:
        for rb in rings:
            if rb is not None:
                rb.close()
        for link in links:
            link.close()
        for b, _ in progs.values():
            b.close()
    rows = [{"case": k, "insns": progs[k][1], "ns": round(statistics.median(v), 1),
             "ring_full": full[k]} for k, v in samples.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'case':<52} {'insns':>6} {'ns/pkt':>7} {'ring full':>9}")
    for r in rows:
        print(f"{r['case']:<52} {r['insns']:>6} {r['ns']:>7} {r['ring_full']:>9}")


if __name__ == "__main__":
    main()
