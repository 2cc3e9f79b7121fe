"""Section "containers": forwarding at TC against the kernel's own path, in the container lab.

Lab: ``examples/containers`` (package data): four containers behind veths on a host
namespace, routed (``topology.yaml``) and bridged (``bridge-topology.yaml``).  The live-frames
generator of the ``live`` section (``bpf/gen.bpf.c``) runs inside container c1 and XDP_TXes
64-byte UDP frames out of its eth0 into the host; the host hands them to container c2,
whose eth0 counts and drops them at tc ingress (``bpf/tc_sink.bpf.c``: the same sink on
both paths).  Generator, host and sink share one pinned CPU, as in ``live``.

Pairs, each measured in the same run:
- routed: the kernel's IP forwarding (veth rx, ip_forward, neighbour output, veth xmit,
  backlog) against ``ebplane apply route.yaml`` at tc-ingress (bpf_fib_lookup,
  bpf_redirect_peer);
- bridged: a Linux bridge enslaving the host-side veths against ``bridge.yaml`` at
  tc-ingress (FDB lookup, bpf_redirect_peer).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import yaml

from ebplane.bench.harness import BENCH_BPF_DIR, FRAME_SIZE, Progress, Spread, load_c, only_program
from ebplane.bench.live import CHUNK, XDP_TX, _alive, _record_pid, pinned
from ebplane.errors import EbplaneError, UsageError
from ebplane.kernel.programs import BPF_F_TEST_XDP_LIVE_FRAMES, XdpMd
from ebplane.lab.topology import Lab, Topology
from ebplane.lab import traffic
from ebplane.lab.traffic import Flow
from ebplane.net import attach, iface, netns

EXAMPLE_DIR = Path(str(resources.files("ebplane") / "examples" / "containers"))
LAB_PREFIX = "ebp-bct"
# (pair, topology, pipeline, the destination's address, how the kernel does it)
CASES = (
    ("routed", "topology.yaml", "route.yaml", "198.18.102.2", "kernel IP forwarding"),
    ("bridged", "bridge-topology.yaml", "bridge.yaml", "198.18.110.2", "Linux bridge"),
)


def _percpu_sum(obj, cname: str) -> int:
    return sum(int.from_bytes(v, "little") for v in obj.maps[cname].lookup((0).to_bytes(4, "little")))


class ContainerLab:
    """One container lab up, the generator in c1, the sink on c2's eth0."""

    def __init__(self, topology: str, workdir: Path):
        topo = Topology.load(EXAMPLE_DIR / topology)
        self.lab = Lab(topo.renamed(f"{LAB_PREFIX}{topology[0]}"))
        self.workdir = workdir
        self.cpu = max(os.sched_getaffinity(0))
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ContainerLab:
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
        host, c1, c2 = self.ns("host"), self.ns("c1"), self.ns("c2")
        # frames XDP_TX'd by the generator need NAPI on the receiving veth: GRO on
        netns.run(host, ["ethtool", "-K", "c1", "gro", "on"])
        self.sink = load_c(BENCH_BPF_DIR / "tc_sink.bpf.c")
        self._stack.callback(self.sink.close)
        with netns.enter(c2):
            link = attach.attach_tc(only_program(self.sink).fd, "eth0", "ingress").link
        self._stack.callback(link.close)
        self.gen = load_c(BENCH_BPF_DIR / "gen.bpf.c")
        self._stack.callback(self.gen.close)
        with netns.enter(c1):
            link = attach.attach_xdp(only_program(self.gen).fd, "lo", mode="generic").link
            self.c1_ifindex = iface.ifindex("eth0")
            c1_mac = iface.info("eth0").mac
        self._stack.callback(link.close)
        with netns.enter(host):
            host_mac = iface.info("c1").mac
        self.c1_mac, self.host_c1_mac = c1_mac, host_mac

    def target(self, dst: str, *, routed: bool) -> None:
        """Frames from c1 to ``dst`` (in c2): routed, to the host's MAC; bridged, to c2's."""
        host, c2 = self.ns("host"), self.ns("c2")
        with netns.enter(c2):
            c2_mac = iface.info("eth0").mac
        self.routed = routed
        src = "198.18.101.2" if routed else "198.18.110.1"
        flow = Flow("udp", src, dst, 4000, 5000)
        frame = flow.frame(self.c1_mac, self.host_c1_mac if routed else c2_mac)
        self.frame = frame + bytes(max(0, FRAME_SIZE - len(frame)))
        if routed:  # both paths need the neighbour; no ARP while measuring
            netns.run(host, ["ip", "neigh", "replace", dst, "lladdr", c2_mac, "dev", "c2",
                             "nud", "permanent"])

    def prime(self) -> None:
        """Let a bridge learn c2's MAC (its ARP request is enough: the sink drops replies),
        so that the frames measured are known unicast, not floods."""
        if not self.routed:
            traffic.ping(self.ns("c2"), "198.18.110.1", count=1, timeout=0.3)

    def received(self) -> int:
        return _percpu_sum(self.sink, "sink_received")

    def generate(self, seconds: float) -> tuple[int, float]:
        self.gen.maps["gen_config"].update_raw((0).to_bytes(4, "little"),
                                              self.frame[:64] + XDP_TX.to_bytes(4, "little"))
        prog = only_program(self.gen)
        ctx = XdpMd(data_end=len(self.frame), ingress_ifindex=self.c1_ifindex)
        n = 0
        with netns.enter(self.ns("c1")), pinned(self.cpu):
            t0 = time.perf_counter()
            while True:
                prog.test_run(self.frame, repeat=CHUNK, flags=BPF_F_TEST_XDP_LIVE_FRAMES, ctx=ctx)
                n += CHUNK
                if (elapsed := time.perf_counter() - t0) >= seconds:
                    return n, elapsed

    @contextlib.contextmanager
    def linux_bridge(self) -> Iterator[None]:
        host = self.ns("host")
        # the plain bridge: br_netfilter's per-namespace default (on) would also send every
        # bridged frame through the IP hooks, as docker hosts do; that is not the bridge
        for fam in ("iptables", "ip6tables", "arptables"):
            netns.run(host, ["sysctl", "-qw", f"net.bridge.bridge-nf-call-{fam}=0"], check=False)
        netns.run(host, ["ip", "link", "add", "br0", "type", "bridge"])
        try:
            for c in ("c1", "c2", "c3", "c4"):
                netns.run(host, ["ip", "link", "set", c, "master", "br0"])
            netns.run(host, ["ip", "link", "set", "br0", "up"])
            with netns.enter(host):
                iface.wait_up("br0")
            yield
        finally:
            netns.run(host, ["ip", "link", "del", "br0"], check=False)

    @contextlib.contextmanager
    def ebplane(self, example: str) -> Iterator[str]:
        from ebplane.runtime.pipeline import apply, detach
        d = yaml.safe_load((EXAMPLE_DIR / example).read_text())
        d["netns"] = self.ns("host")
        path = self.workdir / example
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        name = apply(path).name
        try:
            yield name
        finally:
            detach(name)


