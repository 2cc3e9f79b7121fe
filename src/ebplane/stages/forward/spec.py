"""Forwarding stages: the specs of route, bridge, redirect, tx, steer and xsk.

These stages move packets instead of judging them: they end in XDP_REDIRECT (through a
DEVMAP, CPUMAP or XSKMAP), XDP_TX, or hand the packet to the kernel (XDP_PASS) wherever the
kernel must act (ARP/ND, ICMP errors, fragmentation).  ``route`` and ``redirect`` also
work at the tc hooks, ``bridge`` at tc-ingress (where a frame comes in on a port): there they
end in bpf_redirect_peer / bpf_redirect_neigh / bpf_redirect and keep the skb (docs/forwarding.md,
"Forwarding at TC").  ``tx``, ``steer`` and ``xsk`` are XDP's own (XDP_TX, CPUMAP, XSKMAP); a
stage at a hook it does not work at is refused when the spec is validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.stages import Stage, stage_name

FORWARDING_HOOKS: tuple[str, ...] = ("xdp",)
# the kinds that also work at TC, and where (a bridge learns the port a frame came in on)
TC_FORWARDING_HOOKS: dict[str, tuple[str, ...]] = {
    "route": ("xdp", "tc-ingress", "tc-egress"),
    "redirect": ("xdp", "tc-ingress", "tc-egress"),
    "bridge": ("xdp", "tc-ingress"),
}
IFNAME_PATTERN = r"(?!\.{1,2}$)[^/:\s]{1,15}"
IFNAME_ALLOWED = "an interface name: 1-15 characters, no '/', ':' or spaces"

BRIDGE_AGEING_DEFAULT = 300
BRIDGE_CAPACITY_DEFAULT = 4096
STEER_BY: tuple[str, ...] = ("flow",)
STEER_QUEUE_DEFAULT = 2048
STEER_QUEUE_MAX = 16384          # the kernel's cap on a CPUMAP entry's queue size
MAX_CPUS = 1024
REDIRECT_MACS: tuple[str, ...] = ("keep", "peer")
XSK_ETHERTYPES: dict[str, int] = {"arp": 0x0806, "ipv4": 0x0800, "ipv6": 0x86DD}
XSK_PROTOS: dict[str, int] = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}


@dataclass(frozen=True)
class ForwardingStage(Stage):
    """Base of the forwarding stages: XDP only, unless a kind says otherwise."""

    hooks: ClassVar[tuple[str, ...]] = FORWARDING_HOOKS


@dataclass(frozen=True)
class RouteStage(ForwardingStage):
    """IPv4/IPv6 forwarding by the kernel's own FIB and neighbour tables (bpf_fib_lookup).

    ``families`` are the IP versions the pipeline parses (from its protocols); packets of
    other families go on to the next stage.
    """

    kind: ClassVar[str] = "route"
    hooks: ClassVar[tuple[str, ...]] = TC_FORWARDING_HOOKS["route"]
    families: tuple[int, ...] = (4, 6)

    def body(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class BridgeStage(ForwardingStage):
    """L2 forwarding between ``ports`` by destination MAC and VLAN, with MAC learning.

    Entries unseen for ``ageing`` seconds no longer count (their frames are flooded);
    ``capacity`` bounds the forwarding database (least recently used entries go first).
    """

    kind: ClassVar[str] = "bridge"
    hooks: ClassVar[tuple[str, ...]] = TC_FORWARDING_HOOKS["bridge"]
    ports: tuple[str, ...] = ()
    ageing: int = BRIDGE_AGEING_DEFAULT
    capacity: int = BRIDGE_CAPACITY_DEFAULT

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "ports": list(self.ports), "ageing": self.ageing,
                "capacity": self.capacity}


@dataclass(frozen=True)
class RedirectStage(ForwardingStage):
    """Every packet out of interface ``to``.  ``macs: peer`` rewrites the source MAC to
    ``to``'s and the destination to its veth peer's, so the next node accepts the frame."""

    kind: ClassVar[str] = "redirect"
    hooks: ClassVar[tuple[str, ...]] = TC_FORWARDING_HOOKS["redirect"]
    to: str = ""
    macs: str = "keep"

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "to": self.to, "macs": self.macs}


@dataclass(frozen=True)
class TxStage(ForwardingStage):
    """Every packet back out of the port it came in on (XDP_TX)."""

    kind: ClassVar[str] = "tx"
    swap_macs: bool = True

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "swap_macs": self.swap_macs}


@dataclass(frozen=True)
class SteerStage(ForwardingStage):
    """Software RSS: each flow to one of ``cpus`` (CPUMAP), where the kernel stack runs it.

    ``queue_size`` is the per-CPU queue of the CPUMAP entries.
    """

    kind: ClassVar[str] = "steer"
    cpus: tuple[int, ...] = ()
    by: str = "flow"
    queue_size: int = STEER_QUEUE_DEFAULT

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "cpus": list(self.cpus), "by": self.by,
                "queue_size": self.queue_size}


@dataclass(frozen=True)
class XskMatch:
    """One alternative of an xsk stage's ``match``: all given fields must hold."""

    ethertype: int | None = None
    proto: int | None = None
    dport: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("ethertype", self.ethertype), ("proto", self.proto),
                                  ("dport", self.dport)) if v is not None}


