"""Several pipelines on one interface and hook (``priority:``; docs/composition.md).

XDP: per network namespace one *domain* pinned under ``<bpffs root>/_dispatch/<netns>/``
(pipeline names cannot hold ``_``): the members' PROG_ARRAY ``chain``, the interface -> base
map ``base`` and, per interface, the link of its root program (``links/<ifname>@xdp``).  The
root is attached once with a bpf_link; members come and go as slot updates, each atomic for
the others (``ebplane.codegen.dispatch`` explains the slots).  The root goes with the last
member of its interface, the domain with the last root.

TC: tcx keeps several programs per hook and runs them in order (bpf_mprog); a member is
placed before the member of the next higher priority (or after the next lower one) with
``BPF_F_BEFORE``/``BPF_F_AFTER``, and its link is replaced in place (``bpf_link_update``).

Every function works in the calling thread's network namespace (the pipeline's) and takes
the domain's lock itself: the pipelines of one domain have locks of their own, so two applies
of different pipelines may join one interface at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from ebplane.codegen.dispatch import (BASE_MAP, CHAIN_ENTRIES, CHAIN_IF, CHAIN_MAP,
                                      MAX_INTERFACES, ROOT_NAME, SLOTS, root_c)
from ebplane.errors import AttachError, EbplaneError, NotFound, UsageError
from ebplane.kernel import bpffs
from ebplane.kernel.codec import U32, Packed
from ebplane.kernel.libbpf import ATTACH_TYPES
from ebplane.kernel.links import Link
from ebplane.kernel.maps import Map
from ebplane.kernel.programs import BpfObject, Program
from ebplane.net import attach as att
from ebplane.net import iface
from ebplane.runtime.state import state_dir
from ebplane.toolchain.clang import compile_c

# struct ebp_chain_if, the value of BASE_MAP (its one definition: codegen.dispatch.CHAIN_IF)
ENTRY = Packed(CHAIN_IF)

DOMAIN = "_dispatch"


def _key(netns: str | None) -> str:
    # bpffs refuses names with dots; '%' cannot start a namespace name's encoding otherwise
    return "-" if netns is None else "ns-" + netns.replace("%", "%25").replace(".", "%2e")


def domain_dir(netns: str | None) -> Path:
    return bpffs.root() / DOMAIN / _key(netns)


def _link_pin(netns: str | None, ifname: str) -> Path:
    return domain_dir(netns) / "links" / f"{ifname.replace('.', '%2e')}@xdp"


@contextlib.contextmanager
def _lock(netns: str | None) -> Iterator[None]:
    """The domain's lock (taken after a pipeline's lock, never before one)."""
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(d / f".dispatch@{_key(netns)}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _maps(netns: str | None, *, create: bool) -> tuple[Map, Map] | None:
    d = domain_dir(netns)
    try:
        chain = Map.from_pin(d / "chain").with_codecs(U32, U32)
        base = Map.from_pin(d / "base").with_codecs(U32, ENTRY)
        return chain, base
    except NotFound:
        if not create:
            return None
    d.mkdir(parents=True, exist_ok=True)
    for p in (d / "chain", d / "base"):
        bpffs.unpin(p)  # half made by a killed command
    chain = Map.create("prog_array", 4, 4, CHAIN_ENTRIES, name=CHAIN_MAP).with_codecs(U32, U32)
    base = Map.create("hash", 4, ENTRY.size, MAX_INTERFACES,
                      name=BASE_MAP).with_codecs(U32, ENTRY)
    chain.pin(d / "chain")
    base.pin(d / "base")
    return chain, base


@contextlib.contextmanager
def chain_maps(netns: str | None, interfaces) -> Iterator[tuple[dict[str, int], int | None]]:
    """The domain's shared maps (created if missing) as C name -> fd, for building a member,
    and, for a pipeline of one interface, that interface's base (reserved now if it has
    none), which the member is built with."""
    base = None
    with _lock(netns):
        chain, basemap = _maps(netns, create=True)
        try:
            if len(interfaces) == 1:
                idx = iface.ifindex(interfaces[0])
                entry = _entry(basemap, idx)
                base = entry[0] if entry else _reserve(basemap, idx)
        except BaseException:
            chain.close()
            basemap.close()
            raise
    try:
        yield {CHAIN_MAP: chain.fd, BASE_MAP: basemap.fd}, base
    finally:
        chain.close()
        basemap.close()


def _reserve(basemap: Map, idx: int, want: int | None = None) -> int:
    """Give interface ``idx`` a base (``want`` if given): its slots, no member yet."""
    used = {v.base for _, v in basemap.items()}
    if want is not None:
        if want in used:
            raise AttachError(f"the dispatcher's slots {want * SLOTS}.. were given to another "
                              f"interface while this pipeline was built", err=errno.EBUSY,
                              hint="apply again")
        free = [want]
    else:
        free = [b for b in range(MAX_INTERFACES) if b not in used]
    if not free:
        raise UsageError(f"{MAX_INTERFACES} interfaces of this network namespace already have "
                         f"composed XDP pipelines",
                         hint="detach composed pipelines from other interfaces")
    basemap.update(idx, ENTRY.type(base=free[0], mask=0))
    return free[0]


def _root_alive(netns: str | None, ifname: str) -> Link | None:
    try:
        link = Link.from_pin(_link_pin(netns, ifname))
    except EbplaneError:
        return None
    if link.ifindex() == 0:
        link.close()
        return None
    return link


def foreign_xdp(ifname: str) -> dict | None:
    """The XDP program attached to ``ifname`` if any: {"id", "name", "mode"}."""
    q = att.query_xdp(ifname)
    if not q["prog_id"]:
        return None
    name = "?"
    with contextlib.suppress(EbplaneError):
        with Program.from_id(q["prog_id"]) as p:
            name = p.name
    return {"id": q["prog_id"], "name": name, "mode": q["mode"]}


def evict_foreign(ifname: str, found: dict) -> str:
    """Detach a foreign XDP program attached through netlink (``--replace-foreign``); one
    held by a bpf_link cannot be taken off from outside."""
    try:
        att.detach_xdp(ifname, found["mode"] if found["mode"] in ("native", "generic") else None)
    except EbplaneError as e:
        raise AttachError(f"cannot remove the foreign XDP program {found['id']} "
                          f"('{found['name']}') from {ifname}: {e.message}",
                          hint="it is held by a bpf_link: close the link (or unpin it) in "
                               "the program that made it") from e
    if att.query_xdp(ifname)["prog_id"]:
        raise AttachError(f"the foreign XDP program {found['id']} ('{found['name']}') on "
                          f"{ifname} is held by a bpf_link and cannot be replaced from outside",
                          hint="close the link (or unpin it) in the program that made it")
    return (f"{ifname}: replaced the foreign XDP program {found['id']} ('{found['name']}', "
            f"{found['mode']}) (--replace-foreign)")


def foreign_error(ifname: str, found: dict, ours: str | None = None) -> AttachError:
    if ours:
        return AttachError(f"{ifname} runs XDP program {found['id']} ('{found['name']}') of "
                           f"pipeline '{ours}', which has no priority:",
                           err=errno.EBUSY,
                           hint=f"give both pipelines a priority: (docs/composition.md) and "
                                f"re-apply '{ours}' after `ebplane detach {ours}`")
    return AttachError(f"{ifname} already has a foreign XDP program (id {found['id']}, name "
                       f"'{found['name']}', {found['mode']}): left alone", err=errno.EBUSY,
                       hint="detach it first (`ip link set DEV xdp off` if attached by netlink), "
                            "or apply with --replace-foreign to replace it")


def _entry(basemap: Map, idx: int) -> tuple[int, int] | None:
    """(base, mask) of the interface with index ``idx`` (struct ebp_chain_if)."""
    v = basemap.get(idx)
    return None if v is None else (v.base, v.mask)


def _set_bit(basemap: Map, idx: int, priority: int, on: bool) -> None:
    base, mask = _entry(basemap, idx)
    mask = mask | (1 << priority) if on else mask & ~(1 << priority)
    basemap.update(idx, ENTRY.type(base=base, mask=mask))


def _load_root(base: int, chain: Map, basemap: Map) -> BpfObject:
    res = compile_c(root_c(base), name=f"dispatch{base}")
    obj = BpfObject.open_bytes(res.elf, f"dispatch{base}")
    try:
        obj.reuse_map(CHAIN_MAP, chain.fd)
        obj.reuse_map(BASE_MAP, basemap.fd)
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


def join(prog: Program, ifname: str, priority: int, *, netns: str | None, mode: str,
         base: int | None = None, replace_foreign: bool = False,
         ours: dict[int, str] | None = None) -> dict:
    """Put ``prog`` into slot ``priority`` of ``ifname``'s chain, attaching the interface's
    root first if it has none.  Returns the attachment record.  ``base``: the interface
    base ``prog`` was built with (None: it looks it up).  ``ours``: prog id -> name of
    ebplane's pipelines in the namespace (to tell them from foreign programs)."""
    want = base
    idx = iface.ifindex(ifname)
    notes: list[str] = []
    with _lock(netns):
        chain, basemap = _maps(netns, create=True)
        try:
            entry = _entry(basemap, idx)
            base = entry[0] if entry else None
            root = _root_alive(netns, ifname) if base is not None else None
            if root is None:
                found = foreign_xdp(ifname)
                if found is not None:
                    owner = (ours or {}).get(found["id"])
                    if owner is not None or not replace_foreign:
                        raise foreign_error(ifname, found, owner)
                    notes.append(evict_foreign(ifname, found))
                if base is None:
                    base = _reserve(basemap, idx, want)
                obj = _load_root(base, chain, basemap)
                try:
                    a = att.attach_xdp(obj.programs[ROOT_NAME].fd, ifname, mode=mode,
                                       use_link=True)
                    notes += a.notes
                    pin = _link_pin(netns, ifname)
                    pin.parent.mkdir(parents=True, exist_ok=True)
                    bpffs.unpin(pin)
                    a.link.pin(pin)
                    root = a.link
                finally:
                    obj.close()
            if want is not None and want != base:
                raise AttachError(f"{ifname} has the dispatcher's slots {base * SLOTS}.., not "
                                  f"{want * SLOTS}.. this pipeline was built for (they changed "
                                  f"while it was built)", err=errno.EBUSY, hint="apply again")
            slot = base * SLOTS + priority
            have = chain.get(slot)
            if have is not None and have != prog.id and (ours or {}).get(have) is not None:
                raise UsageError(f"priority {priority} on {ifname} (xdp) is taken by pipeline "
                                 f"'{ours[have]}'", hint="give this pipeline another priority:")
            chain.update(slot, prog.fd)
            _set_bit(basemap, idx, priority, True)  # after the slot: never a bit without it
            rec = {"ifname": ifname, "ifindex": idx, "hook": "xdp", "method": "dispatch",
                   "mode": att.query_xdp(ifname)["mode"], "link_id": root.id, "notes": notes,
                   "tc_handle": 0, "tc_priority": 0, "priority": priority,
                   "root_pin": str(_link_pin(netns, ifname)), "prog_id": prog.id}
            root.close()
            return rec
        finally:
            chain.close()
            basemap.close()


