"""Control plane of the multicast stage: the groups in the kernel's maps.

Every group is a DEVMAP_HASH of member ifindexes in one slot of the stage's ARRAY_OF_MAPS;
its name sits in the same slot of a names array, its addresses in a hash (address -> slot).
All of it is in the kernel's maps, so ``ebplane groups`` and ``stats`` read the groups from
there.  A change of members builds a new DEVMAP_HASH and swaps it into the slot with one
map update: a frame sees the old or the new member set, never a mix.  A new group's members
are in place before its addresses point to it; a removed group loses its addresses first.
``apply`` installs the spec's groups (run-time changes, :mod:`ebplane.runtime.groups`, last
until the next apply).  Members are checked and made capable like every redirect target
(:mod:`ebplane.stages.forward.control`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from typing import Callable, Iterable

from ebplane.errors import EbplaneError, KeyNotFound, UsageError
from ebplane.kernel.codec import COUNT, U32, Packed
from ebplane.kernel.maps import Map
from ebplane.net import iface
from ebplane.spec.located import Where
from ebplane.stages.control import jumbo_interfaces
from ebplane.stages.forward.control import (ForwardingRuntime, _ifaces_of, make_capable,
                                            require_capable)
from ebplane.stages.multicast import gen as mc_gen
from ebplane.stages.multicast.spec import MC_MEMBERS_MAX, MulticastStage, parse_group_address

# codecs of the stage's structs, made from their one definition (gen.py's Layouts)
MC_KEY, MC_NAME, SNOOP_REC = Packed(mc_gen.KEY), Packed(mc_gen.NAME), Packed(mc_gen.SNOOP_REC)


def address_key(text: str):
    """A group address (as the spec writes it) -> the ``ebp_mc_key`` of the addresses map."""
    kind, canon = parse_group_address(text, Where("address"))
    if kind == mc_gen.KIND_MAC:
        raw = bytes.fromhex(canon.replace(":", ""))
    else:
        raw = ipaddress.ip_address(canon).packed
    return MC_KEY.type(kind, b"\0" * 3, raw.ljust(16, b"\0"))


def address_text(key) -> str:
    if key.kind == mc_gen.KIND_MAC:
        return ":".join(f"{b:02x}" for b in key.addr[:6])
    return str(ipaddress.ip_address(key.addr[:4] if key.kind == mc_gen.KIND_IPV4 else key.addr))


class GroupMaps:
    """The maps of one multicast stage (``maps(cname)`` opens them: built or pinned)."""

    def __init__(self, stage: MulticastStage, maps: Callable[[str], Map], hook: str = "xdp"):
        n = mc_gen.map_names(stage.name)
        self.stage = stage
        self.xdp = hook == "xdp"  # members in a DEVMAP_HASH (XDP) or an ARRAY (TC)
        self.groups = maps(n["groups"]).with_codecs(U32, U32)  # slot -> inner map (id / fd)
        self.names = maps(n["names"]).with_codecs(U32, MC_NAME)
        self.addrs = maps(n["addresses"]).with_codecs(MC_KEY, U32)
        self.gcnt = maps(n["group_counters"]).with_codecs(U32, COUNT)

    def slots(self) -> dict[str, int]:
        """group name -> slot."""
        out = {}
        for i in range(self.stage.max_groups):
            name = self.names.lookup(i).name.rstrip(b"\0").decode()
            if name:
                out[name] = i
        return out

    def members(self, slot: int) -> list[int]:
        try:
            map_id = self.groups.lookup(slot)
        except KeyNotFound:
            return []
        with Map.from_id(map_id) as inner:
            m = inner.with_codecs(U32, U32)
            if self.xdp:
                return sorted(m.keys())
            return sorted(v for v in (m.lookup(i) for i in range(m.max_entries)) if v)

    def addresses(self) -> dict[str, int]:
        return {address_text(k): v for k, v in self.addrs.items()}

    def set_members(self, slot: int, ifindexes: Iterable[int], name: str) -> None:
        """One atomic swap: a new member map in the slot."""
        idx = sorted(set(ifindexes))
        if len(idx) > MC_MEMBERS_MAX:
            raise UsageError(f"group {name}: {len(idx)} members exceed {MC_MEMBERS_MAX}",
                             hint="a group holds at most 64 ports")
        kname = re.sub(r"[^A-Za-z0-9_.]", "_", f"mc_{name}")[:15]  # the kernel's name rule
        mtype = "devmap_hash" if self.xdp else "array"
        with Map.create(mtype, 4, 4, MC_MEMBERS_MAX, name=kname, key=U32, value=U32) as inner:
            for pos, i in enumerate(idx):
                inner.update(i if self.xdp else pos, i)  # TC: index -> ifindex, 0 ends
            self.groups.update(slot, inner.fd)

    def free_slot(self, group: str) -> int:
        used = self.slots()
        for i in range(self.stage.max_groups):
            if i not in used.values():
                return i
        raise UsageError(f"multicast '{self.stage.name}': no free slot for group {group} "
                         f"(max_groups is {self.stage.max_groups})",
                         hint="remove a group, or raise max_groups: in the spec and apply")

    def write_group(self, name: str, ifindexes: Iterable[int], addresses: Iterable[str]) -> int:
        """Create or update group ``name``: members first, then its addresses (added ones
        point to it, dropped ones are deleted)."""
        slots = self.slots()
        slot = slots.get(name)
        want = {address_key(a) for a in addresses}
        taken = {k: v for k, v in self.addrs.items()}
        for k in want:  # bad input changes nothing: check before the first write
            if k in taken and taken[k] != slot:
                other = [g for g, s in slots.items() if s == taken[k]]
                raise UsageError(f"address {address_text(k)} already selects group "
                                 f"{other[0] if other else taken[k]}",
                                 hint="remove it from that group first")
        if len(set(ifindexes)) > MC_MEMBERS_MAX:
            raise UsageError(f"group {name}: {len(set(ifindexes))} members exceed "
                             f"{MC_MEMBERS_MAX}", hint="a group holds at most 64 ports")
        if slot is None:
            slot = self.free_slot(name)
            self.gcnt.update(slot, COUNT.type(0, 0))  # a reused slot starts at 0
        self.set_members(slot, ifindexes, name)
        self.names.update(slot, MC_NAME.type(name.encode()))
        for k in want:
            self.addrs.update(k, slot)
        for k, v in taken.items():
            if v == slot and k not in want:
                with contextlib.suppress(KeyNotFound):
                    self.addrs.delete(k)
        return slot

    def delete_group(self, name: str) -> None:
        slot = self.slots()[name]
        for k, v in list(self.addrs.items()):
            if v == slot:
                with contextlib.suppress(KeyNotFound):
                    self.addrs.delete(k)
        with contextlib.suppress(KeyNotFound):
            self.groups.delete(slot)
        self.names.update(slot, MC_NAME.type(b""))

    def describe(self, names: dict[int, str]) -> list[dict]:
        addrs = self.addresses()
        out = []
        for g, slot in sorted(self.slots().items()):
            c = self.gcnt.lookup_sum(slot)
            out.append({"group": g, "slot": slot,
                        "members": [names.get(i, i) for i in self.members(slot)],
                        "addresses": sorted(a for a, s in addrs.items() if s == slot),
                        "sent": {"packets": c.packets, "bytes": c.bytes}})
        return out

    def close(self) -> None:
        for m in (self.groups, self.names, self.addrs, self.gcnt):
            m.close()


def multi_buffer_note(spec, stage) -> list[str]:
    """apply's note for a copying stage in a jumbo pipeline: the kernel's devmap broadcast
    takes single-buffer frames only."""
    jumbo = jumbo_interfaces(spec)
    if not jumbo:
        return []
    what = ("go to the kernel instead of the group" if stage.kind == "multicast"
            else "go to out: without a copy")
    return [f"{stage.kind} '{stage.name}': {', '.join(n for n, _ in jumbo)} take jumbo "
            f"frames; a frame in several buffers (larger than about 3.5 KB on veth) cannot be "
            f"copied by a devmap broadcast, so such frames {what} (counter multi_buffer)"]


def _ifindexes(stage, ifnames, spec, *, replay: bool) -> list[int]:
    """Ifindexes of the member ports that can take redirected frames (XDP: made capable;
    TC: bpf_clone_redirect / bpf_redirect send to any device)."""
    if spec.hook != "xdp":
        out = []
        for n in ifnames:
            try:
                out.append(iface.ifindex(n))
            except EbplaneError:
                if not replay:
                    raise
        return out
    return [e.ifindex for e in make_capable(ifnames, spec, replay=replay, stage=stage)]


class MulticastControl(ForwardingRuntime):
    kind = "multicast"

    def check(self, spec, stage: MulticastStage) -> list[str]:
        notes = super().check(spec, stage)
        members = sorted({m for g in stage.groups for m in g.members})
        if spec.hook != "xdp":
            for m in members:
                iface.ifindex(m)  # exists (InterfaceNotFound, exit 2)
            return notes
        return notes + require_capable(stage, members, spec) + multi_buffer_note(spec, stage)

    def prepare(self, built, spec, stage: MulticastStage, *, replay: bool = False) -> list[str]:
        notes = super().prepare(built, spec, stage, replay=replay)
        gm = GroupMaps(stage, built.map, spec.hook)
        for name in list(gm.slots()):
            if name not in {g.name for g in stage.groups}:
                gm.delete_group(name)
        for g in stage.groups:
            gm.write_group(g.name, _ifindexes(stage, g.members, spec, replay=replay),
                           g.addresses)
        return notes


    def slots(self, stage, live=()) -> dict[int, tuple[int | None, str]]:
        return {i: (None, name) for i, name in enumerate(mc_gen.OUTCOMES)}

    def slots_at(self, stage, hook: str, live=()) -> dict[int, tuple[int | None, str]]:
        return self.slots(stage, live)  # the same slots at every hook

    def describe_slot(self, stage, slot: int, live=()) -> tuple[int | None, str]:
        return self.slots(stage).get(slot, (None, f"slot {slot}"))

    def describe_slot_at(self, stage, hook: str, slot: int, live=()) -> tuple[int | None, str]:
        return self.describe_slot(stage, slot, live)
    def map_roles(self, stage) -> dict[str, str]:
        return {c: r for r, c in mc_gen.map_names(stage.name).items()}

    def targets(self, spec, stage: MulticastStage) -> list[str]:
        return list(dict.fromkeys(m for g in stage.groups for m in g.members))

    def stats(self, maps: Callable[[str], Map], spec, stage: MulticastStage) -> dict:
        cm = maps(mc_gen.map_names(stage.name)["counters"]).with_codecs(U32, COUNT)
        d = {"counts": {}}
        for i, name in enumerate(mc_gen.OUTCOMES):
            c = cm.lookup_sum(i)
            d["counts"][name] = {"packets": c.packets, "bytes": c.bytes}
        gm = GroupMaps(stage, maps, spec.hook)
        names = {i.ifindex: i.name for i in _ifaces_of(spec)}
        d["groups"] = gm.describe(names)
        return d


CONTROLS = {"multicast": MulticastControl()}
