"""Run-time changes to the groups of an applied multicast stage (``ebplane groups``), and
IGMP/MLD snooping (``ebplane groups PIPELINE snoop``).

The groups live in the kernel's maps (:mod:`ebplane.stages.multicast.control`); every change
here goes through :class:`GroupMaps` under the pipeline's lock: a member set is swapped
whole, so frames in flight see the old or the new set.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from typing import Iterable

from ebplane.errors import EbplaneError, NotFound, UsageError
from ebplane.net import iface, netns
from ebplane.spec.located import Where
from ebplane.stages.forward.control import require_capable
from ebplane.stages.multicast import gen as mc_gen
from ebplane.stages.multicast.control import SNOOP_REC, GroupMaps, _ifindexes
from ebplane.stages.multicast.spec import (check_address_parsed, parse_group,
                                           parse_group_address)


class Groups:
    """The groups of a multicast stage of an applied pipeline, changed at run time.

    Every change is atomic for the frames in flight (a member set is swapped whole) and
    happens under the pipeline's lock.  ``stage``: the multicast stage's name (needed when
    the pipeline has more than one).
    """

    def __init__(self, pipeline: str, stage: str | None = None):
        from ebplane.runtime import pipeline as pl
        self._pl = pl
        self.pipeline = pipeline
        st = pl.require_state(pipeline)
        spec = pl._spec_of(st)
        kinds = [s for s in spec.stages if s.kind == "multicast"]
        if not kinds:
            raise UsageError(f"pipeline '{pipeline}' has no multicast stage",
                             hint="add `- multicast: {groups: {...}}` to its stages and apply")
        if stage is None:
            if len(kinds) > 1:
                raise UsageError(f"pipeline '{pipeline}' has {len(kinds)} multicast stages",
                                 hint="name one with --stage: "
                                      + ", ".join(s.name for s in kinds))
            self.stage = kinds[0]
        else:
            found = [s for s in kinds if s.name == stage]
            if not found:
                raise NotFound(f"pipeline '{pipeline}' has no multicast stage '{stage}'",
                               hint="its multicast stages: " + ", ".join(s.name for s in kinds))
            self.stage = found[0]
        self.spec = spec

    @contextlib.contextmanager
    def _maps(self):
        opened: list[Map] = []

        def maps(cname: str) -> Map:
            m = self._pl._pinned_map(self.pipeline, cname)
            opened.append(m)
            return m
        try:
            with netns.enter(self.spec.netns) if self.spec.netns else contextlib.nullcontext():
                yield GroupMaps(self.stage, maps, self.spec.hook)
        finally:
            for m in opened:
                m.close()

    def list(self) -> list[dict]:
        with self._maps() as gm:
            names = {i.ifindex: i.name for i in iface.list_ifaces()}
            return gm.describe(names)

    def _members(self, ifnames: Iterable[str]) -> list[int]:
        ifnames = list(ifnames)
        for n in ifnames:
            iface.ifindex(n)  # InterfaceNotFound (exit 2) before any change
        if self.spec.hook == "xdp":
            require_capable(self.stage, ifnames, self.spec)
        return _ifindexes(self.stage, ifnames, self.spec, replay=False)

    def add(self, group: str, *, members: Iterable[str] = (),
            addresses: Iterable[str] = ()) -> dict:
        """Create ``group`` or add members and addresses to it."""
        members, addresses = list(members), list(addresses)
        with self._pl._locked(self.pipeline), self._maps() as gm:
            slot = gm.slots().get(group)
            have_m = gm.members(slot) if slot is not None else []
            have_a = [a for a, s in gm.addresses().items() if s == slot] if slot is not None else []
            if slot is None and not addresses:
                raise UsageError(f"group {group} does not exist; a new group needs an address",
                                 hint="add --address (e.g. broadcast, 239.1.1.1, "
                                      "01:00:5e:01:01:01)")
            g = parse_group(group, {"members": members, "addresses": have_a + [
                a for a in addresses if parse_group_address(a, Where("address"))[1] not in have_a]},
                Where(f"group {group}"))
            for a in g.addresses:
                check_address_parsed(a, self.spec.protocols, Where(f"group {group}"))
            idx = self._members(members)
            gm.write_group(group, sorted(set(have_m) | set(idx)), g.addresses)
        return self._one(group)

    def remove(self, group: str, *, members: Iterable[str] = (),
               addresses: Iterable[str] = ()) -> dict | None:
        """Remove members or addresses from ``group``; with neither, the whole group."""
        members, addresses = list(members), list(addresses)
        with self._pl._locked(self.pipeline), self._maps() as gm:
            slot = gm.slots().get(group)
            if slot is None:
                raise NotFound(f"multicast '{self.stage.name}' has no group {group}",
                               hint=f"see `ebplane groups {self.pipeline} list`")
            if not members and not addresses:
                gm.delete_group(group)
                return None
            drop = {iface.ifindex(m) for m in members}
            gone = {parse_group_address(a, Where("address"))[1] for a in addresses}
            have_a = [a for a, s in gm.addresses().items() if s == slot]
            # naming a port or address the group does not have is a mistake (a typo, the
            # wrong group): say so rather than report success for a change never made
            have_m = gm.members(slot)
            absent = [m for m in members if iface.ifindex(m) not in have_m] + \
                     [a for a in addresses if parse_group_address(a, Where("address"))[1]
                      not in have_a]
            if absent:
                raise NotFound(f"group {group} has no member or address {', '.join(absent)}",
                               hint=f"see `ebplane groups {self.pipeline} list`")
            left = [a for a in have_a if a not in gone]
            if not left:
                raise UsageError(f"group {group} would have no address left",
                                 hint=f"remove the whole group: ebplane groups "
                                      f"{self.pipeline} remove {group}")
            gm.write_group(group, [i for i in gm.members(slot) if i not in drop], left)
        return self._one(group)

    def _one(self, group: str) -> dict:
        return next(g for g in self.list() if g["group"] == group)


# -- IGMP / MLD snooping ------------------------------------------------------------------------

MEMBERSHIP_INTERVAL = 260.0  # s: RFC 3376 / 3810 default Group Membership Interval
_JOIN_RECORDS = (2, 4)       # MODE_IS_EXCLUDE, CHANGE_TO_EXCLUDE (any source)
_SOURCE_RECORDS = (1, 5)     # MODE_IS_INCLUDE, ALLOW_NEW_SOURCES: join when sources given
_LEAVE_RECORDS = (3,)        # CHANGE_TO_INCLUDE: leave when no source is left


def _records(body: bytes, alen: int) -> list[tuple[str, str]]:
    """(join|leave, address) of the group records of an IGMPv3 / MLDv2 report ``body``
    (starting at its type byte)."""
    out = []
    if len(body) < 8:
        return out
    nrec, off = int.from_bytes(body[6:8], "big"), 8
    for _ in range(nrec):
        if off + 4 + alen > len(body):
            break
        rtype, aux, nsrc = body[off], body[off + 1], int.from_bytes(body[off + 2:off + 4], "big")
        addr = str(ipaddress.ip_address(body[off + 4:off + 4 + alen]))
        if rtype in _JOIN_RECORDS or (rtype in _SOURCE_RECORDS and nsrc):
            out.append(("join", addr))
        elif (rtype in _LEAVE_RECORDS or rtype == 1) and not nsrc:
            out.append(("leave", addr))
        off += 4 + alen + alen * nsrc + 4 * aux
    return out


def membership_events(frame: bytes) -> list[tuple[str, str]]:
    """(join|leave, group address) of an IGMP (v1/v2/v3) or MLD (v1/v2) report or leave in
    an untagged Ethernet frame; [] for anything else or a cut-short frame.  Link-local groups
    (224.0.0.0/24, ff02::/16 and narrower) are left out: they are always flooded."""
    if len(frame) < 14:
        return []
    ethertype, off = int.from_bytes(frame[12:14], "big"), 14
    events: list[tuple[str, str]] = []
    if ethertype == 0x0800 and len(frame) >= off + 20 and frame[off + 9] == 2:
        igmp = frame[off + (frame[off] & 0x0F) * 4:]
        if len(igmp) >= 8 and igmp[0] in (0x12, 0x16, 0x17):
            events = [("leave" if igmp[0] == 0x17 else "join",
                       str(ipaddress.ip_address(igmp[4:8])))]
        elif igmp[:1] == b"\x22":
            events = _records(igmp, 4)
    elif ethertype == 0x86DD and len(frame) >= off + 40:
        nh, off = frame[off + 6], off + 40
        while nh in (0, 43, 60) and len(frame) >= off + 2:  # hop-by-hop, routing, dest. options
            nh, off = frame[off], off + (frame[off + 1] + 1) * 8
        icmp = frame[off:]
        if nh != 58 or len(icmp) < 8:
            return []
        if icmp[0] in (131, 132) and len(icmp) >= 24:
            events = [("leave" if icmp[0] == 132 else "join",
                       str(ipaddress.ip_address(icmp[8:24])))]
        elif icmp[0] == 143:
            events = _records(icmp, 16)
    out = []
    for what, addr in events:
        ip = ipaddress.ip_address(addr)
        if not ip.is_multicast:
            continue
        if ip.version == 4 and ip in ipaddress.ip_network("224.0.0.0/24"):
            continue
        if ip.version == 6 and (ip.packed[1] & 0x0F) <= 2:
            continue
        out.append((what, addr))
    return out


def snoop_group_name(address: str) -> str:
    """The name of a group the snooper creates for ``address`` (1-15 characters)."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return str(ip)
    import zlib
    return f"mld-{zlib.crc32(ip.packed):08x}"