def _ifindex(rec: dict) -> int | None:
    with contextlib.suppress(EbplaneError):
        return iface.ifindex(rec["ifname"])
    return rec.get("ifindex")


def _slot(netns: str | None, basemap: Map, rec: dict) -> int | None:
    idx = _ifindex(rec)
    entry = _entry(basemap, idx) if idx else None
    return None if entry is None else entry[0] * SLOTS + rec["priority"]


def replace(rec: dict, prog_fd: int, *, netns: str | None) -> None:
    """Swap the member's program in its slot (one atomic map update)."""
    with _lock(netns):
        maps = _maps(netns, create=False)
        if maps is None:
            raise NotFound(f"{rec['ifname']}: the XDP dispatcher of the namespace is gone",
                           hint="re-apply after `ebplane detach` of its pipelines")
        chain, basemap = maps
        try:
            slot = _slot(netns, basemap, rec)
            if slot is None or _root_alive(netns, rec["ifname"]) is None:
                raise NotFound(f"{rec['ifname']}: no dispatcher root is attached")
            chain.update(slot, prog_fd)
        finally:
            chain.close()
            basemap.close()


def kernel_prog(rec: dict, *, netns: str | None) -> int | None:
    """The program in the member's slot, None when the slot is empty or the root is gone."""
    maps = _maps(netns, create=False)
    if maps is None:
        return None
    chain, basemap = maps
    try:
        slot = _slot(netns, basemap, rec)
        root = _root_alive(netns, rec["ifname"])
        if slot is None or root is None:
            return None
        root.close()
        return chain.get(slot)
    finally:
        chain.close()
        basemap.close()


