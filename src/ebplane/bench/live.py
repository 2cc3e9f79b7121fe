"""Section 2, live throughput on veth, and the lab that section 3 also uses.

Lab: ``gen:g0 -- dut:eth0``, ``dut:eth1 -- sink:eth0``, three ``ebp-bench-*`` namespaces.
The generator is an XDP program run with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES
(``bench/bpf/gen.bpf.c``): its XDP_TX sends each frame out of g0 into the device under test.
The generator's thread is pinned to one CPU; the veth hands frames to the peer's NAPI on
the same CPU, so that CPU does the generator's and the device under test's work.  A
generator-only run (the generator drops its own frames) is subtracted to give the cost of
the device under test alone.  Only packets the device under test is seen to handle count
(its own drop counter, or the sink's): a rate never includes frames lost on the way.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ebplane.bench.harness import (BENCH_BPF_DIR, FRAME_SIZE, XDP_DROP, PeerConfig, Progress,
                                   Spread, Suite, load_c, load_peer, only_program)
from ebplane.errors import EbplaneError, UsageError
from ebplane.kernel.programs import BPF_F_TEST_XDP_LIVE_FRAMES, BpfObject, XdpMd
from ebplane.lab.topology import Lab, Topology
from ebplane.lab.traffic import Flow
from ebplane.net import attach, iface, netns
from ebplane.spec import STAGE_KINDS, load_spec

LAB = "ebp-bench"
TOPOLOGY = f"""
lab: {LAB}
nodes:
  gen: {{}}
  dut: {{forward: true}}
  sink: {{}}
links:
  - {{a: "gen:g0", b: "dut:eth0", a_addr: [198.18.1.2/24], b_addr: [198.18.1.1/24]}}
  - {{a: "dut:eth1", b: "sink:eth0", a_addr: [198.18.2.1/24], b_addr: [198.18.2.2/24]}}
