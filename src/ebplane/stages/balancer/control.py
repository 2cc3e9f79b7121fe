"""The balancer's control-plane side on its maps: install a spec's VIPs and backends, and
change backends at run time (add, remove, weight, down, up).

Every change keeps the data path consistent at each step (see balancer.h):
- the new Maglev table of the VIP is computed from its backends up (by address and
  weight, :func:`maglev.populate`), written into the inactive half of the VIP's table
  (only the entries that differ from what that half holds), and the half index flipped:
  one 32-bit store, so a packet sees the old table or the new one;
- an RCU grace period (:func:`rcu_barrier`) follows each flip, so no packet still reads
  the half the next change rewrites;
- a backend's record is written before any table entry names it (add, up) and freed only
  after the flip that took its entries away and a grace period (remove, down); freeing a
  slot bumps its generation, so connection-table entries naming it are chosen anew.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from typing import Callable, Iterable

from ebplane.errors import NotFound, UsageError
from ebplane.kernel.codec import COUNT, U32, Packed
from ebplane.kernel.maps import Map, rcu_barrier
from ebplane.stages.balancer import gen, maglev
from ebplane.stages.balancer.gen import (COUNTERS, STATE_DOWN, STATE_NAMES, STATE_UNUSED,
                                         STATE_UP, map_names, packed)
from ebplane.stages.balancer.spec import LB_WEIGHT_MAX, BalancerStage, Vip
from ebplane.stages.control import StageControl, slot_counts

# codecs of the stage's map keys and values, made from their one definition (gen.py's
# Layouts, whose C the generator writes into the program)
VIP_KEY, VIP, BACKEND, FLOW, CONN = (Packed(t) for t in (gen.VIP_KEY, gen.VIP, gen.BACKEND,
                                                         gen.FLOW, gen.CONN))

PROTO_NUMBERS = {"tcp": 6, "udp": 17}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}


def _addr(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == 4 else raw))


class Balancer:
    """One balancer stage's maps (``maps(cname)`` opens them: pinned or freshly built)."""

    def __init__(self, maps: Callable[[str], Map], stage: BalancerStage):
        self.stage = stage
        n = map_names(stage.name)
        self.vips = maps(n["vips"]).with_codecs(VIP_KEY, VIP)
        self.halves = maps(n["halves"]).with_codecs(U32, U32)
        self.table = maps(n["table"])
        self.backends = maps(n["backends"]).with_codecs(U32, BACKEND)
        self.conns = maps(n["connections"]).with_codecs(FLOW, CONN)
        self.counters = maps(n["counters"]).with_codecs(U32, COUNT)
        self.flows = maps(n["flows"]).with_codecs(U32, COUNT)

    # -- install ------------------------------------------------------------------------------
    def installed(self) -> bool:
        """Whether the maps hold exactly the spec's VIPs (a re-apply reusing them)."""
        have = {(k.addr, k.port, k.proto, k.family): v.index for k, v in self.vips.items()}
        want = {(packed(v.address), v.port, PROTO_NUMBERS[v.proto], v.family): i
                for i, v in enumerate(self.stage.vips)}
        return have == want

    def install(self) -> None:
        """Write the spec's VIPs and backends (both table halves), replacing whatever the
        maps held: VIPs, backend slots and connections of an earlier version included."""
        M = self.stage.table_size
        self.vips.clear()
        self.conns.clear()
        n = self.stage.max_backends
        self.backends.update_batch(list(range(n)),
                                   [BACKEND.type(b"\0" * 16, 0, 0, 0, STATE_UNUSED, 0)] * n)
        slot = 0
        for i, v in enumerate(self.stage.vips):
            self.vips.update(VIP_KEY.type(packed(v.address), v.port, PROTO_NUMBERS[v.proto],
                                          v.family), VIP.type(i, 0))
            for b in v.backends:
                self.backends.update(slot, BACKEND.type(
                    packed(b.address), 0, b.weight, b.family,
                    STATE_UP if b.state == "up" else STATE_DOWN, i))
                slot += 1
        for i, _ in enumerate(self.stage.vips):
            table = self._compute(i)
            self._write(i, 0, table, [None] * M)
            self._write(i, 1, table, [None] * M)
            self.halves.update(i, 0)

    # -- reading ------------------------------------------------------------------------------
    def _slots(self) -> dict[int, object]:
        return {k: v for k, v in self.backends.lookup_batch() if v.state != STATE_UNUSED}

    def _vip_index(self, vip: Vip) -> int:
        return self.stage.vips.index(vip)

    def _compute(self, vi: int, override: dict[int, object] | None = None) -> list[int]:
        slots = {**self._slots(), **(override or {})}
        live = [(s, _addr(b.addr, b.family), b.weight) for s, b in slots.items()
                if b.vip == vi and b.state == STATE_UP]
        return maglev.populate(live, self.stage.table_size)

    def half_table(self, vi: int, half: int) -> list[int]:
        """The entries of one half of a VIP's table."""
        M = self.stage.table_size
        lo = (vi * 2 + half) * M
        out = [0] * M
        for k, v in self.table._lookup_batch_raw(65536):
            i = struct.unpack("<I", k)[0] - lo
            if 0 <= i < M:
                out[i] = struct.unpack("<I", v[:4])[0]
        return out

    def active_table(self, vi: int) -> list[int]:
        return self.half_table(vi, self.halves.lookup(vi) & 1)

    def _write(self, vi: int, half: int, new: list[int], have: list[int | None]) -> int:
        M = self.stage.table_size
        base = (vi * 2 + half) * M
        idx = [i for i in range(M) if have[i] != new[i]]
        if idx:
            self.table.update_batch(struct.pack(f"<{len(idx)}I", *(base + i for i in idx)),
                                    struct.pack(f"<{len(idx)}I", *(new[i] for i in idx)))
        return len(idx)

    def rebuild(self, vi: int, override: dict[int, object] | None = None) -> dict:
        """Make the VIP's table match its backends up (``override``: slot -> record to
        assume instead of the map's): write the inactive half, flip, wait a grace period.
        Returns what moved (entries whose backend changed) and what was written."""
        new = self._compute(vi, override)
        cur = self.halves.lookup(vi) & 1
        active = self.half_table(vi, cur)
        moved = sum(1 for a, b in zip(active, new) if a != b)
        if not moved:
            return {"moved": 0, "written": 0, "size": len(new)}
        written = self._write(vi, 1 - cur, new, self.half_table(vi, 1 - cur))
        self.halves.update(vi, 1 - cur)
        rcu_barrier()
        return {"moved": moved, "written": written, "size": len(new)}

    def list(self) -> list[dict]:
        """Per VIP: its backends (slot, address, weight, state, entries, new flows)."""
        slots = self._slots()
        out = []
        for vi, v in enumerate(self.stage.vips):
            table = self.active_table(vi)
            share: dict[int, int] = {}
            for s in table:
                share[s] = share.get(s, 0) + 1
            bes = []
            for s, b in sorted(slots.items()):
                if b.vip != vi:
                    continue
                f = self.flows.lookup_sum(s)
                bes.append({"slot": s, "address": _addr(b.addr, b.family), "weight": b.weight,
                            "state": STATE_NAMES[b.state], "entries": share.get(s, 0),
                            "new_flows": f.packets})
            out.append({"vip": v.key, "table_size": self.stage.table_size, "backends": bes})
        return out

    def _find(self, vi: int, address: str) -> tuple[int, object]:
        a = str(ipaddress.ip_address(address))
        for s, b in self._slots().items():
            if b.vip == vi and _addr(b.addr, b.family) == a:
                return s, b
        raise NotFound(f"VIP {self.stage.vips[vi].key} has no backend {a}",
                       hint="see `ebplane backends PIPELINE list`")

    # -- changes ------------------------------------------------------------------------------
    def add(self, vip: Vip, address: str, weight: int = 1, state: str = "up") -> dict:
        vi = self._vip_index(vip)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise UsageError(f"invalid backend address {address!r}",
                             hint="an IPv4 or IPv6 address") from None
        if not 0 <= weight <= LB_WEIGHT_MAX:
            raise UsageError(f"weight {weight} out of range", hint=f"0-{LB_WEIGHT_MAX}")
        src = self.stage.source4 if ip.version == 4 else self.stage.source6
        if src is None:
            raise UsageError(f"balancer '{self.stage.name}' has no outer IPv{ip.version} source "
                             f"for backend {ip}", hint=f"add source: {{ipv{ip.version}: ...}} "
                             "to the stage and re-apply")
        slots = self._slots()
        if any(b.vip == vi and _addr(b.addr, b.family) == str(ip) for b in slots.values()):
            raise UsageError(f"VIP {vip.key} has backend {ip} already",
                             hint="use set-weight, down or up to change it")
        free = next((s for s in range(self.stage.max_backends) if s not in slots), None)
        if free is None:
            raise UsageError(f"balancer '{self.stage.name}' has all {self.stage.max_backends} "
                             "backend slots in use", hint="raise max_backends and re-apply")
        old = self.backends.lookup(free)
        self.backends.update(free, BACKEND.type(packed(str(ip)), old.gen, weight, ip.version,
                                                STATE_UP if state == "up" else STATE_DOWN, vi))
        return {"vip": vip.key, "backend": str(ip), "slot": free, **self.rebuild(vi)}

    def remove(self, vip: Vip, address: str) -> dict:
        vi = self._vip_index(vip)
        s, b = self._find(vi, address)
        # out of the table first, then (after the grace period the flip waited for) free
        # the slot: its generation moves on, its connection entries are chosen anew
        res = self.rebuild(vi, {s: b._replace(state=STATE_DOWN)})
        self.backends.update(s, BACKEND.type(b"\0" * 16, (b.gen + 1) & 0xFFFFFFFF, 0, 0,
                                             STATE_UNUSED, 0))
        return {"vip": vip.key, "backend": _addr(b.addr, b.family), "slot": s, **res}

    def _set(self, vip: Vip, address: str, **change) -> dict:
        vi = self._vip_index(vip)
        s, b = self._find(vi, address)
        new = b._replace(**change)
        if new.state != STATE_UP or new.weight == 0:
            # leaving the table: the table first (the record still says up, so a flow the
            # old table sends to it is served), then the record
            res = self.rebuild(vi, {s: new})
            self.backends.update(s, new)
        else:
            # entering (or staying in) the table: the record first
            self.backends.update(s, new)
            res = self.rebuild(vi)
        return {"vip": vip.key, "backend": _addr(b.addr, b.family), "slot": s, **res}

    def set_weight(self, vip: Vip, address: str, weight: int) -> dict:
        if not 0 <= weight <= LB_WEIGHT_MAX:
            raise UsageError(f"weight {weight} out of range", hint=f"0-{LB_WEIGHT_MAX}")
        return self._set(vip, address, weight=weight)

    def down(self, vip: Vip, address: str) -> dict:
        return self._set(vip, address, state=STATE_DOWN)

    def up(self, vip: Vip, address: str) -> dict:
        return self._set(vip, address, state=STATE_UP)

    # -- observing ----------------------------------------------------------------------------
    def connections(self) -> list[dict]:
        slots = {s: b for s, b in self.backends.lookup_batch()}
        out = []
        for k, c in self.conns.items():
            b = slots.get(c.backend)
            live = b is not None and b.state != STATE_UNUSED and b.gen == c.gen
            out.append({"src": _addr(k.src, k.family), "dst": _addr(k.dst, k.family),
                        "sport": k.sport, "dport": k.dport,
                        "proto": PROTO_NAMES.get(k.proto, str(k.proto)), "slot": c.backend,
                        "backend": _addr(b.addr, b.family) if live else None})
        return out

    def stats(self) -> dict:
        return {"counts": slot_counts(self.counters, COUNTERS), "vips": self.list(),
                "connections": {"entries": sum(1 for _ in self.conns.raw_keys_batch()),
                                "capacity": self.stage.connections}}


