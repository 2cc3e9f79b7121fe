"""Control-plane side of conntrack: conntrack's counters and its table (entries against
capacity, connections by state) for ``ebplane stats``."""

from __future__ import annotations

import ipaddress
import time
from typing import Callable

from ebplane.kernel.codec import Packed
from ebplane.kernel.maps import Map
from ebplane.stages.conntrack.spec import ConntrackStage
from ebplane.stages.control import StageControl, slot_counts
from ebplane.stages.conntrack import gen
from ebplane.stages.conntrack.gen import COUNTERS, ENTRY_STATES, map_names

CT_KEY, CT_ENTRY = Packed(gen.CT_KEY), Packed(gen.CT_ENTRY)
# entry state (its value) -> name, and -> the timeout that applies to it
ENTRY_NAMES = {i: n for i, n in enumerate(ENTRY_STATES) if i}
_TIMEOUT_OF = {ENTRY_STATES.index(n): t for n, t in (
    ("syn_sent", "tcp_syn"), ("syn_recv", "tcp_syn"), ("established", "tcp_established"),
    ("fin_wait", "tcp_fin"), ("close", "tcp_close"), ("icmp", "icmp"))}
_UDP = ENTRY_STATES.index("udp")


def _addr(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == 4 else raw))


def entry_timeout(stage: ConntrackStage, e) -> int:
    if e.state == _UDP:
        return stage.timeout("udp_replied" if e.replied else "udp")
    return stage.timeout(_TIMEOUT_OF.get(e.state, "icmp"))


def connections(table: Map, stage: ConntrackStage) -> list[dict]:
    """The table's entries, decoded (``expired``: idle past its timeout, not yet deleted)."""
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
    out = []
    for k, e in table.with_codecs(CT_KEY, CT_ENTRY).items():
        idle = max(0, now - e.seen_ns) / 1e9
        out.append({"family": k.family, "proto": k.proto,
                    "src": _addr(k.src, k.family), "dst": _addr(k.dst, k.family),
                    "sport": k.sport, "dport": k.dport,
                    "state": ENTRY_NAMES.get(e.state, str(e.state)), "replied": bool(e.replied),
                    "packets": {"original": e.packets[0], "reply": e.packets[1]},
                    "idle": round(idle, 1), "expired": idle > entry_timeout(stage, e)})
    return out


class ConntrackControl(StageControl):
    kind = "conntrack"

    def stats(self, maps: Callable[[str], Map], spec, stage: ConntrackStage) -> dict:
        n = map_names(stage.name)
        counts = slot_counts(maps(n["counters"]), COUNTERS)
        conns = connections(maps(n["table"]), stage)
        by_state: dict[str, int] = {}
        for c in conns:
            by_state[c["state"]] = by_state.get(c["state"], 0) + 1
        return {"counts": counts,
                "table": {"entries": len(conns), "capacity": stage.size,
                          "expired": sum(c["expired"] for c in conns), "by_state": by_state,
                          "when_full": stage.when_full},
                "timeouts": dict(stage.timeouts)}

    def describe_slot(self, stage, slot: int, live=()) -> tuple[int | None, str]:
        return None, COUNTERS[slot] if slot < len(COUNTERS) else f"slot {slot}"

    def map_roles(self, stage) -> dict[str, str]:
        return {c: r for r, c in map_names(stage.name).items()}


CONTROLS = {"conntrack": ConntrackControl()}
