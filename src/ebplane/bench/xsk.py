"""AF_XDP receive rate of the Python consumer (``ebplane.xsk``), copy mode on veth.

A live-frames generator on CPU 0 redirects frames into veth0 of a throw-away namespace; on
veth1 an ``xsk`` pipeline hands them to an AF_XDP socket that this process drains on CPU 1.
The baseline, measured in the same run with the same generator, is an XDP program that
drops every frame on veth1: the rate the veth path itself can deliver.  Reported: Mpps of
each (best of ``runs``) and the consumer's share of the baseline.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from ebplane.bench.harness import Progress
from ebplane.kernel.programs import BPF_F_TEST_XDP_LIVE_FRAMES, BpfObject
from ebplane.net import attach, iface, netns
from ebplane.toolchain.clang import compile_c

FRAME = bytes.fromhex("02eb00000002" "02eb00000001" "0800"
                      "4500002e000000004011" "0000" "c6123c01c6123c02"
                      "d4310035001a0000") + bytes(18)
GENERATOR = """// SPDX-License-Identifier: GPL-2.0
/* traffic generator: run with BPF_F_TEST_XDP_LIVE_FRAMES, every frame goes out of TARGET */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp")
int gen(struct xdp_md *ctx)
{
	return bpf_redirect(TARGET, 0);
}
char LICENSE[] SEC("license") = "GPL";
"""
COUNT_DROP = """// SPDX-License-Identifier: GPL-2.0
/* baseline: drop every frame, count the generator's */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");
SEC("xdp")
int count_drop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u32 k = 0;
	__u64 *n;

	/* count the generator's frames only (IPv4); drop everything */
	if (data + 14 <= data_end && ((__u8 *)data)[12] == 0x08 && ((__u8 *)data)[13] == 0x00) {
		n = bpf_map_lookup_elem(&seen, &k);
		if (n)
			*n += 1;
	}
	return XDP_DROP;
}
char LICENSE[] SEC("license") = "GPL";
"""


def _generate(ns: str, gen: BpfObject, frames: int, done: threading.Event) -> None:
    os.sched_setaffinity(0, {0})
    with netns.enter(ns):
        gen.programs["gen"].test_run(FRAME, repeat=frames, batch_size=256,
                                     flags=BPF_F_TEST_XDP_LIVE_FRAMES)
    done.set()


def _xsk_run(ns: str, gen: BpfObject, xs, frames: int) -> tuple[int, float]:
    """(frames the socket received, seconds from the first to the last)."""
    done = threading.Event()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    t = threading.Thread(target=_generate, args=(ns, gen, frames, done))
    try:
        t.start()
        first = xs.recv_batch(timeout=3.0)
        got = len(first)
        xs.release(first)
        t0 = last = time.perf_counter()
        while True:
            b = xs.recv_batch(timeout=0.05 if done.is_set() else 0.0)
            if len(b):
                got += len(b)
                xs.release(b)
                last = time.perf_counter()
            elif done.is_set():
                break
        return got, max(last - t0, 1e-9)
    finally:
        t.join()
        os.sched_setaffinity(0, before)


def _drop_run(ns: str, gen: BpfObject, sink: BpfObject, frames: int) -> tuple[int, float]:
    m = sink.maps["seen"]
    start = sum(int.from_bytes(v, "little") for v in m.lookup(bytes(4)))
    done = threading.Event()
    t0 = time.perf_counter()
    t = threading.Thread(target=_generate, args=(ns, gen, frames, done))
    t.start()
    t.join()
    seconds = time.perf_counter() - t0
    got = sum(int.from_bytes(v, "little") for v in m.lookup(bytes(4))) - start
    return got, seconds


def run_xsk(frames: int, runs: int, progress: Progress) -> dict:
    from ebplane.runtime import pipeline
    from ebplane.xsk import XskSocket

    with netns.temporary("ebp-bench-xsk") as ns, tempfile.TemporaryDirectory() as tmp:
        # no IPv6 on the veths: the kernel's neighbour discovery would add frames to the counts
        netns.run(ns.name, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"])
        netns.run(ns.name, ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"])
        for dev in ("veth0", "veth1"):
            netns.run(ns.name, ["ip", "link", "set", dev, "up"])
        with netns.enter(ns.name):
            iface.wait_up("veth1")
            target = iface.ifindex("veth0")
        gen = BpfObject.open_bytes(compile_c(GENERATOR, name="xsk_gen",
                                             defines={"TARGET": target}).elf, "xsk_gen").load()
        sink = BpfObject.open_bytes(compile_c(COUNT_DROP, name="count_drop").elf, "count_drop").load()
        try:
            progress(f"xsk: baseline, XDP drop on veth1 ({runs} x {frames} frames)")
            with netns.enter(ns.name):
                link = attach.attach_xdp(sink.programs["count_drop"].fd, "veth1", mode="native").link
            try:
                base = [_drop_run(ns.name, gen, sink, frames) for _ in range(runs)]
            finally:
                link.close()
            spec = Path(tmp) / "xsk.yaml"
            spec.write_text(f"pipeline: bench-xsk\nhook: xdp\nnetns: {ns.name}\n"
                            "interfaces: [veth1]\nprotocols: [ethernet, ipv4, udp]\n"
                            "stages:\n  - xsk: {queue: 0}\n")
            pipeline.apply(spec)
            try:
                progress(f"xsk: AF_XDP copy-mode consumer in Python ({runs} x {frames} frames)")
                with XskSocket("veth1", netns=ns.name, frames=32768, ring_size=8192) as xs:
                    xs.attach("bench-xsk")
                    runs_xsk = [_xsk_run(ns.name, gen, xs, frames) for _ in range(runs)]
                    stats = xs.stats()
                    mode = xs.mode
            finally:
                pipeline.detach("bench-xsk")
        finally:
            gen.close()
            sink.close()

    def best(rs):
        return max(got / sec / 1e6 for got, sec in rs)
    xsk_mpps, base_mpps = best(runs_xsk), best(base)
    return {"frames": frames, "runs": runs, "mode": mode,
            "xsk": {"mpps": round(xsk_mpps, 3), "received": [g for g, _ in runs_xsk],
                    "socket_stats": stats},
            "baseline_xdp_drop": {"mpps": round(base_mpps, 3), "counted": [g for g, _ in base]},
            "ratio_to_baseline": round(xsk_mpps / base_mpps, 3) if base_mpps else None,
            "method": ("live-frames generator on CPU 0 redirecting into a veth; the consumer on "
                       "CPU 1; best of the runs; baseline = XDP drop on the same veth, same run")}
