"""Control-plane side of count: its counters for ``ebplane stats``."""

from __future__ import annotations

from typing import Callable

from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.maps import Map
from ebplane.stages.control import StageControl
from ebplane.stages.count.gen import COUNTERS, map_names


class CountControl(StageControl):
    kind = "count"

    def stats(self, maps: Callable[[str], Map], spec, stage) -> dict:
        cm = maps(map_names(stage.name)["counters"]).with_codecs(U32, COUNT)
        vals = {k: cm.lookup_sum(i) for i, k in enumerate(COUNTERS)}
        return {"counts": {k: {"packets": v.packets, "bytes": v.bytes} for k, v in vals.items()}}

    def map_roles(self, stage) -> dict[str, str]:
        return {c: r for r, c in map_names(stage.name).items()}


CONTROLS = {"count": CountControl()}
