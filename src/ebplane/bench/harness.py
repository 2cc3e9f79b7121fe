"""What every benchmark section shares: the suite description, loading the programs compared
(ebplane pipelines, hand-written baselines, xdp-filter's objects), timing statistics, and
program cost with BPF_PROG_TEST_RUN.

Program cost is measured with the program attached to a veth in a throw-away namespace:
``repeat > 1`` on an XDP program attached nowhere adds a ``synchronize_rcu`` (17-25 ms) to
every call, which would pollute the figure (platform-notes.md).
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import socket
import statistics
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ebplane.codegen.pipeline import spec_features
from ebplane.errors import NotFound, UsageError
from ebplane.kernel.programs import BpfObject, Program
from ebplane.lab.traffic import Flow
from ebplane.net import attach, netns
from ebplane.runtime.build import Built, build
from ebplane.stages.control import control_for
from ebplane.spec import FilterStage, PipelineSpec
from ebplane.toolchain.clang import compile_file

Progress = Callable[[str], None]

BENCH_BPF_DIR = Path(__file__).resolve().parent / "bpf"
# where Debian (libxdp1) and upstream installs keep xdp-tools' BPF objects
PEER_OBJECT_DIRS = ("/usr/lib/*-linux-gnu/bpf", "/usr/lib/bpf", "/usr/local/lib/bpf",
                    "/usr/share/xdp-tools")
FRAME_SIZE = 64  # bytes without FCS: the smallest Ethernet frame, where per-packet cost shows
# xdp-filter's map value flags (its common_kern_user.h: MAP_FLAG_SRC ... MAP_FLAG_UDP)
XDP_FILTER_FLAGS = {"src": 1, "dst": 2, "tcp": 4, "udp": 8}
XDP_DROP = 1


def default_suite_dir() -> Path:
    """``benchmarks/`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[3] / "benchmarks"


# -- the suite ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerConfig:
    """An xdp-filter object and the entries its maps get (``ports``/``ipv4``: key -> flags)."""
    object: str
    ports: dict[int, int] = field(default_factory=dict)
    ipv4: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict) -> PeerConfig:
        def flags(names: list[str]) -> int:
            return sum(XDP_FILTER_FLAGS[n] for n in names)
        return cls(object=d["object"],
                   ports={int(k): flags(v) for k, v in d.get("ports", {}).items()},
                   ipv4={str(k): flags(v) for k, v in d.get("ipv4", {}).items()})

    def describe(self) -> str:
        names = {v: k for k, v in XDP_FILTER_FLAGS.items()}

        def fl(bits: int) -> str:
            return "+".join(names[b] for b in sorted(names) if bits & b)
        parts = [f"port {p} {fl(f)}" for p, f in self.ports.items()]
        parts += [f"ip {a} {fl(f)}" for a, f in self.ipv4.items()]
        return f"xdp-filter {self.object.removesuffix('.o')}: {', '.join(parts)}"


@dataclass(frozen=True)
class CostCase:
    """One job measured by program cost: the pipeline, its baseline, its peer, its packets."""
    name: str
    pipeline: Path
    baseline: Path
    peer: PeerConfig | None
    packets: dict[str, Flow]


@dataclass(frozen=True)
class Suite:
    """``benchmarks/cases.yaml``: every path resolved against the suite directory."""
    root: Path
    floor: Path
    cost: tuple[CostCase, ...]
    traffic: Flow
    drop_pipeline: Path
    drop_baseline: Path
    drop_peer: PeerConfig | None
    nft_rule: str
    forward_pipeline: Path
    forward_baseline: Path

    @classmethod
    def load(cls, root: Path | None = None) -> Suite:
        root = Path(root) if root else default_suite_dir()
        path = root / "cases.yaml"
        try:
            d = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"benchmark suite not found: {path}",
                             hint="run from a clone of ebplane, or pass --suite DIR (the "
                                  "benchmarks/ directory)") from None
        try:
            cost = tuple(CostCase(c["name"], root / c["pipeline"], root / c["baseline"],
                                  PeerConfig.parse(c["peer"]) if c.get("peer") else None,
                                  {k: Flow(**v) for k, v in c["packets"].items()})
                         for c in d["cost"])
            live = d["live"]
            return cls(root=root, floor=root / d["floor"], cost=cost,
                       traffic=Flow(**live["traffic"]),
                       drop_pipeline=root / live["drop"]["pipeline"],
                       drop_baseline=root / live["drop"]["baseline"],
                       drop_peer=PeerConfig.parse(live["drop"]["peer"])
                       if live["drop"].get("peer") else None,
                       nft_rule=live["drop"]["nft"],
                       forward_pipeline=root / live["forward"]["pipeline"],
                       forward_baseline=root / live["forward"]["baseline"])
        except (KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{path}: malformed benchmark suite ({type(e).__name__}: {e})",
                             hint="compare it with the suite in ebplane's benchmarks/") from None


def frame(flow: Flow, src_mac: str = "02:00:00:00:00:01",
          dst_mac: str = "02:00:00:00:00:02") -> bytes:
    """A FRAME_SIZE-byte frame of ``flow`` (padded with payload)."""
    head = flow.frame(src_mac, dst_mac)
    return flow.frame(src_mac, dst_mac, bytes(max(0, FRAME_SIZE - len(head))))


# -- statistics -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """min / median / max of repeated measurements."""
    min: float
    median: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("no measurements")
        return cls(min(values), statistics.median(values), max(values), len(values))

    def to_dict(self, digits: int = 2) -> dict:
        return {"min": round(self.min, digits), "median": round(self.median, digits),
                "max": round(self.max, digits), "n": self.n}


# -- loading the programs compared ----------------------------------------------------------

def load_pipeline(spec: PipelineSpec) -> Built:
    """Generate, compile and load ``spec`` as ``apply`` does, with the spec's rules installed,
    but attached nowhere and pinned nowhere (close the result)."""
    built = build(spec, spec_features(spec))
    try:
        built.install_spec_rules()
        for st in spec.stages:
            control_for(st.kind).prepare(built, spec, st, replay=True)
    except BaseException:
        built.close()
        raise
    return built


def load_c(path: Path) -> BpfObject:
    """Compile and load a hand-written program (its directory is on the include path).  Not
    cached: the compile cache does not hash headers outside ebplane's own include directory."""
    res = compile_file(path, extra_flags=[f"-I{path.parent}"], use_cache=False)
    obj = BpfObject.open_bytes(res.elf, path.name.split(".")[0])
    try:
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


def only_program(obj: BpfObject) -> Program:
    if len(obj.programs) != 1:
        raise UsageError(f"BPF object '{obj.name}' has {len(obj.programs)} programs; "
                         f"a benchmark program must have exactly one")
    return next(iter(obj.programs.values()))


def find_peer_object(name: str) -> Path | None:
    for pattern in PEER_OBJECT_DIRS:
        for d in sorted(glob.glob(pattern)):
            p = Path(d) / name
            if p.exists():
                return p
    return None


def peer_version() -> str | None:
    """The installed xdp-tools version (Debian), for the report."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "xdp-tools"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def load_peer(cfg: PeerConfig) -> BpfObject:
    """Load an xdp-filter object and configure it as ``xdp-filter`` would (``xdpfilt_alw_*``:
    policy allow, the entries drop; ``xdpfilt_dny_*``: policy deny).  Its maps ask to be
    pinned by name under /sys/fs/bpf; the pin paths are cleared so that the benchmark
    neither reuses nor leaves behind any pinned map."""
    path = find_peer_object(cfg.object)
    if path is None:
        raise NotFound(f"xdp-filter object {cfg.object} not found in {', '.join(PEER_OBJECT_DIRS)}",
                       hint="install Debian's xdp-tools: apt-get install xdp-tools")
    obj = BpfObject.open(path)
    try:
        obj.clear_pin_path()
        obj.load()
        for port, flags in cfg.ports.items():
            # xdp-filter's keys are the port as it sits in the packet (network order)
            obj.maps["filter_ports"].update(socket.htons(port).to_bytes(4, "little"),
                                            flags.to_bytes(8, "little"))
        for addr, flags in cfg.ipv4.items():
            obj.maps["filter_ipv4"].update(ipaddress.IPv4Address(addr).packed,
                                           flags.to_bytes(8, "little"))
    except BaseException:
        obj.close()
        raise
    return obj


# -- program cost ---------------------------------------------------------------------------

@dataclass
class CostResult:
    """The kernel-measured ns/packet of one program on one packet, and its verdict."""
    ns: Spread
    verdict: str
    info: dict[str, Any]

    def to_dict(self) -> dict:
        return {"ns_per_packet": self.ns.to_dict(), "verdict": self.verdict,
                "verified_insns": self.info.get("verified_insns"),
                "xlated_bytes": self.info.get("xlated_bytes"),
                "jited_bytes": self.info.get("jited_bytes")}


class CostHarness:
    """A throw-away namespace with a veth pair: the program measured is attached (native XDP)
    to one end for the duration of its measurement, so test_run skips the RCU sync."""

    DEVICE = "bc0"

    def __init__(self, repeat: int, runs: int):
        self.repeat = repeat
        self.runs = runs
        self._ns: netns.Namespace | None = None

    def __enter__(self) -> CostHarness:
        self._ns = netns.temporary("ebp-bench")
        self._ns.__enter__()
        try:
            netns.run(self._ns.name, ["ip", "link", "add", self.DEVICE, "type", "veth", "peer",
                                      "name", "bc1"])
            netns.run(self._ns.name, ["ip", "link", "set", self.DEVICE, "up"])
        except BaseException:
            self._ns.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._ns is not None:
            self._ns.__exit__(*exc)
            self._ns = None

    @contextlib.contextmanager
    def attached(self, prog: Program) -> Iterator[None]:
        with netns.enter(self._ns.name):
            a = attach.attach_xdp(prog.fd, self.DEVICE, mode="native", use_link=True)
        try:
            yield
        finally:
            a.link.detach()
            a.link.close()

    def measure(self, prog: Program, data: bytes) -> CostResult:
        """Median of ``runs`` calls of ``repeat`` runs each (one warm-up call first)."""
        verdict = prog.test_run(data).verdict
        with self.attached(prog):
            prog.test_run(data, repeat=self.repeat)
            ns = [float(prog.test_run(data, repeat=self.repeat).duration_ns)
                  for _ in range(self.runs)]
        return CostResult(Spread.of(ns), verdict, prog.info())