def leave(rec: dict, prog_id: int | None, *, netns: str | None) -> None:
    """Empty the member's slot (if it still holds ``prog_id``); the interface's root goes
    with its last member, the domain with its last root."""
    with _lock(netns):
        maps = _maps(netns, create=False)
        if maps is None:
            return
        chain, basemap = maps
        try:
            slot = _slot(netns, basemap, rec)
            if slot is not None and (prog_id is None or chain.get(slot) == prog_id):
                # the bit first: a packet then tries the slot only while it may still be full
                _set_bit(basemap, _ifindex(rec), rec["priority"], False)
                with contextlib.suppress(KeyError, EbplaneError):
                    chain.delete(slot)
            _collect(netns, chain, basemap)
            empty = not list(basemap.items())
        finally:
            chain.close()
            basemap.close()
        if empty:
            bpffs.unpin(domain_dir(netns))
            with contextlib.suppress(OSError):
                (domain_dir(netns).parent).rmdir()


def _collect(netns: str | None, chain: Map, basemap: Map) -> None:
    """Detach the roots of interfaces with no member left (or gone)."""
    by_base = {v.base: i for i, v in basemap.items()}
    links = domain_dir(netns) / "links"
    names = {}
    for p in (links.iterdir() if links.is_dir() else []):
        with contextlib.suppress(EbplaneError):
            with Link.from_pin(p) as link:
                names[link.ifindex()] = p
    for b, idx in by_base.items():
        if any(chain.get(b * SLOTS + j) is not None for j in range(SLOTS)):
            continue
        pin = names.get(idx)
        if pin is not None:
            with contextlib.suppress(EbplaneError):
                with Link.from_pin(pin) as link:
                    link.detach()
            bpffs.unpin(pin)
        with contextlib.suppress(KeyError, EbplaneError):
            basemap.delete(idx)
    for p in (links.iterdir() if links.is_dir() else []):  # roots whose interface went
        with contextlib.suppress(EbplaneError):
            with Link.from_pin(p) as link:
                dead = link.ifindex() == 0
            if dead:
                bpffs.unpin(p)


