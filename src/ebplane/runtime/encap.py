"""Control-plane side of the encap and decap stages: their per-outcome counters for
``ebplane stats`` (the slots and map names come from :mod:`ebplane.stages.encap.gen`)."""

from __future__ import annotations

from typing import Callable

from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.maps import Map
from ebplane.runtime.stages import StageRuntime, register_runtime
from ebplane.stages.encap.gen import OUTCOMES, map_names


class HeaderRuntime(StageRuntime):
    def stats(self, maps: Callable[[str], Map], spec, stage) -> dict:
        cm = maps(map_names(stage)["counters"]).with_codecs(U32, COUNT)
        counts = {}
        for i, name in enumerate(OUTCOMES[stage.kind]):
            c = cm.lookup_sum(i)
            counts[name] = {"packets": c.packets, "bytes": c.bytes}
        return {"counts": counts}


class DecapRuntime(HeaderRuntime):
    kind = "decap"


class EncapRuntime(HeaderRuntime):
    kind = "encap"


register_runtime(DecapRuntime())
register_runtime(EncapRuntime())
