"""Control-plane side of the encap and decap stages: their per-outcome counters for
``ebplane stats``, the outcome a trace record names (replay, trace), their maps (status).
The slots and map names come from :mod:`ebplane.stages.encap.gen`."""

from __future__ import annotations

from typing import Callable

from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.maps import Map
from ebplane.stages.control import StageControl
from ebplane.stages.encap.gen import OUTCOMES, map_names


class HeaderControl(StageControl):
    def stats(self, maps: Callable[[str], Map], spec, stage) -> dict:
        cm = maps(map_names(stage)["counters"]).with_codecs(U32, COUNT)
        counts = {}
        for i, name in enumerate(OUTCOMES[stage.kind]):
            c = cm.lookup_sum(i)
            counts[name] = {"packets": c.packets, "bytes": c.bytes}
        return {"counts": counts}

    def slots(self, stage, live=()) -> dict[int, tuple[int | None, str]]:
        # the outcomes that decide a packet's fate (too_big, failed) name the slot
        return {i: (None, name) for i, name in enumerate(OUTCOMES[stage.kind])}

    def describe_slot(self, stage, slot: int, live=()) -> tuple[int | None, str]:
        names = OUTCOMES[stage.kind]
        return None, names[slot] if slot < len(names) else f"slot {slot}"

    def map_roles(self, stage) -> dict[str, str]:
        return {c: r for r, c in map_names(stage).items()}


class DecapControl(HeaderControl):
    kind = "decap"


class EncapControl(HeaderControl):
    kind = "encap"


CONTROLS = {"decap": DecapControl(), "encap": EncapControl()}
