"""``ebplane bench``: figures that show what ebplane costs, next to the floor, hand-written C,
xdp-filter, nftables and kernel forwarding, on the same machine and the same packets.

Sections: ``cost`` (BPF_PROG_TEST_RUN ns/packet), ``live`` (veth throughput with an XDP
live-frames generator), ``control`` (table load, apply latency, loss during re-apply),
``scaling`` (cost against rules, shapes and protocols), ``xsk`` (AF_XDP receive in Python),
``classbench`` (generated realistic rule sets: cost, load time, live against the floor and
nftables).  Entry point: :func:`run_bench`.
"""

from ebplane.bench.run import SECTIONS, BenchConfig, parse_sections, run_bench

__all__ = ["SECTIONS", "BenchConfig", "parse_sections", "run_bench"]
