""":class:`Backends`: the run-time backend changes of a balancer stage of an applied
pipeline (``ebplane backends``), under the pipeline's lock, on its pinned maps.  The stage's
own control side (install at apply, stats) is :mod:`ebplane.stages.balancer.control`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ebplane.errors import NotFound
from ebplane.kernel.maps import prepare_rcu_barrier
from ebplane.runtime.stage_edit import StageEdit
from ebplane.stages.balancer.control import Balancer, prime_neighbours


class Backends(StageEdit):
    """The backends of one balancer stage of an applied pipeline.  Each change runs under
    the pipeline's lock and is atomic for packets (see ebplane.stages.balancer.control)."""

    kind, noun = "balancer", "balancer stage"

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
        with self._pinned() as maps, self._pl._locked(self.pipeline):
            yield Balancer(maps, self.stage)

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