@dataclass(frozen=True)
class XskStage(ForwardingStage):
    """Frames of rx queue ``queue`` that match (any entry of ``match``; none: all) go to the
    AF_XDP socket registered for that queue; without a socket they go on to the next stage."""

    kind: ClassVar[str] = "xsk"
    queue: int = 0
    match: tuple[XskMatch, ...] = ()

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "queue": self.queue, "match": [m.to_dict() for m in self.match]}


def _body(obj: Any, where: Where, allowed: tuple[str, ...], required: tuple[str, ...] = ()
          ) -> dict[str, Any]:
    return check.mapping({} if obj is None else obj, where, allowed=("name", *allowed),
                         required=required)


def _ifname(obj: Any, where: Where) -> str:
    return check.name(obj, where, pattern=IFNAME_PATTERN, allowed=IFNAME_ALLOWED)


def _boolean(obj: Any, where: Where) -> bool:
    if not isinstance(obj, bool):
        raise where.error(f"expected true or false, got {check.type_name(obj)}", given=obj)
    return obj


def parse_route(obj: Any, where: Where, protocols: tuple[str, ...]) -> RouteStage:
    body = _body(obj, where, ())
    families = tuple(v for v, p in ((4, "ipv4"), (6, "ipv6")) if p in protocols)
    if not families:
        raise where.error("route needs an IP protocol to route", given=list(protocols),
                          hint="add ipv4 and/or ipv6 to protocols:")
    return RouteStage(name=stage_name(body, where, "route"), families=families)


def parse_bridge(obj: Any, where: Where, protocols: tuple[str, ...]) -> BridgeStage:
    body = _body(obj, where, ("ports", "ageing", "capacity"), required=("ports",))
    raw = check.sequence(body["ports"], where / "ports", what="a list of interface names")
    ports: list[str] = []
    for i, p in enumerate(raw):
        name = _ifname(p, where / "ports" / i)
        if name in ports:
            raise (where / "ports" / i).error("port listed twice", given=name)
        ports.append(name)
    if len(ports) < 2:
        raise (where / "ports").error("a bridge needs at least two ports", given=raw)
    ageing = check.integer(body.get("ageing", BRIDGE_AGEING_DEFAULT), where / "ageing", 1,
                           1_000_000, what="ageing time in seconds")
    capacity = check.integer(body.get("capacity", BRIDGE_CAPACITY_DEFAULT), where / "capacity",
                             16, 1 << 20, what="capacity")
    return BridgeStage(name=stage_name(body, where, "bridge"), ports=tuple(ports),
                       ageing=ageing, capacity=capacity)


