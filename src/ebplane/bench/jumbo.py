"""Section ``jumbo``: forwarding rates of 9000-byte frames on veths with MTU 9000 — native
multi-buffer XDP (``xdp.frags``) against generic XDP and against the kernel's forwarding.

The generator of section 2 cannot make jumbo frames (the kernel refuses
BPF_F_TEST_XDP_LIVE_FRAMES for frames larger than a page), so here the traffic comes from a
kernel UDP socket in ``gen`` (8972-byte datagrams, one 9014-byte frame each), its thread
pinned to one CPU; the veth hands each frame to the device under test's NAPI on that CPU, so
the rate is that of sender, device under test and sink together on one CPU, the same for
every row; the sender's TX checksum offload stays on in every row (the sink verifies no
checksum).  On veths, native XDP gets each frame from an skb (veth copies it into pages), so
the gap to generic XDP is smaller than on a NIC whose driver hands XDP its own pages.  The sink drops every frame in a native XDP ebplane filter and counts it: a rate
counts only frames the sink saw.

Lab: ``gen:g0 -- dut:eth0``, ``dut:eth1 -- sink:eth0``, MTU 9000 everywhere, ``ebp-bjumbo-*``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ebplane.bench.harness import Progress, Spread
from ebplane.bench.live import _pin_cpu, pinned
from ebplane.errors import EbplaneError
from ebplane.lab.topology import Lab, Topology
from ebplane.net import iface, netns

LAB = "ebp-bjumbo"
MTU = 9000
PAYLOAD = MTU - 20 - 8           # one IPv4 UDP datagram filling the MTU
SINK_ADDR = "198.18.97.2"
TOPOLOGY = f"""
lab: {LAB}
nodes:
  gen: {{}}
  dut: {{forward: true}}
  sink: {{}}
links:
  - {{a: "gen:g0", b: "dut:eth0", mtu: {MTU}, a_addr: [198.18.96.2/24], b_addr: [198.18.96.1/24]}}
  - {{a: "dut:eth1", b: "sink:eth0", mtu: {MTU}, a_addr: [198.18.97.1/24], b_addr: [{SINK_ADDR}/24]}}
routes:
  gen: [default via 198.18.96.1]