class Snooper:
    """Learns group members from the IGMP/MLD reports a ``snooping: true`` multicast stage
    copies to its ring buffer: a report on a port joins that port to the group of the
    address (a group with that address, or a new one named after it), a leave (or no report
    for ``timeout`` seconds; 0: never) takes it out, and a group the snooper made goes when
    its last member leaves.  Every change goes through :class:`Groups` (atomic, locked)."""

    def __init__(self, groups: Groups, *, timeout: float = MEMBERSHIP_INTERVAL):
        from ebplane.kernel.ringbuf import RingBuffer
        if not groups.stage.snooping:
            raise UsageError(f"multicast '{groups.stage.name}' of pipeline "
                             f"'{groups.pipeline}' does not snoop",
                             hint="set snooping: true in the stage and apply")
        self.groups, self.timeout = groups, timeout
        self.ring = groups._pl._pinned_map(groups.pipeline,
                                           mc_gen.map_names(groups.stage.name)["snoop"])
        self._events: list[tuple[str, str, str]] = []
        with netns.enter(groups.spec.netns) if groups.spec.netns else contextlib.nullcontext():
            self.ifnames = {i.ifindex: i.name for i in iface.list_ifaces()}
        self.expires: dict[tuple[str, str], float] = {}
        self.created: set[str] = set()
        self._rb = RingBuffer(self.ring, self._on_record)

    def _on_record(self, data: bytes) -> None:
        rec = SNOOP_REC.decode(data)
        port = self.ifnames.get(rec.ifindex)
        if port is None:
            return
        for what, addr in membership_events(rec.data[:rec.len]):
            self._events.append((what, addr, port))

    def _holder(self, addr: str) -> dict | None:
        return next((g for g in self.groups.list() if addr in g["addresses"]), None)

    def _apply(self, what: str, addr: str, port: str) -> dict | None:
        g = self._holder(addr)
        if what == "join":
            self.expires[(addr, port)] = time.monotonic() + self.timeout
            if g is not None and port in g["members"]:
                return None
            if g is None:
                name = snoop_group_name(addr)
                self.groups.add(name, members=[port], addresses=[addr])
                self.created.add(name)
            else:
                name = g["group"]
                self.groups.add(name, members=[port])
            return {"event": "join", "group": name, "address": addr, "port": port}
        self.expires.pop((addr, port), None)
        if g is None or port not in g["members"]:
            return None
        if g["group"] in self.created and g["members"] == [port]:
            self.groups.remove(g["group"])
            self.created.discard(g["group"])
        else:
            self.groups.remove(g["group"], members=[port])
        return {"event": what, "group": g["group"], "address": addr, "port": port}

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        """Read the reports that came in (waiting up to ``timeout_ms``), apply them and the
        expiries that are due; the changes made."""
        self._rb.poll(timeout_ms)
        events, self._events = self._events, []
        if self.timeout:
            now = time.monotonic()
            events += [("expire", a, p) for (a, p), t in list(self.expires.items()) if t < now]
        changes = []
        for what, addr, port in events:
            try:
                c = self._apply(what, addr, port)
            except EbplaneError as e:  # a port that cannot take frames, no free slot, ...
                c = {"event": "error", "address": addr, "port": port, "error": str(e)}
            if c:
                changes.append(c)
        return changes

    def run(self, seconds: float | None, on_change) -> None:
        end = None if seconds is None else time.monotonic() + seconds
        while end is None or time.monotonic() < end:
            for c in self.poll(100):
                on_change(c)

    def close(self) -> None:
        self._rb.close()
        self.ring.close()