def _once(lab: ContainerLab, setup: Callable[[], contextlib.AbstractContextManager],
          seconds: float) -> tuple[float, float]:
    """One run of ``seconds`` under ``setup``: (packets per second, fraction handled)."""
    with setup():
        lab.prime()
        lab.generate(min(seconds, 0.2))  # warm-up: NAPI, GRO, neighbour and FDB state
        before = lab.received()
        sent, wall = lab.generate(seconds)
        got = lab.received() - before
    return got / wall, (got / sent if sent else 0.0)


def _pair(lab: ContainerLab, rows: list[tuple[str, str, Callable]], seconds: float,
          repeats: int, progress: Progress) -> list[dict]:
    """Measure the rows of one pair in turns (kernel, TC, kernel, TC, ...), so that a busy
    moment of the machine hits both alike; a failing row is recorded, not raised."""
    pps: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    handled: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    errors: dict[str, str] = {}
    for i in range(repeats):
        for name, _, setup in rows:
            if name in errors:
                continue
            progress(f"containers: {name} run {i + 1}/{repeats} ({seconds:g} s)")
            try:
                p, h = _once(lab, setup, seconds)
            except EbplaneError as e:
                errors[name] = str(e)
                progress(f"containers: {name}: {e}")
                continue
            pps[name].append(p)
            handled[name].append(h)
    out = []
    for name, what, _ in rows:
        if name in errors:
            out.append({"name": name, "what": what, "error": errors[name]})
            continue
        mpps = Spread.of([p / 1e6 for p in pps[name]])
        out.append({"name": name, "what": what, "mpps": mpps.to_dict(3),
                    "ns_per_packet": round(1e3 / mpps.median, 1),
                    "handled_fraction": round(min(handled[name]), 4), "_pps": pps[name]})
    return out


def run_containers(workdir: Path, seconds: float, repeats: int, progress: Progress) -> dict:
    out: dict = {}
    cpu = None
    for pair, topology, example, dst, kernel_what in CASES:
        progress(f"containers: lab {pair} ({topology})")
        with ContainerLab(topology, workdir) as lab:
            cpu = lab.cpu
            lab.target(dst, routed=pair == "routed")
            kernel_setup = contextlib.nullcontext if pair == "routed" else lab.linux_bridge
            rows = _pair(lab, [
                ("kernel", f"{kernel_what}: c1 -> host -> c2", kernel_setup),
                ("ebplane-tc", f"ebplane apply {example} at tc-ingress (bpf_redirect_peer "
                               "into c2)", lambda: lab.ebplane(example)),
            ], seconds, repeats, progress)
        k, t = rows
        if "mpps" in k and "mpps" in t:
            t["speedup_vs_kernel"] = round(t["mpps"]["median"] / k["mpps"]["median"], 2)
            # the ratio within each turn (kernel run, then TC run right after it): a drift
            # of the machine's load between turns cancels out
            t["speedup_per_turn"] = Spread.of([b / a for a, b in zip(k.pop("_pps"), t["_pps"])
                                               if a > 0]).to_dict(2)
        for r in rows:
            r.pop("_pps", None)
        out[pair] = rows
    return {"method": f"generator: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES in "
                      f"container c1, XDP_TX out of its eth0 into the host ({CHUNK} packets per "
                      f"call); sink: a tc-ingress program on c2's eth0 that counts and drops; "
                      f"generator, host and sink on CPU {cpu}; {repeats} runs of {seconds:g} s "
                      f"each, kernel and TC in turns, each after a warm-up; a rate counts "
                      f"only packets that reached the sink",
            "traffic": f"{FRAME_SIZE}-byte UDP frames, c1 -> c2", "cpu": cpu,
            "seconds": seconds, "repeats": repeats, **out}