"""
ROWS: tuple[tuple[str, str], ...] = (
    ("sender-floor", "the DUT drops every frame in native multi-buffer XDP (sender's own "
                     "cost; subtracted for the forwarding cost column)"),
    ("kernel", "kernel IPv4 forwarding, no XDP on the DUT"),
    ("generic", "ebplane route, generic XDP (skb path)"),
    ("native", "ebplane route, native multi-buffer XDP (xdp.frags)"),
)


def _spec(path: Path, name: str, ns: str, interfaces: list[str], mode: str, stages: str) -> Path:
    path.write_text(f"pipeline: {name}\nhook: xdp\nmode: {mode}\nnetns: {ns}\n"
                    f"interfaces: {interfaces}\nprotocols: [ethernet, ipv4, udp]\n"
                    f"stages:\n{stages}".replace("'", ""))
    return path


class JumboLab:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.lab = Lab(Topology.parse(TOPOLOGY, "<bench jumbo lab>"))
        self.cpu = _pin_cpu()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "JumboLab":
        from ebplane.runtime.pipeline import apply, detach
        if self.lab.record_path.exists() or any(netns.exists(n) for n in self.lab.namespaces()):
            self.lab.down()  # left over by an interrupted benchmark: the names are ours
        self.lab.up()
        self._stack.callback(self.lab.down)
        try:
            dut, sink, gen = self.lab.ns("dut"), self.lab.ns("sink"), self.lab.ns("gen")
            with netns.enter(sink):
                sink_mac = iface.info("eth0").mac
            # the sink drops everything at XDP, ARP too: the DUT knows its MAC
            netns.run(dut, ["ip", "neigh", "replace", SINK_ADDR, "lladdr", sink_mac, "dev",
                            "eth1", "nud", "permanent"])
            self.sink = apply(_spec(self.workdir / "jsink.yaml", "jsink", sink, ["eth0"],
                                    "native", "  - filter: {default: drop}\n")).name
            self._stack.callback(detach, self.sink)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def received(self) -> int:
        from ebplane.runtime.pipeline import stats
        return int(stats(self.sink)[0]["verdicts"]["XDP_DROP"]["packets"])

    @contextlib.contextmanager
    def dut(self, row: str) -> Iterator:
        """Set the DUT up for ``row``; yields the counter of frames it handled."""
        if row == "kernel":
            yield self.received
            return
        from ebplane.runtime.pipeline import apply, detach, stats
        if row == "sender-floor":
            name = apply(_spec(self.workdir / "jdut-floor.yaml", "jdut-floor",
                               self.lab.ns("dut"), ["eth0"], "native",
                               "  - filter: {default: drop}\n")).name
            count = lambda: int(stats(name)[0]["verdicts"]["XDP_DROP"]["packets"])  # noqa: E731
        else:
            name = apply(_spec(self.workdir / f"jdut-{row}.yaml", f"jdut-{row}",
                               self.lab.ns("dut"), ["eth0", "eth1"], row,
                               "  - route: {}\n")).name
            count = self.received
        # apply turned the sender's TX checksum offload off (its frames are redirected
        # without skb state); the sink verifies no checksum, so the sender keeps the same
        # (cheaper) settings in every row
        netns.run(self.lab.ns("gen"), ["ethtool", "-K", "g0", "tx", "on"])
        try:
            yield count
        finally:
            detach(name)

    def blast(self, seconds: float) -> tuple[int, float]:
        """Send full-MTU UDP datagrams to the sink for ``seconds``; (sent, wall seconds)."""
        payload = bytes(PAYLOAD)
        with netns.enter(self.lab.ns("gen")):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = 0
        with sock, pinned(self.cpu):
            sock.connect((SINK_ADDR, 9))
            t0 = time.perf_counter()
            while (wall := time.perf_counter() - t0) < seconds:
                for _ in range(64):
                    try:
                        sock.send(payload)
                        sent += 1
                    except OSError:  # ENOBUFS: a full queue; the frame is not sent
                        pass
        return sent, wall


def run_jumbo(workdir: Path, seconds: float, repeats: int, progress: Progress) -> dict:
    rows = []
    progress("jumbo: bringing up ebp-bjumbo (gen -- dut -- sink, MTU 9000)")
    with JumboLab(workdir) as lab:
        lab.blast(min(seconds, 0.2))  # warm up: ARP for the gateway, caches
        for row, what in ROWS:
            progress(f"jumbo: {row} ({repeats} x {seconds:g} s)")
            pps, gbps, handled = [], [], []
            try:
                with lab.dut(row) as count:
                    for _ in range(repeats):
                        before = count()
                        sent, wall = lab.blast(seconds)
                        got = count() - before
                        pps.append(got / wall)
                        gbps.append(got * (MTU + 14) * 8 / wall / 1e9)
                        handled.append(got / sent if sent else 0.0)
            except EbplaneError as e:
                rows.append({"name": row, "what": what, "error": str(e)})
                progress(f"jumbo: {row}: {e}")
                continue
            rows.append({"name": row, "what": what,
                         "kpps": Spread.of([p / 1e3 for p in pps]).to_dict(1),
                         "gbit_s": Spread.of(gbps).to_dict(2),
                         "handled_fraction": round(min(handled), 4)})
    ref = next((r for r in rows if r["name"] == "kernel" and "kpps" in r), None)
    floor = next((r for r in rows if r["name"] == "sender-floor" and "kpps" in r), None)
    for r in rows:
        if "kpps" not in r:
            continue
        r["ns_per_frame"] = round(1e6 / r["kpps"]["median"])
        if ref:
            r["speedup_vs_kernel"] = round(r["kpps"]["median"] / ref["kpps"]["median"], 2)
        if floor and r is not floor:
            # what forwarding adds to the sender's (and the drop's) cost, per frame
            r["forward_ns_per_frame"] = r["ns_per_frame"] - floor["ns_per_frame"]
    return {"method": f"a kernel UDP socket in gen sends {PAYLOAD}-byte datagrams "
                      f"({MTU + 14}-byte frames) for {seconds:g} s, {repeats} runs per row, its "
                      f"thread pinned to CPU {lab.cpu}, where the veths also run the DUT and the "
                      f"sink; the sink drops every frame in native multi-buffer XDP and counts "
                      f"it; a rate counts only frames the sink saw",
            "mtu": MTU, "cpu": lab.cpu, "seconds": seconds, "repeats": repeats, "rows": rows}