def prime_neighbours(addresses: Iterable[str]) -> None:
    """Have the kernel resolve the next hops toward ``addresses`` (in the calling thread's
    namespace): one empty UDP datagram to the discard port each.  The XDP program's FIB
    lookup succeeds only with a neighbour entry; until then encapsulated frames go to the
    stack, which forwards them only if the interface accepts packets with a local source
    address (accept_local)."""
    for a in addresses:
        fam = socket.AF_INET6 if ipaddress.ip_address(a).version == 6 else socket.AF_INET
        with contextlib.suppress(OSError), socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.sendto(b"", (a, 9))


class BalancerControl(StageControl):
    """Fill the maps at apply/replay (keeping the live backends of reused maps), note an
    interface whose forwarding is off, read the counters for ``ebplane stats``."""

    kind = "balancer"

    def check(self, spec, stage: BalancerStage) -> list[str]:
        """A note per interface whose forwarding is off (runs in the pipeline's netns):
        bpf_fib_lookup then fails and every encapsulated packet goes to the stack."""
        notes = []
        for ifname in spec.interfaces:
            for fam, src in ((4, stage.source4), (6, stage.source6)):
                path = f"/proc/sys/net/ipv{fam}/conf/{ifname}/forwarding"
                if src is None:
                    continue
                try:
                    with open(path) as f:
                        on = f.read().strip() != "0"
                except OSError:
                    continue
                if not on:
                    notes.append(f"balancer '{stage.name}': IPv{fam} forwarding is off on "
                                 f"{ifname}: the FIB lookup of encapsulated packets fails and "
                                 f"they go to the stack (sysctl -w "
                                 f"{path[len('/proc/sys/'):].replace('/', '.')}=1)")
        return notes

    def prepare(self, built, spec, stage: BalancerStage, *, replay: bool = False) -> list[str]:
        lb = Balancer(built.map, stage)
        names = set(map_names(stage.name).values())
        if not replay and names <= built.reused_maps and lb.installed():
            notes = [f"balancer '{stage.name}': kept the live backends of its reused maps"]
        else:
            lb.install()
            notes = []
        if not replay:  # (prepare runs inside the pipeline's namespace)
            prime_neighbours(b["address"] for v in lb.list() for b in v["backends"])
        return notes

    def stats(self, maps: Callable[[str], Map], spec, stage: BalancerStage) -> dict:
        return Balancer(maps, stage).stats()

    def slots(self, stage, live=()) -> dict[int, tuple[int | None, str]]:
        """The outcome a trace record names (replay's reason): tx, redirect, no_backend, ...;
        ``other`` for a packet dropped because a helper failed."""
        return {**{i: (None, n) for i, n in enumerate(COUNTERS)}, len(COUNTERS): (None, "other")}

    def describe_slot(self, stage, slot: int, live=()) -> tuple[int | None, str]:
        return None, COUNTERS[slot] if slot < len(COUNTERS) else "other"

    def map_roles(self, stage) -> dict[str, str]:
        return {c: r for r, c in map_names(stage.name).items()}


CONTROLS = {"balancer": BalancerControl()}
