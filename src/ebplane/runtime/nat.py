"""Control-plane side of the nat stage: the outside address and port range into its config
map (``prepare``), its counters and translation table for ``ebplane stats``."""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable

from ebplane.errors import UsageError
from ebplane.kernel.codec import COUNT, U32, Struct
from ebplane.kernel.maps import Map
from ebplane.runtime.stages import StageRuntime, register_runtime
from ebplane.spec.nat import NatStage
from ebplane.stages.nat.gen import COUNTERS, map_names

# nat.h: struct ebp_nat_key, ebp_nat_entry, ebp_nat_cfg (sizes are checked against the maps)
NAT_KEY = Struct("ebp_nat_key", [("src", "4s"), ("dst", "4s"), ("sport", "2s"),
                                 ("dport", "2s"), ("proto", "B"), ("dir", "B"), ("pad", "H")])
NAT_ENTRY = Struct("ebp_nat_entry", [("seen_ns", "Q"), ("timeout_ns", "Q"), ("packets", "Q"),
                                     ("pair", "16s"), ("addr", "4s"), ("port", "2s"),
                                     ("kind", "B"), ("orig", "B"), ("state", "B"),
                                     ("pad", "7s")])
NAT_CFG = Struct("ebp_nat_cfg", [("addr", "4s"), ("port_lo", "H"), ("port_hi", "H"),
                                 ("gc_last", "Q")])
KINDS = {1: "snat", 2: "dnat"}
STATES = {0: "new", 1: "replied", 2: "closing"}
PROTOS = {1: "icmp", 6: "tcp", 17: "udp"}


def _ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _port(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def outside_address(stage: NatStage) -> str | None:
    """The address translations use: ``address:``, else the first IPv4 address of
    ``interface:`` in the current network namespace (None when it has none)."""
    if stage.address:
        return stage.address
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        links = ip.link_lookup(ifname=stage.interface)
        if not links:
            return None
        for msg in ip.get_addr(family=socket.AF_INET, index=links[0]):
            return msg.get_attr("IFA_ADDRESS")
    return None


def translations(table: Map) -> list[dict]:
    """Connections in the table: one per originating entry, with both directions decoded."""
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
    out = []
    for k, e in table.with_codecs(NAT_KEY, NAT_ENTRY).items():
        if not e.orig:
            continue
        rk = NAT_KEY.decode(e.pair)
        idle = max(0, now - e.seen_ns) / 1e9
        d = {"kind": KINDS.get(e.kind, str(e.kind)), "proto": PROTOS.get(k.proto, k.proto),
             "state": STATES.get(e.state, str(e.state)), "packets": e.packets,
             "idle": round(idle, 1)}
        if e.kind == 1:  # seen leaving: inside source -> outside address and port
            d.update(inside=f"{_ip(k.src)}:{_port(k.sport)}", remote=f"{_ip(k.dst)}:"
                     f"{_port(k.dport)}", outside=f"{_ip(e.addr)}:{_port(e.port)}")
        else:  # seen arriving: remote -> outside address, forwarded to the inside server
            d.update(remote=f"{_ip(k.src)}:{_port(k.sport)}", outside=f"{_ip(k.dst)}:"
                     f"{_port(k.dport)}", inside=f"{_ip(e.addr)}:{_port(e.port)}")
        d["reply_key"] = f"{_ip(rk.src)}:{_port(rk.sport)} -> {_ip(rk.dst)}:{_port(rk.dport)}"
        out.append(d)
    return out


class NatRuntime(StageRuntime):
    kind = "nat"

    def check(self, spec, stage: NatStage) -> list[str]:
        if stage.address is None and stage.interface not in spec.interfaces:
            raise UsageError(f"nat '{stage.name}': interface {stage.interface} is not one the "
                             "pipeline is attached to", hint="masquerade to an interface in "
                             "interfaces: (the outside one), or give address:")
        return []

    def prepare(self, built, spec, stage: NatStage, *, replay: bool = False) -> list[str]:
        addr = outside_address(stage)
        notes = []
        if addr is None:
            if not replay:
                raise UsageError(f"nat '{stage.name}': interface {stage.interface} has no "
                                 "IPv4 address to translate to",
                                 hint=f"add an address to {stage.interface}, or give address:")
            notes.append(f"nat '{stage.name}': no outside address here: nothing is translated")
        cfg = built.map(map_names(stage.name)["config"]).with_codecs(U32, NAT_CFG)
        cfg.update(0, NAT_CFG.type(ipaddress.IPv4Address(addr or "0.0.0.0").packed,
                                   stage.ports[0], stage.ports[1], 0))
        return notes

    def stats(self, maps: Callable[[str], Map], spec, stage: NatStage) -> dict:
        n = map_names(stage.name)
        cm = maps(n["counters"]).with_codecs(U32, COUNT)
        counts = {}
        for i, name in enumerate(COUNTERS):
            c = cm.lookup_sum(i)
            counts[name] = {"packets": c.packets, "bytes": c.bytes}
        conns = translations(maps(n["table"]))
        cfg = maps(n["config"]).with_codecs(U32, NAT_CFG).lookup(0)
        by_kind: dict[str, int] = {}
        for c in conns:
            by_kind[c["kind"]] = by_kind.get(c["kind"], 0) + 1
        return {"counts": counts,
                "address": _ip(cfg.addr), "ports": list(stage.ports),
                "table": {"entries": len(conns), "capacity": stage.size, "by_kind": by_kind,
                          "when_full": stage.when_full},
                "timeouts": dict(stage.timeouts)}


register_runtime(NatRuntime())
