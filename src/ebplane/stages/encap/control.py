"""Control-plane side of the encap and decap stages: their per-outcome counters for
``ebplane stats``, the outcome a trace record names (replay, trace), their maps (status).
The slots and map names come from :mod:`ebplane.stages.encap.gen`."""

from __future__ import annotations

from typing import Callable

from ebplane.kernel.maps import Map
from ebplane.stages.control import OutcomeSlots, StageControl
from ebplane.stages.encap.gen import OUTCOMES, map_names


class HeaderControl(OutcomeSlots, StageControl):
    # the outcomes that decide a packet's fate (too_big, failed) name the slot
    def outcomes(self, stage) -> list[str]:
        return OUTCOMES[stage.kind]

    def map_names(self, stage) -> dict[str, str]:
        return map_names(stage)

    def stats(self, maps: Callable[[str], Map], spec, stage) -> dict:
        return {"counts": self.counts(maps, stage)}


class DecapControl(HeaderControl):
    kind = "decap"


class EncapControl(HeaderControl):
    kind = "encap"


CONTROLS = {"decap": DecapControl(), "encap": EncapControl()}