"""
CHUNK = 1 << 17  # packets per test_run call of the generator
XDP_TX = 3
NFT_TABLE = "ebpbench"

Counter = Callable[[], int]


def _pin_cpu() -> int:
    """The CPU the generator (and so the device under test) runs on: the last usable one,
    leaving CPU 0 to the system and to the control plane."""
    return max(os.sched_getaffinity(0))


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class BenchLab:
    """A benchmark's lab, up for the ``with`` block: refused while another benchmark's
    process uses it, one left over by an interrupted run is taken down first, and everything
    ``_setup`` registers on ``self._stack`` is undone on exit (or when ``_setup`` fails).
    ``self.cpu``: the CPU the sender runs on (:func:`_pin_cpu`)."""

    def __init__(self, lab: Lab, workdir: Path):
        self.lab = lab
        self.workdir = workdir
        self.cpu = _pin_cpu()
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        owner = _record_pid(self.lab.record_path)
        if owner is not None and owner != os.getpid() and _alive(owner):
            raise UsageError(f"another benchmark (pid {owner}) is using the lab {self.lab.name}",
                             hint="wait for it to finish: two benchmarks on one machine "
                                  "would measure each other")
        if self.lab.record_path.exists() or any(netns.exists(n) for n in self.lab.namespaces()):
            self.lab.down()  # left over by an interrupted benchmark: the names are ours
        self.lab.up()
        self._stack.callback(self.lab.down)
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def ns(self, node: str) -> str:
        return self.lab.ns(node)

    def _setup(self) -> None:
        pass


class LiveFrames(BenchLab):
    """A lab whose sender is the live-frames generator (``bpf/gen.bpf.c``, ``self.gen``)
    XDP_TXing ``self.frame`` out of ``gen_ifindex`` in namespace node ``gen_node``."""

    gen_node = "gen"
    gen_ifindex = 0
    frame = b""

    def _load_generator(self) -> None:
        """Load the generator, attached to the loopback of ``gen_node`` (so that test_run
        skips the RCU sync); ``gen_ifindex`` is set by the caller."""
        self.gen = load_c(BENCH_BPF_DIR / "gen.bpf.c")
        self._stack.callback(self.gen.close)
        with netns.enter(self.ns(self.gen_node)):
            link = attach.attach_xdp(only_program(self.gen).fd, "lo", mode="generic").link
        self._stack.callback(link.close)

    def _configure(self, action: int) -> None:
        self.gen.maps["gen_config"].update_raw((0).to_bytes(4, "little"),
                                              self.frame + action.to_bytes(4, "little"))

    def generate(self, seconds: float, *, action: int = XDP_TX,
                 stop: Callable[[], bool] | None = None) -> tuple[int, float]:
        """Send for ``seconds`` (or until ``stop()``) from the calling thread, pinned; return
        (packets the generator produced, wall seconds)."""
        self._configure(action)
        prog = only_program(self.gen)
        ctx = XdpMd(data_end=len(self.frame), ingress_ifindex=self.gen_ifindex)
        n = 0
        with netns.enter(self.ns(self.gen_node)), pinned(self.cpu):
            t0 = time.perf_counter()
            while True:
                prog.test_run(self.frame, repeat=CHUNK, flags=BPF_F_TEST_XDP_LIVE_FRAMES, ctx=ctx)
                n += CHUNK
                elapsed = time.perf_counter() - t0
                if (stop is None and elapsed >= seconds) or (stop is not None and stop()):
                    return n, elapsed


class LiveLab(LiveFrames):
    """The lab, the generator (attached to gen's loopback so that test_run skips the RCU
    sync), the sink, and ways to put a device under test on dut:eth0."""

    def __init__(self, suite: Suite, workdir: Path):
        super().__init__(Lab(Topology.parse(TOPOLOGY, "<bench lab>")), workdir)
        self.suite = suite

    # -- set-up -----------------------------------------------------------------------
    def _setup(self) -> None:
        dut, sink, gen = self.ns("dut"), self.ns("sink"), self.ns("gen")
        with netns.enter(sink):
            sink_mac = iface.info("eth0").mac
        with netns.enter(dut):
            dut_mac = iface.info("eth0").mac
        # frames XDP_TX'd by the generator need a peer with XDP or GRO to be accepted
        netns.run(dut, ["ethtool", "-K", "eth0", "gro", "on"])
        # forwarding without ARP: the kernel and bpf_fib_lookup both need the neighbour
        netns.run(dut, ["ip", "neigh", "replace", str(self.suite.traffic.dst), "lladdr", sink_mac,
                        "dev", "eth1", "nud", "permanent"])
        self.sink = load_c(BENCH_BPF_DIR / "sink.bpf.c")
        self._stack.callback(self.sink.close)
        with netns.enter(sink):
            link = attach.attach_xdp(only_program(self.sink).fd, "eth0", mode="native").link
        self._stack.callback(link.close)
        self._load_generator()
        with netns.enter(gen):
            self.gen_ifindex = iface.ifindex("g0")
            g0_mac = iface.info("g0").mac
        self.g0_mac, self.dut_mac = g0_mac, dut_mac
        self.frame = self.frame_of(self.suite.traffic)

    def frame_of(self, flow: Flow) -> bytes:
        """A FRAME_SIZE-byte frame of ``flow`` from gen:g0 to dut:eth0."""
        frame = flow.frame(self.g0_mac, self.dut_mac)
        return frame + bytes(max(0, FRAME_SIZE - len(frame)))

    @contextlib.contextmanager
    def sending(self, flow: Flow) -> Iterator[None]:
        """Generate ``flow`` instead of the suite's traffic for a while."""
        saved = self.frame
        self.frame = self.frame_of(flow)
        try:
            yield
        finally:
            self.frame = saved

    # -- traffic ----------------------------------------------------------------------
    def sent(self) -> int:
        return _percpu_u64_sum(self.gen, "gen_sent")

    # -- counters -----------------------------------------------------------------------
    def dut_rx(self) -> int:
        """Frames dut:eth0 received (XDP drops included)."""
        out = netns.run(self.ns("dut"), ["ip", "-s", "-j", "link", "show", "eth0"]).stdout
        return int(json.loads(out)[0]["stats64"]["rx"]["packets"])

    def sink_received(self) -> int:
        return _percpu_u64_sum(self.sink, "sink_received")

    # -- devices under test on dut:eth0 ----------------------------------------------------
    @contextlib.contextmanager
    def xdp_program(self, obj: BpfObject, ifname: str = "eth0") -> Iterator[None]:
        with netns.enter(self.ns("dut")):
            link = attach.attach_xdp(only_program(obj).fd, ifname, mode="native").link
        try:
            yield
        finally:
            link.close()

    @contextlib.contextmanager
    def ebplane(self, pipeline: Path, interfaces: tuple[str, ...] = ("eth0",)) -> Iterator[str]:
        """``ebplane apply`` of ``pipeline`` on the dut's ``interfaces``; yields its name."""
        from ebplane.runtime.pipeline import apply, detach
        path = self.spec_for_dut(pipeline, interfaces)
        name = apply(path).name
        try:
            yield name
        finally:
            detach(name)

    def spec_for_dut(self, pipeline: Path, interfaces: tuple[str, ...] = ("eth0",),
                     extra_rules: tuple[dict, ...] = ()) -> Path:
        """A copy of ``pipeline`` placed on the dut (netns, interfaces, native XDP), written
        to the work directory; ``extra_rules`` are appended to its first filter."""
        d = load_spec(pipeline).to_dict()
        d.update({"netns": self.ns("dut"), "interfaces": list(interfaces), "mode": "native"})
        if extra_rules:
            body = next(st["filter"] for st in d["stages"] if "filter" in st)
            body["rules"] = body["rules"] + list(extra_rules)
        path = self.workdir / f"{d['pipeline']}-{len(extra_rules)}.yaml"
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        return path

    @contextlib.contextmanager
    def nft_drop(self, rule: str) -> Iterator[Counter]:
        """An nftables netdev-ingress chain on dut:eth0 with ``rule`` (which must count)."""
        dut = self.ns("dut")
        netns.run(dut, ["nft", "-f", "-"], input=(
            f"table netdev {NFT_TABLE} {{\n  chain ingress {{\n"
            f"    type filter hook ingress device \"eth0\" priority 0;\n    {rule}\n  }}\n}}\n"))

        def count() -> int:
            out = netns.run(dut, ["nft", "-j", "list", "table", "netdev", NFT_TABLE]).stdout
            for item in json.loads(out)["nftables"]:
                for expr in item.get("rule", {}).get("expr", []):
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
            raise UsageError(f"the nftables rule {rule!r} has no counter",
                             hint="end it with 'counter drop'")
        try:
            yield count
        finally:
            netns.run(dut, ["nft", "delete", "table", "netdev", NFT_TABLE], check=False)


