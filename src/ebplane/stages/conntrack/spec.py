"""The spec of ``conntrack`` (connection tracking for stateful filters).

``conntrack`` gives every packet a connection state (``ebp_pkt.ct_state``) that filter rules
match with ``state:``.  It works at every hook and never changes a packet; it decides a
packet's fate only when its table is full and ``when_full: drop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.rules import STATES
from ebplane.spec.stages import Stage, stage_name

# packet states a filter rule may name in `state:` (value: ebp_pkt.ct_state, conntrack.h)
CT_STATES = STATES

CT_SIZE_DEFAULT = 65536
CT_SIZE_MAX = 1 << 24
CT_WHEN_FULL: tuple[str, ...] = ("drop", "pass")
# seconds an entry lives without packets, per state
CT_TIMEOUTS_DEFAULT: dict[str, int] = {
    "tcp_syn": 60,            # SYN sent or SYN-ACK seen, not yet established
    "tcp_established": 3600,
    "tcp_fin": 120,           # one side closed
    "tcp_close": 10,          # RST seen or both sides closed
    "udp": 30,                # no reply seen yet
    "udp_replied": 120,
    "icmp": 30,               # echo request/reply
}
CT_TIMEOUT_MAX = 7 * 24 * 3600


@dataclass(frozen=True)
class ConntrackStage(Stage):
    """Connection tracking in a table of its own: TCP (SYN, established, FIN/RST), UDP and
    ICMP echo, both directions, IPv4 and IPv6.

    ``size`` bounds the table; ``when_full`` says what a packet that would start a new
    connection gets when the table is full even after expired entries were collected
    (``drop``, or ``pass`` on as ``new`` without an entry); tracked connections are never
    evicted.  ``timeouts`` are seconds without packets per entry state.  ``prealloc``
    allocates the whole table when the program is loaded (inserts then allocate nothing:
    about half the cost of a new connection, docs/l4.md) instead of an entry per insert.
    """

    kind: ClassVar[str] = "conntrack"
    provides: ClassVar[tuple[str, ...]] = ("ct_state",)
    size: int = CT_SIZE_DEFAULT
    when_full: str = "drop"
    prealloc: bool = False
    timeouts: tuple[tuple[str, int], ...] = field(
        default_factory=lambda: tuple(CT_TIMEOUTS_DEFAULT.items()))

    def timeout(self, name: str) -> int:
        return dict(self.timeouts)[name]

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "size": self.size, "when_full": self.when_full}
        if self.prealloc:
            d["prealloc"] = True
        changed = {k: v for k, v in self.timeouts if CT_TIMEOUTS_DEFAULT[k] != v}
        if changed:
            d["timeouts"] = changed
        return d


def parse_conntrack(obj: Any, where: Where, protocols: tuple[str, ...]) -> ConntrackStage:
    body = check.mapping({} if obj is None else obj, where,
                         allowed=("name", "size", "when_full", "prealloc", "timeouts"))
    name = stage_name(body, where, "conntrack")
    size, when_full, prealloc, timeouts = check.table(
        body, where, size=CT_SIZE_DEFAULT, size_max=CT_SIZE_MAX, size_what="table size",
        when_full=CT_WHEN_FULL, timeouts=CT_TIMEOUTS_DEFAULT, timeout_max=CT_TIMEOUT_MAX)
    if not {"ipv4", "ipv6"} & set(protocols):
        raise where.error("conntrack needs protocol ipv4 or ipv6 in protocols:",
                          given=list(protocols), hint="add ipv4 (and ipv6) to protocols:")
    return ConntrackStage(name=name, size=size, when_full=when_full, prealloc=prealloc,
                          timeouts=tuple(timeouts.items()))

PARSERS = {"conntrack": parse_conntrack}
