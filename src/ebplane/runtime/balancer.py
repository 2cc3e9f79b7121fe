""":class:`Backends`: the run-time backend changes of a balancer stage of an applied
pipeline (``ebplane backends``), under the pipeline's lock, on its pinned maps.  The stage's
own control side (install at apply, stats) is :mod:`ebplane.stages.balancer.control`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ebplane.errors import NotFound, UsageError
from ebplane.kernel.maps import Map, prepare_rcu_barrier
from ebplane.stages.balancer.control import Balancer, prime_neighbours


class Backends:
    """The backends of one balancer stage of an applied pipeline.  Each change runs under
    the pipeline's lock and is atomic for packets (see ebplane.stages.balancer.control)."""

    def __init__(self, pipeline: str, stage: str | None = None):
        from ebplane.runtime import pipeline as pl  # the applied pipelines' state and pins
        self._pl = pl
        self.pipeline = pipeline
        st = pl.require_state(pipeline)
        spec = pl._spec_of(st)
        lbs = [s for s in spec.stages if s.kind == "balancer"]
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
    def _open(self, change: bool = False) -> Iterator[Balancer]:
        if change:
            st = self._pl.require_state(self.pipeline)
            if st.netns and not self._pl._netns_exists(st.netns):
                # its program runs nowhere; and priming the next hops would send from
                # this (the host's) namespace instead
                raise NotFound(f"pipeline '{self.pipeline}' is DEAD: network namespace "
                               f"{st.netns} is gone", hint=self._pl._repair_hint(
                                   self.pipeline, st.spec_file))
            # a change ends with a grace period; its maps are made first, so that a process
            # without the privileges fails here, before it has written anything
            prepare_rcu_barrier()
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
        with self._open(change=True) as lb:
            res = lb.add(self.stage.vip(vip), address, weight)
        with self._pl._netns_of(self._pl.require_state(self.pipeline)):
            prime_neighbours([res["backend"]])
        return res

    def remove(self, address: str, *, vip: str | None = None) -> dict:
        with self._open(change=True) as lb:
            return lb.remove(self.stage.vip(vip), address)

    def set_weight(self, address: str, weight: int, *, vip: str | None = None) -> dict:
        with self._open(change=True) as lb:
            return lb.set_weight(self.stage.vip(vip), address, weight)

    def down(self, address: str, *, vip: str | None = None) -> dict:
        with self._open(change=True) as lb:
            return lb.down(self.stage.vip(vip), address)

    def up(self, address: str, *, vip: str | None = None) -> dict:
        with self._open(change=True) as lb:
            return lb.up(self.stage.vip(vip), address)