def _record_pid(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _percpu_u64_sum(obj: BpfObject, cname: str) -> int:
    return sum(int.from_bytes(v, "little") for v in obj.maps[cname].lookup((0).to_bytes(4, "little")))


def _verdict_drops(obj: BpfObject, cname: str) -> int:
    """Packets of slot XDP_DROP in a per-CPU array of {packets, bytes} counters."""
    values = obj.maps[cname].lookup(XDP_DROP.to_bytes(4, "little"))
    return sum(int.from_bytes(v[:8], "little") for v in values)


def _ebplane_drops(name: str) -> int:
    from ebplane.runtime.pipeline import stats
    return int(stats(name)[0]["verdicts"]["XDP_DROP"]["packets"])


# -- runs -----------------------------------------------------------------------------------

@dataclass
class LiveRow:
    """Repeated runs of one device under test."""
    name: str
    what: str
    pps: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)  # handled / generated
    error: str | None = None

    def to_dict(self, gen_ns: float | None) -> dict:
        d: dict = {"name": self.name, "what": self.what}
        if self.error:
            d["error"] = self.error
            return d
        mpps = Spread.of([p / 1e6 for p in self.pps])
        ns = 1e9 / (mpps.median * 1e6)
        d.update({"mpps": mpps.to_dict(3), "ns_per_packet": round(ns, 1),
                  "handled_fraction": round(min(self.delivered), 4)})
        if gen_ns is not None:
            d["dut_ns_per_packet"] = round(ns - gen_ns, 1)
        return d


def _run(lab: LiveLab, row: LiveRow, count: Counter, seconds: float, repeats: int,
         action: int = XDP_TX) -> None:
    for _ in range(repeats):
        before = count()
        sent, wall = lab.generate(seconds, action=action)
        handled = count() - before
        row.pps.append(handled / wall)
        row.delivered.append(handled / sent if sent else 0.0)


def _measure(lab: LiveLab, row: LiveRow, setup: Callable[[], contextlib.AbstractContextManager],
             count: Callable[[object], Counter], seconds: float, repeats: int,
             progress: Progress) -> LiveRow:
    """Set the device under test up, run it; a failure is recorded in the row, not raised
    (one missing peer must not cost the whole benchmark)."""
    progress(f"live: {row.name} ({repeats} x {seconds:g} s)")
    try:
        with setup() as handle:
            _run(lab, row, count(handle), seconds, repeats)
    except EbplaneError as e:
        row.error = str(e)
        progress(f"live: {row.name}: {e}")
    return row


