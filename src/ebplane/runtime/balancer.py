"""Control-plane side of the balancer stage: fill its maps at apply/replay, its counters for
``ebplane stats``, and :class:`Backends`, the run-time backend changes of an applied
pipeline (``ebplane backends``).

The maps hold the live backend set.  A re-apply that reuses the stage's maps (same
definitions, same VIPs) keeps it, run-time changes included; otherwise the spec's backends
are installed afresh.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import Callable, Iterable, Iterator

from ebplane.errors import NotFound, UsageError
from ebplane.kernel.maps import Map
from ebplane.runtime.stages import StageRuntime, register_runtime
from ebplane.spec.balancer import BalancerStage
from ebplane.stages.balancer.control import Balancer
from ebplane.stages.balancer.gen import map_names


def prime_neighbours(addresses: Iterable[str]) -> None:
    """Have the kernel resolve the next hops toward ``addresses`` (in the calling thread's
    namespace): one empty UDP datagram to the discard port each.  The XDP program's FIB
    lookup succeeds only with a neighbour entry; until then encapsulated frames go to the
    stack, which forwards them only if the interface accepts packets with a local source
    address (accept_local)."""
    for a in addresses:
        fam = socket.AF_INET6 if ipaddress.ip_address(a).version == 6 else socket.AF_INET
        with contextlib.suppress(OSError), socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.sendto(b"", (a, 9))


class BalancerRuntime(StageRuntime):
    kind = "balancer"

    def check(self, spec, stage: BalancerStage) -> list[str]:
        """A note per interface whose forwarding is off (runs in the pipeline's netns):
        bpf_fib_lookup then fails and every encapsulated packet goes to the stack."""
        notes = []
        for ifname in spec.interfaces:
            for fam, path in ((4, f"/proc/sys/net/ipv4/conf/{ifname}/forwarding"),
                              (6, f"/proc/sys/net/ipv6/conf/{ifname}/forwarding")):
                if fam == 6 and stage.source6 is None or fam == 4 and stage.source4 is None:
                    continue
                try:
                    on = open(path).read().strip() != "0"
                except OSError:
                    continue
                if not on:
                    notes.append(f"balancer '{stage.name}': IPv{fam} forwarding is off on "
                                 f"{ifname}: the FIB lookup of encapsulated packets fails and "
                                 f"they go through the stack (sysctl -w {path[10:].replace('/', '.')}=1)")
        return notes

    def prepare(self, built, spec, stage: BalancerStage, *, replay: bool = False) -> list[str]:
        lb = Balancer(built.map, stage)
        names = set(map_names(stage.name).values())
        if not replay and names <= built.reused_maps and lb.installed():
            notes = [f"balancer '{stage.name}': kept the live backends of its reused maps"]
        else:
            lb.install()
            notes = []
        if not replay:  # (prepare runs inside the pipeline's namespace)
            prime_neighbours(b["address"] for v in lb.list() for b in v["backends"])
        return notes

    def stats(self, maps: Callable[[str], Map], spec, stage: BalancerStage) -> dict:
        return Balancer(maps, stage).stats()


register_runtime(BalancerRuntime())

OPS = ("list", "add", "remove", "set-weight", "down", "up")


class Backends:
    """The backends of one balancer stage of an applied pipeline.  Each change runs under
    the pipeline's lock and is atomic for packets (see ebplane.stages.balancer.control)."""

    def __init__(self, pipeline: str, stage: str | None = None):
        from ebplane.runtime import pipeline as pl  # the applied pipelines' state and pins
        self._pl = pl
        self.pipeline = pipeline
        st = pl.require_state(pipeline)
        spec = pl._spec_of(st)
        lbs = [s for s in spec.stages if isinstance(s, BalancerStage)]
        if not lbs:
            raise UsageError(f"pipeline '{pipeline}' has no balancer stage",
                             hint="see `ebplane status`")
        if stage is None:
            if len(lbs) > 1:
                raise UsageError(f"pipeline '{pipeline}' has several balancers "
                                 f"({', '.join(s.name for s in lbs)})", hint="name one with --stage")
            self.stage = lbs[0]
        else:
            match = [s for s in lbs if s.name == stage]
            if not match:
                raise NotFound(f"pipeline '{pipeline}' has no balancer '{stage}'",
                               hint="balancers: " + ", ".join(s.name for s in lbs))
            self.stage = match[0]

    @contextlib.contextmanager
    def _open(self) -> Iterator[Balancer]:
        opened: list[Map] = []

        def maps(cname: str) -> Map:
            m = self._pl._pinned_map(self.pipeline, cname)
            opened.append(m)
            return m
        try:
            with self._pl._locked(self.pipeline):
                yield Balancer(maps, self.stage)
        finally:
            for m in opened:
                m.close()

    def list(self) -> list[dict]:
        with self._open() as lb:
            return lb.list()

    def connections(self) -> list[dict]:
        with self._open() as lb:
            return lb.connections()

    def add(self, address: str, *, weight: int = 1, vip: str | None = None) -> dict:
        with self._open() as lb:
            res = lb.add(self.stage.vip(vip), address, weight)
        with self._pl._netns_of(self._pl.require_state(self.pipeline)):
            prime_neighbours([res["backend"]])
        return res

    def remove(self, address: str, *, vip: str | None = None) -> dict:
        with self._open() as lb:
            return lb.remove(self.stage.vip(vip), address)

    def set_weight(self, address: str, weight: int, *, vip: str | None = None) -> dict:
        with self._open() as lb:
            return lb.set_weight(self.stage.vip(vip), address, weight)

    def down(self, address: str, *, vip: str | None = None) -> dict:
        with self._open() as lb:
            return lb.down(self.stage.vip(vip), address)

    def up(self, address: str, *, vip: str | None = None) -> dict:
        with self._open() as lb:
            return lb.up(self.stage.vip(vip), address)