def members(ifname: str, *, netns: str | None) -> list[dict]:
    """The members of ``ifname``'s XDP chain in run order: {"priority", "prog_id"}."""
    maps = _maps(netns, create=False)
    if maps is None:
        return []
    chain, basemap = maps
    try:
        slot0 = _slot(netns, basemap, {"ifname": ifname, "priority": 0})
        if slot0 is None:
            return []
        return [{"priority": j, "prog_id": p} for j in range(SLOTS)
                if (p := chain.get(slot0 + j)) is not None]
    finally:
        chain.close()
        basemap.close()


# -- TC: tcx orders the members itself ---------------------------------------------------------

def attach_tcx(prog: Program, ifname: str, hook: str, priority: int,
               others: list[tuple[int, str]]) -> tuple[dict, Link]:
    """Attach ``prog`` at ``hook`` of ``ifname`` with a tcx link placed by priority among
    ``others`` (priority, link pin) of the same interface and hook."""
    direction = hook.split("-", 1)[1]
    idx = iface.ifindex(ifname)
    live = []
    for p, pin in others:
        with contextlib.suppress(EbplaneError):
            link = Link.from_pin(pin)
            if link.ifindex() == idx:
                live.append((p, link))
            else:
                link.close()
    try:
        for p, _ in live:
            if p == priority:
                raise UsageError(f"priority {priority} on {ifname} ({hook}) is taken",
                                 hint="give this pipeline another priority:")
        after = max((x for x in live if x[0] < priority), default=None, key=lambda x: x[0])
        before = min((x for x in live if x[0] > priority), default=None, key=lambda x: x[0])
        try:
            link = Link.create_tcx(prog.fd, idx, ATTACH_TYPES[f"tcx_{direction}"],
                                   before=before[1] if before else None,
                                   after=after[1] if after and not before else None,
                                   description=f"tcx {direction} {ifname}")
        except EbplaneError as e:
            raise AttachError(f"attach tcx {direction} to {ifname} at priority {priority}: "
                              f"{e.message}", err=getattr(e, "errno", 0) or 0,
                              hint="tcx needs kernel >= 6.6") from e
    finally:
        for _, ln in live:
            ln.close()
    rec = {"ifname": ifname, "ifindex": idx, "hook": hook, "method": "tcx", "mode": None,
           "link_id": link.id, "notes": [], "tc_handle": 0, "tc_priority": 0,
           "priority": priority, "prog_id": prog.id}
    return rec, link


def tidy(netns: str | None) -> None:
    """Remove the roots of interfaces without members and an empty domain (after a failed
    apply that made them)."""
    with _lock(netns):
        maps = _maps(netns, create=False)
        if maps is None:
            return
        chain, basemap = maps
        try:
            _collect(netns, chain, basemap)
            empty = not list(basemap.items())
        finally:
            chain.close()
            basemap.close()
        if empty:
            bpffs.unpin(domain_dir(netns))
            with contextlib.suppress(OSError):
                domain_dir(netns).parent.rmdir()


def forget(netns: str) -> None:
    """The domain of a network namespace that is gone (its interfaces and roots with it)."""
    with _lock(netns):
        bpffs.unpin(domain_dir(netns))
        with contextlib.suppress(OSError):
            domain_dir(netns).parent.rmdir()


class Member(att.Attached):
    """An XDP member as its attachment record says (``method: dispatch``, also while only
    planned): its slot in the interface's chain."""

    method = "dispatch"

    def running(self) -> int | None:
        return kernel_prog(self.rec, netns=self.rec.get("netns"))

    def replace(self, prog_fd: int, old_prog_id: int) -> None:
        replace(self.rec, prog_fd, netns=self.rec.get("netns"))

    def detach(self, *, prog_id: int | None = None) -> None:
        leave(self.rec, prog_id, netns=self.rec.get("netns"))


att.ATTACHED_TYPES[Member.method] = Member