def _ratios(rows: list[dict], reference: str) -> None:
    ref = next((r for r in rows if r["name"] == reference and "mpps" in r), None)
    for r in rows:
        if ref and "mpps" in r:
            r[f"speedup_vs_{reference}"] = round(r["mpps"]["median"] / ref["mpps"]["median"], 2)
            if "dut_ns_per_packet" in r and ref.get("dut_ns_per_packet"):
                r[f"dut_cost_ratio_to_{reference}"] = round(
                    r["dut_ns_per_packet"] / ref["dut_ns_per_packet"], 2)


def run_live(lab: LiveLab, seconds: float, repeats: int, progress: Progress) -> dict:
    s = lab.suite
    gen = LiveRow("generator-only", "the generator drops its own frames (subtracted below)")
    progress(f"live: generator only ({repeats} x {seconds:g} s)")
    _run(lab, gen, lab.sent, seconds, repeats, action=XDP_DROP)
    gen_ns = 1e9 / Spread.of(gen.pps).median

    def program(path: Path) -> Callable[[], contextlib.AbstractContextManager]:
        @contextlib.contextmanager
        def setup():
            with contextlib.closing(load_c(path)) as obj, lab.xdp_program(obj):
                yield obj
        return setup

    def peer(cfg: PeerConfig) -> Callable[[], contextlib.AbstractContextManager]:
        @contextlib.contextmanager
        def setup():
            with contextlib.closing(load_peer(cfg)) as obj, lab.xdp_program(obj):
                yield obj
        return setup

    drop: list[LiveRow] = [
        _measure(lab, LiveRow("xdp-floor", "XDP program that only drops (baselines/floor.bpf.c)"),
                 program(s.floor), lambda _: lab.dut_rx, seconds, repeats, progress),
        _measure(lab, LiveRow("ebplane", f"ebplane apply {s.drop_pipeline.name}, native XDP"),
                 lambda: lab.ebplane(s.drop_pipeline),
                 lambda name: (lambda: _ebplane_drops(name)), seconds, repeats, progress),
        _measure(lab, LiveRow("baseline", f"hand-written {s.drop_baseline.name}, native XDP"),
                 program(s.drop_baseline), lambda obj: (lambda: _verdict_drops(obj, "verdicts")),
                 seconds, repeats, progress),
    ]
    if s.drop_peer:
        drop.append(_measure(lab, LiveRow("xdp-filter", s.drop_peer.describe() + ", native XDP"),
                             peer(s.drop_peer),
                             lambda obj: (lambda: _verdict_drops(obj, "xdp_stats_map")),
                             seconds, repeats, progress))
    drop.append(_measure(lab, LiveRow("nftables", f"netdev ingress: {s.nft_rule}"),
                         lambda: lab.nft_drop(s.nft_rule), lambda count: count,
                         seconds, repeats, progress))
    fwd: list[LiveRow] = [
        _measure(lab, LiveRow("kernel", "kernel IPv4 forwarding (GRO on, no XDP)"),
                 contextlib.nullcontext, lambda _: lab.sink_received, seconds, repeats, progress),
        _measure(lab, LiveRow("baseline", f"hand-written {s.forward_baseline.name}: "
                                          f"bpf_fib_lookup + redirect, native XDP"),
                 program(s.forward_baseline), lambda _: lab.sink_received, seconds, repeats,
                 progress),
    ]
    route = LiveRow("ebplane", f"ebplane apply {s.forward_pipeline.name}, native XDP")
    if "route" in STAGE_KINDS:
        fwd.append(_measure(lab, route, lambda: lab.ebplane(s.forward_pipeline, ("eth0", "eth1")),
                            lambda _: lab.sink_received, seconds, repeats, progress))
    else:
        route.error = "pending: this ebplane has no route stage yet"
        fwd.append(route)
    drop_rows = [r.to_dict(gen_ns) for r in drop]
    fwd_rows = [r.to_dict(gen_ns) for r in fwd]
    _ratios(drop_rows, "nftables")
    _ratios(fwd_rows, "kernel")
    t = s.traffic
    return {"method": f"generator: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, "
                      f"{CHUNK} packets per call, XDP_TX out of a veth into the device under "
                      f"test; generator and device under test on CPU {lab.cpu}; "
                      f"{repeats} runs of {seconds:g} s each; a rate counts only packets the "
                      f"device under test is seen to drop (its counter) or forward (the sink's)",
            "traffic": f"{FRAME_SIZE}-byte frames, {t.proto} {t.src}:{t.sport} > {t.dst}:{t.dport}",
            "cpu": lab.cpu, "seconds": seconds, "repeats": repeats,
            "generator": gen.to_dict(None), "drop": drop_rows, "forward": fwd_rows}
