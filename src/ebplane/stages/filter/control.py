"""Control-plane side of filter: per-rule, default, malformed and fragment counters for
``ebplane stats``, the names of its counter slots (replay, trace) and of its maps (status).
Installing compiled rules into a loaded program is :mod:`ebplane.stages.filter.table`."""

from __future__ import annotations

from typing import Callable, Sequence

from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.maps import Map
from ebplane.stages.control import StageControl, StatRow
from ebplane.stages.filter.gen import frag_slots, map_names, slots
from ebplane.stages.filter.spec import FilterStage


def rule_text(rule: dict) -> str:
    """A rule (as the state keeps it) without its action: ``src=... dport=...``."""
    return " ".join(f"{k}={v}" for k, v in rule.items() if k != "action") or "(any)"


def _count(c) -> dict:
    return {"packets": c.packets, "bytes": c.bytes}


class FilterControl(StageControl):
    kind = "filter"

    def stats(self, maps: Callable[[str], Map], spec, stage: FilterStage, *,
              live: Sequence[dict] = ()) -> dict:
        cm = maps(map_names(stage.name)["counters"]).with_codecs(U32, COUNT)
        rules = []
        for pos, e in enumerate(live):
            c = cm.lookup_sum(e["id"])
            rules.append({"index": pos, "id": e["id"], "rule": e["rule"],
                          "packets": c.packets, "bytes": c.bytes})
        d_slot, m_slot = slots(stage)
        return {"rules": rules,
                "default": {"action": stage.default, **_count(cm.lookup_sum(d_slot))},
                "malformed": {"action": stage.malformed, **_count(cm.lookup_sum(m_slot))},
                "fragments": {"mode": stage.fragments, "unseen": stage.unseen_fragments,
                              **{k: _count(cm.lookup_sum(slot))
                                 for k, slot in frag_slots(stage).items()}}}

    def rows(self, stats: dict) -> list[StatRow]:
        """Each rule (its action and match), then the default and the malformed slot."""
        rows = [StatRow(str(r["index"]), r["packets"], r["bytes"], r["rule"]["action"],
                        rule_text(r["rule"]), r["index"]) for r in stats["rules"]]
        rows += [StatRow(k, stats[k]["packets"], stats[k]["bytes"], stats[k]["action"])
                 for k in ("default", "malformed")]
        return rows

    def slots(self, stage: FilterStage, live: Sequence = ()) -> dict[int, tuple[int | None, str]]:
        """``live``: the stage's rules, each with an ``id`` (a RuleEntry or a state dict)."""
        m: dict[int, tuple[int | None, str]] = {}
        for pos, e in enumerate(live):
            m[e["id"] if isinstance(e, dict) else e.id] = (pos, "rule")
        d, mal = slots(stage)
        m[d] = (None, "default")
        m[mal] = (None, "malformed")
        for what, slot in frag_slots(stage).items():
            m[slot] = (None, f"fragment_{what}")
        return m

    def describe_slot(self, stage: FilterStage, slot: int,
                      live: Sequence[dict] = ()) -> tuple[int | None, str]:
        d_slot, m_slot = slots(stage)
        if slot == d_slot:
            return None, f"default {stage.default}"
        if slot == m_slot:
            return None, f"malformed {stage.malformed}"
        for what, fslot in frag_slots(stage).items():
            if slot == fslot:
                return None, f"IP fragment ({what})"
        for pos, e in enumerate(live):
            if e["id"] == slot:
                return pos, f"rule {pos} {e['rule'].get('action', '')}".strip()
        return None, f"rule id {slot} (edited since)"

    def map_roles(self, stage: FilterStage) -> dict[str, str]:
        return {c: r for r, c in map_names(stage.name).items()}


CONTROLS = {"filter": FilterControl()}
