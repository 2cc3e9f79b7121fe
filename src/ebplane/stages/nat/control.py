"""Control-plane side of the nat stage: the outside addresses and port range into its config
map (``prepare``), its counters and translation table for ``ebplane stats``."""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable

from ebplane.errors import UsageError
from ebplane.kernel.codec import U32, Packed
from ebplane.kernel.maps import Map
from ebplane.stages.control import StageControl, slot_counts
from ebplane.stages.nat import gen
from ebplane.stages.nat.gen import COUNTERS, map_names
from ebplane.stages.nat.spec import NatStage

NAT_KEY, NAT_ENTRY, NAT_CFG = Packed(gen.NAT_KEY), Packed(gen.NAT_ENTRY), Packed(gen.NAT_CFG)
KINDS = {v: k for k, v in gen.ENTRY_KINDS.items()}
STATES = dict(enumerate(gen.ENTRY_STATES))
PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


def _ip(raw: bytes, family: int = 4) -> str:
    return str(ipaddress.IPv4Address(raw[:4]) if family == 4 else ipaddress.IPv6Address(raw))


def _ep(raw: bytes, port: bytes, family: int) -> str:
    a = _ip(raw, family)
    return f"{a}:{_port(port)}" if family == 4 else f"[{a}]:{_port(port)}"


def _port(value: int) -> int:
    """A port kept in network order in a __u16 (decoded little-endian)."""
    return int.from_bytes(value.to_bytes(2, "little"), "big")


def outside_addresses(stage: NatStage) -> tuple[str | None, str | None]:
    """The IPv4 and IPv6 addresses translations use: ``address:`` / ``address6:``, else the
    first IPv4 and the first global IPv6 address of ``interface:`` in the current network
    namespace (None when there is none)."""
    v4, v6 = stage.address, stage.address6
    if stage.interface and (v4 is None or v6 is None):
        from pyroute2 import IPRoute
        with IPRoute() as ip:
            links = ip.link_lookup(ifname=stage.interface)
            if links:
                if v4 is None:
                    for msg in ip.get_addr(family=socket.AF_INET, index=links[0]):
                        v4 = msg.get_attr("IFA_ADDRESS")
                        break
                if v6 is None:
                    for msg in ip.get_addr(family=socket.AF_INET6, index=links[0]):
                        if msg["scope"] == 0:  # global, not link-local
                            v6 = msg.get_attr("IFA_ADDRESS")
                            break
    return v4, v6


def translations(table: Map) -> list[dict]:
    """Connections in the table: one per originating entry, with both directions decoded."""
    now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
    out = []
    for k, e in table.with_codecs(NAT_KEY, NAT_ENTRY).items():
        if not e.orig:
            continue
        rk = e.pair
        f = k.family
        idle = max(0, now - e.seen_ns) / 1e9
        d = {"kind": KINDS.get(e.kind, str(e.kind)), "family": f,
             "proto": PROTOS.get(k.proto, k.proto),
             "state": STATES.get(e.state, str(e.state)), "packets": e.packets,
             "idle": round(idle, 1)}
        if e.kind == 1:  # seen leaving: inside source -> outside address and port
            d.update(inside=_ep(k.src, k.sport, f), remote=_ep(k.dst, k.dport, f),
                     outside=_ep(e.addr, e.port, f))
        else:  # seen arriving: remote -> outside address, forwarded to the inside server
            d.update(remote=_ep(k.src, k.sport, f), outside=_ep(k.dst, k.dport, f),
                     inside=_ep(e.addr, e.port, f))
        d["reply_key"] = f"{_ep(rk.src, rk.sport, f)} -> {_ep(rk.dst, rk.dport, f)}"
        out.append(d)
    return out


class NatControl(StageControl):
    kind = "nat"

    def check(self, spec, stage: NatStage) -> list[str]:
        if stage.interface is not None and stage.interface not in spec.interfaces:
            raise UsageError(f"nat '{stage.name}': interface {stage.interface} is not one the "
                             "pipeline is attached to", hint="masquerade to an interface in "
                             "interfaces: (the outside one), or give address:")
        return []

    def prepare(self, built, spec, stage: NatStage, *, replay: bool = False) -> list[str]:
        v4, v6 = outside_addresses(stage)
        notes = []
        for fam, addr in ((4, v4), (6, v6)):
            if addr is None and fam in stage.families:
                if not replay:
                    raise UsageError(f"nat '{stage.name}': interface {stage.interface} has no "
                                     f"IPv{fam} address to translate to",
                                     hint=f"add one to {stage.interface}, or give "
                                          f"{'address' if fam == 4 else 'address6'}:")
                notes.append(f"nat '{stage.name}': no outside IPv{fam} address here: "
                             f"IPv{fam} is not translated")
        cfg = built.map(map_names(stage.name)["config"]).with_codecs(U32, NAT_CFG)
        cfg.update(0, NAT_CFG.type(
            addr=ipaddress.IPv4Address(v4 or "0.0.0.0").packed + bytes(12),
            addr6=ipaddress.IPv6Address(v6 or "::").packed, port_lo=stage.ports[0],
            port_hi=stage.ports[1], pad=0, gc_last=0))
        return notes

    def stats(self, maps: Callable[[str], Map], spec, stage: NatStage) -> dict:
        n = map_names(stage.name)
        counts = slot_counts(maps(n["counters"]), COUNTERS)
        conns = translations(maps(n["table"]))
        cfg = maps(n["config"]).with_codecs(U32, NAT_CFG).lookup(0)
        by_kind: dict[str, int] = {}
        for c in conns:
            by_kind[c["kind"]] = by_kind.get(c["kind"], 0) + 1
        return {"counts": counts,
                "address": _ip(cfg.addr) if any(cfg.addr) else None,
                "address6": _ip(cfg.addr6, 6) if any(cfg.addr6) else None,
                "ports": list(stage.ports),
                "table": {"entries": len(conns), "capacity": stage.size, "by_kind": by_kind,
                          "when_full": stage.when_full},
                "timeouts": dict(stage.timeouts)}

    def describe_slot(self, stage, slot: int, live=()) -> tuple[int | None, str]:
        return None, COUNTERS[slot] if 0 <= slot < len(COUNTERS) else f"slot {slot}"

    def slots(self, stage, live=()) -> dict[int, tuple[int | None, str]]:
        return {i: (None, name) for i, name in enumerate(COUNTERS)}

    def map_roles(self, stage) -> dict[str, str]:
        return {cname: role for role, cname in map_names(stage.name).items()}


CONTROLS = {"nat": NatControl()}