def parse_redirect(obj: Any, where: Where, protocols: tuple[str, ...]) -> RedirectStage:
    body = _body(obj, where, ("to", "macs"), required=("to",))
    return RedirectStage(name=stage_name(body, where, "redirect"),
                         to=_ifname(body["to"], where / "to"),
                         macs=check.choice(body.get("macs", "keep"), where / "macs",
                                           REDIRECT_MACS))


def parse_tx(obj: Any, where: Where, protocols: tuple[str, ...]) -> TxStage:
    body = _body(obj, where, ("swap_macs",))
    return TxStage(name=stage_name(body, where, "tx"),
                   swap_macs=_boolean(body.get("swap_macs", True), where / "swap_macs"))


def parse_steer(obj: Any, where: Where, protocols: tuple[str, ...]) -> SteerStage:
    body = _body(obj, where, ("cpus", "by", "queue_size"), required=("cpus",))
    raw = check.sequence(body["cpus"], where / "cpus", what="a list of CPU numbers")
    if not raw:
        raise (where / "cpus").error("steer needs at least one CPU", hint="e.g. cpus: [0, 1]")
    cpus: list[int] = []
    for i, c in enumerate(raw):
        cpu = check.integer(c, where / "cpus" / i, 0, MAX_CPUS - 1, what="CPU number")
        if cpu in cpus:
            raise (where / "cpus" / i).error("CPU listed twice", given=cpu)
        cpus.append(cpu)
    return SteerStage(name=stage_name(body, where, "steer"), cpus=tuple(cpus),
                      by=check.choice(body.get("by", "flow"), where / "by", STEER_BY),
                      queue_size=check.integer(body.get("queue_size", STEER_QUEUE_DEFAULT),
                                               where / "queue_size", 1, STEER_QUEUE_MAX,
                                               what="queue size"))


def _named_number(obj: Any, where: Where, names: dict[str, int], hi: int, what: str) -> int:
    if isinstance(obj, str):
        return names[check.choice(obj, where, tuple(names))]
    return check.integer(obj, where, 0, hi, what=what)


def _xsk_match(obj: Any, where: Where, protocols: tuple[str, ...]) -> XskMatch:
    d = check.mapping(obj, where, allowed=("ethertype", "proto", "dport"))
    if not d:
        raise where.error("an empty match entry matches everything",
                          hint="give ethertype:, proto: or dport:, or leave match: out")
    m = XskMatch(
        ethertype=_named_number(d["ethertype"], where / "ethertype", XSK_ETHERTYPES, 0xFFFF,
                                "EtherType") if "ethertype" in d else None,
        proto=_named_number(d["proto"], where / "proto", XSK_PROTOS, 255,
                            "IP protocol") if "proto" in d else None,
        dport=check.integer(d["dport"], where / "dport", 0, 0xFFFF,
                            what="port") if "dport" in d else None)
    if m.proto is not None and not {"ipv4", "ipv6"} & set(protocols):
        raise (where / "proto").error("matching an IP protocol needs ipv4 or ipv6 in protocols:")
    if m.dport is not None and not {"tcp", "udp"} & set(protocols):
        raise (where / "dport").error("matching a port needs tcp or udp in protocols:")
    return m


def parse_xsk(obj: Any, where: Where, protocols: tuple[str, ...]) -> XskStage:
    body = _body(obj, where, ("queue", "match"))
    raw = check.sequence(body.get("match", []), where / "match", what="a list of match entries")
    return XskStage(name=stage_name(body, where, "xsk"),
                    queue=check.integer(body.get("queue", 0), where / "queue", 0, 255,
                                        what="rx queue"),
                    match=tuple(_xsk_match(m, where / "match" / i, protocols)
                                for i, m in enumerate(raw)))


PARSERS = {"route": parse_route, "bridge": parse_bridge, "redirect": parse_redirect,
           "tx": parse_tx, "steer": parse_steer, "xsk": parse_xsk}
