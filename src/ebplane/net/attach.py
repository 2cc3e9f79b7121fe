"""Attach programs to interfaces: XDP (bpf_link or netlink, native or generic) and TC
(tcx links, with clsact + cls_bpf direct-action as the fallback).

Every function works on the interfaces of the calling thread's network namespace
(enter another one with ``ebplane.net.netns.enter``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
from dataclasses import dataclass, field
from typing import ClassVar

from ebplane.errors import AttachError, EbplaneError, KernelError, NotFound, kernel_error
from ebplane.kernel import bpffs
from ebplane.kernel.libbpf import (ATTACH_TYPES, XDP_FLAGS_DRV_MODE, XDP_FLAGS_REPLACE,
                                   XDP_FLAGS_SKB_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST, LinkCreateOpts,
                                   TcHook, TcOpts, XdpAttachOpts, XdpQueryOpts, lib)
from ebplane.kernel.links import Link
from ebplane.kernel.programs import Program
from ebplane.net.iface import ifindex

XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
XDP_ATTACH_MODE_NAMES = {0: "none", 1: "native", 2: "generic", 3: "offload", 4: "multi"}
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TC_F_REPLACE = 1
TC_DIRECTIONS = {"ingress": BPF_TC_INGRESS, "egress": BPF_TC_EGRESS}
TCX_MAX_PROGS = 64  # the kernel's limit of programs per tcx hook (BPF_MPROG_MAX)


@dataclass
class Attachment:
    """What attaching produced: a link (keep it or pin it) or a netlink/tc attachment."""
    ifname: str
    ifindex: int
    hook: str            # xdp | tc-ingress | tc-egress
    method: str          # link | netlink | tcx | clsact
    mode: str | None     # xdp: native | generic
    link: Link | None = None
    notes: list[str] = field(default_factory=list)
    tc_handle: int = 0
    tc_priority: int = 0

    def to_dict(self) -> dict:
        return {"ifname": self.ifname, "ifindex": self.ifindex, "hook": self.hook,
                "method": self.method, "mode": self.mode,
                "link_id": self.link.id if self.link else None, "notes": self.notes,
                "tc_handle": self.tc_handle, "tc_priority": self.tc_priority}


def _attach_error(what: str, err: int, hint: str | None = None) -> KernelError:
    """The error for a refused attach: PermissionDenied / NotSupported where the errno says
    so (their exit codes differ), AttachError for everything else."""
    e = kernel_error(what, err, hint=hint)
    return AttachError(e.message, err=e.errno, hint=hint) if type(e) is KernelError else e


# -- XDP ----------------------------------------------------------------------------

def _xdp_mode_order(mode: str) -> list[str]:
    if mode == "auto":
        return ["native", "generic"]
    if mode not in XDP_MODES:
        raise AttachError(f"unknown XDP mode '{mode}'", hint="use auto, native or generic")
    return [mode]


def attach_xdp(prog_fd: int, ifname: str, *, mode: str = "auto", use_link: bool = True) -> Attachment:
    """Attach at XDP.  ``mode`` auto tries native first and falls back to generic, saying so
    in ``notes``.  With ``use_link`` the attachment is a bpf_link (detached when closed unless
    pinned); otherwise it is a netlink attachment that stays until :func:`detach_xdp`."""
    idx = ifindex(ifname)
    notes: list[str] = []
    last_err = 0
    for m in _xdp_mode_order(mode):
        if use_link:
            opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=XDP_MODES[m])
            fd = lib.bpf_link_create(prog_fd, idx, ATTACH_TYPES["xdp"], ctypes.byref(opts))
            if fd >= 0:
                return Attachment(ifname, idx, "xdp", "link", m, Link(fd, description=f"xdp {m} {ifname}"),
                                  notes)
            last_err = -fd
        else:
            opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts))
            ret = lib.bpf_xdp_attach(idx, prog_fd, XDP_MODES[m] | XDP_FLAGS_UPDATE_IF_NOEXIST,
                                     ctypes.byref(opts))
            if ret >= 0:
                return Attachment(ifname, idx, "xdp", "netlink", m, None, notes)
            last_err = -ret
        if last_err == errno.EBUSY or last_err == errno.EEXIST:
            break
        notes.append(f"native XDP refused on {ifname} ({errno.errorcode.get(last_err, last_err)}); "
                     f"fell back to generic (skb) mode, which is slower")
    hint = None
    if last_err in (errno.EBUSY, errno.EEXIST):
        q = query_xdp(ifname)
        hint = (f"{ifname} already has an XDP program (id {q['prog_id']}, "
                f"name '{_prog_name(q['prog_id'])}', {q['mode']}), left alone; "
                f"detach it first: `ip link set {ifname} xdp off` if attached by netlink, or "
                f"close (or unpin) the bpf_link that holds it")
    elif last_err == errno.EOPNOTSUPP:
        hint = "the driver has no native XDP: use mode generic, or hook tc-ingress"
    raise _attach_error(f"attach XDP ({mode}) to {ifname}", last_err, hint)


def _prog_name(prog_id: int | None) -> str:
    """The kernel's name of a program (to tell the user whose program is in the way)."""
    if not prog_id:
        return "?"
    try:
        with Program.from_id(prog_id) as p:
            return p.name
    except EbplaneError:  # gone meanwhile, or not ours to open
        return "?"


def replace_xdp(ifname: str, new_prog_fd: int, old_prog_fd: int, mode: str) -> None:
    """Atomically swap a netlink-attached XDP program (fails if another replaced it)."""
    idx = ifindex(ifname)
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd)
    ret = lib.bpf_xdp_attach(idx, new_prog_fd, XDP_MODES[mode] | XDP_FLAGS_REPLACE,
                             ctypes.byref(opts))
    if ret < 0:
        raise _attach_error(f"replace XDP program on {ifname}", -ret,
                            "another program replaced it meanwhile" if -ret == errno.EEXIST
                            else None)


def detach_xdp(ifname: str, mode: str | None = None) -> None:
    idx = ifindex(ifname)
    flags = XDP_MODES.get(mode or "", 0)
    ret = lib.bpf_xdp_detach(idx, flags, None)
    if ret < 0 and -ret != errno.ENOENT:
        raise kernel_error(f"detach XDP from {ifname}", -ret)


def query_xdp(ifname: str) -> dict:
    """What XDP program is attached, and how."""
    idx = ifindex(ifname)
    opts = XdpQueryOpts(sz=ctypes.sizeof(XdpQueryOpts))
    ret = lib.bpf_xdp_query(idx, 0, ctypes.byref(opts))
    if ret < 0:
        raise kernel_error(f"query XDP on {ifname}", -ret)
    return {"prog_id": opts.prog_id or None, "mode": XDP_ATTACH_MODE_NAMES.get(opts.attach_mode, "?"),
            "drv_prog_id": opts.drv_prog_id or None, "skb_prog_id": opts.skb_prog_id or None,
            "hw_prog_id": opts.hw_prog_id or None}


# -- TC -----------------------------------------------------------------------------

def attach_tc(prog_fd: int, ifname: str, direction: str, *, method: str = "auto",
              priority: int = 1, handle: int = 1) -> Attachment:
    """Attach a sched_cls program at TC ingress/egress.  ``method`` auto tries a tcx link
    and falls back to clsact + cls_bpf direct-action, saying so in ``notes``."""
    if direction not in TC_DIRECTIONS:
        raise AttachError(f"unknown TC direction '{direction}'", hint="use ingress or egress")
    idx = ifindex(ifname)
    hook = f"tc-{direction}"
    notes: list[str] = []
    if method in ("auto", "tcx"):
        fd = lib.bpf_link_create(prog_fd, idx, ATTACH_TYPES[f"tcx_{direction}"], None)
        if fd >= 0:
            return Attachment(ifname, idx, hook, "tcx", None, Link(fd, description=f"tcx {direction} {ifname}"))
        if method == "tcx":
            raise _attach_error(f"attach tcx {direction} to {ifname}", -fd,
                                "tcx needs kernel >= 6.6; use method clsact")
        notes.append(f"tcx refused on {ifname} ({errno.errorcode.get(-fd, -fd)}); "
                     f"fell back to clsact + cls_bpf direct-action")
    return _attach_clsact(prog_fd, ifname, idx, direction, priority, handle, notes, replace=False)


def _tc_hook(idx: int, direction: str) -> TcHook:
    return TcHook(sz=ctypes.sizeof(TcHook), ifindex=idx, attach_point=TC_DIRECTIONS[direction])


def _attach_clsact(prog_fd, ifname, idx, direction, priority, handle, notes, *, replace) -> Attachment:
    hook = _tc_hook(idx, direction)
    ret = lib.bpf_tc_hook_create(ctypes.byref(hook))
    if ret < 0 and -ret != errno.EEXIST:
        raise kernel_error(f"create clsact qdisc on {ifname}", -ret)
    created_qdisc = ret == 0
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd, handle=handle, priority=priority,
                  flags=BPF_TC_F_REPLACE if replace else 0)
    ret = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if ret < 0:
        if created_qdisc:  # leave the device as it was: drop the qdisc made just now
            whole = TcHook(sz=ctypes.sizeof(TcHook), ifindex=idx,
                           attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
            lib.bpf_tc_hook_destroy(ctypes.byref(whole))
        hint = (f"a filter with priority {priority} handle {handle} exists on {ifname} {direction}; "
                f"pick another priority or detach it" if -ret == errno.EEXIST else None)
        raise _attach_error(f"attach cls_bpf {direction} to {ifname}", -ret, hint)
    return Attachment(ifname, idx, f"tc-{direction}", "clsact", None, None, notes,
                      tc_handle=opts.handle, tc_priority=opts.priority)


def replace_clsact(prog_fd: int, ifname: str, direction: str, priority: int, handle: int) -> None:
    """Atomically swap the program of an existing cls_bpf filter."""
    _attach_clsact(prog_fd, ifname, ifindex(ifname), direction, priority, handle, [], replace=True)


def detach_clsact(ifname: str, direction: str, priority: int, handle: int) -> None:
    idx = ifindex(ifname)
    hook = _tc_hook(idx, direction)
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), handle=handle, priority=priority)
    ret = lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if ret < 0 and -ret != errno.ENOENT:
        raise kernel_error(f"detach cls_bpf {direction} from {ifname}", -ret)


def query_tcx(ifname: str, direction: str) -> list[int]:
    """Ids of the programs tcx links run at ingress/egress of ``ifname``, in run order
    (neither tc nor bpftool 7.1 show them)."""
    if direction not in TC_DIRECTIONS:
        raise AttachError(f"unknown TC direction '{direction}'", hint="use ingress or egress")
    idx = ifindex(ifname)
    ids = (ctypes.c_uint32 * TCX_MAX_PROGS)()
    count = ctypes.c_uint32(TCX_MAX_PROGS)
    ret = lib.bpf_prog_query(idx, ATTACH_TYPES[f"tcx_{direction}"], 0, None, ids,
                             ctypes.byref(count))
    if ret < 0:
        raise kernel_error(f"query tcx {direction} on {ifname}", -ret)
    return list(ids[:count.value])


def query_clsact(ifname: str, direction: str, priority: int = 1, handle: int = 1) -> int | None:
    """Program id of the cls_bpf filter at (priority, handle), or None."""
    idx = ifindex(ifname)
    hook = _tc_hook(idx, direction)
    opts = TcOpts(sz=ctypes.sizeof(TcOpts), handle=handle, priority=priority)
    ret = lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if ret < 0:
        return None
    return opts.prog_id


# -- attachments as records ----------------------------------------------------------------
# A state file keeps each attachment as a dict (Attachment.to_dict() plus "prog_id" and, for
# links, "link_pin"); these types say what each kind of record means to the kernel, so the
# control plane never dispatches on the "method" string itself.

class Attached:
    """An attachment as recorded: which program runs for it, replace, detach."""

    method: ClassVar[str] = ""

    def __init__(self, rec: dict):
        self.rec = rec

    @property
    def ifname(self) -> str:
        return self.rec["ifname"]

    @property
    def direction(self) -> str:
        return self.rec["hook"].split("-", 1)[1]

    def running(self) -> int | None:
        """Id of the program the kernel runs for this attachment (None: nothing runs)."""
        raise NotImplementedError

    def replace(self, prog_fd: int, old_prog_id: int) -> None:
        """Swap the program atomically (``old_prog_id``: the one attached now)."""
        raise NotImplementedError

    def detach(self, *, prog_id: int | None = None) -> None:
        """Remove the attachment (``prog_id``: only if that program still runs there, for
        attachments that a foreign program could have replaced)."""
        raise NotImplementedError

    def to_record(self) -> dict:
        return dict(self.rec)


class PinnedLink(Attached):
    """A bpf_link pinned at ``rec["link_pin"]`` (XDP link, tcx)."""

    def _open(self) -> Link | None:
        if not self.rec.get("link_pin"):
            return None
        try:
            return Link.from_pin(self.rec["link_pin"])
        except NotFound:
            return None

    def running(self) -> int | None:
        link = self._open()
        if link is None:
            return None
        with link:
            return link.prog_id() if link.ifindex() else None

    def replace(self, prog_fd: int, old_prog_id: int) -> None:
        link = Link.from_pin(self.rec["link_pin"])
        try:
            link.update(prog_fd)
        finally:
            link.close()

    def detach(self, *, prog_id: int | None = None) -> None:
        link = self._open()
        if link is not None:
            with contextlib.suppress(EbplaneError):
                link.detach()
            link.close()
        if self.rec.get("link_pin"):
            bpffs.unpin(self.rec["link_pin"])


class XdpLink(PinnedLink):
    method = "link"


class TcxLink(PinnedLink):
    method = "tcx"


class XdpNetlink(Attached):
    """An XDP program attached by netlink (no link: it stays until detached)."""

    method = "netlink"

    def running(self) -> int | None:
        return query_xdp(self.ifname)["prog_id"]

    def replace(self, prog_fd: int, old_prog_id: int) -> None:
        old = Program.from_id(old_prog_id)
        try:
            replace_xdp(self.ifname, prog_fd, old.fd, self.rec["mode"])
        finally:
            old.close()

    def detach(self, *, prog_id: int | None = None) -> None:
        with contextlib.suppress(EbplaneError):
            if prog_id is None or query_xdp(self.ifname)["prog_id"] == prog_id:
                detach_xdp(self.ifname, self.rec["mode"])


class ClsactFilter(Attached):
    """A cls_bpf direct-action filter on the clsact qdisc, at (priority, handle)."""

    method = "clsact"

    def _at(self) -> tuple[int, int]:
        return self.rec.get("tc_priority") or 1, self.rec.get("tc_handle") or 1

    def running(self) -> int | None:
        return query_clsact(self.ifname, self.direction, *self._at())

    def replace(self, prog_fd: int, old_prog_id: int) -> None:
        replace_clsact(prog_fd, self.ifname, self.direction, *self._at())

    def detach(self, *, prog_id: int | None = None) -> None:
        with contextlib.suppress(EbplaneError):
            detach_clsact(self.ifname, self.direction, *self._at())


class Planned(Attached):
    """An attachment an apply recorded before making it (its intent): a link pinned at
    ``link_pin`` if it got that far, or at a TC hook a clsact filter (tcx refused)."""

    def running(self) -> int | None:
        if self.rec.get("link_pin"):
            link = PinnedLink(self.rec)._open()
            if link is not None:
                with link:
                    return link.prog_id() if link.ifindex() else None
        if self.rec["hook"].startswith("tc-"):
            return ClsactFilter(self.rec).running()
        return None

    def replace(self, prog_fd: int, old_prog_id: int) -> None:
        PinnedLink(self.rec).replace(prog_fd, old_prog_id)

    def detach(self, *, prog_id: int | None = None) -> None:
        if self.rec.get("link_pin"):
            PinnedLink(self.rec).detach(prog_id=prog_id)


ATTACHED_TYPES: dict[str, type[Attached]] = {
    t.method: t for t in (XdpLink, TcxLink, XdpNetlink, ClsactFilter)}


def attached(rec: dict) -> Attached:
    """The typed view of an attachment record."""
    kind = ATTACHED_TYPES.get(rec.get("method", ""))
    if rec.get("planned") and "method" not in rec:  # one that names its method knows it
        return Planned(rec)
    if kind is None:
        raise EbplaneError(f"attachment record of {rec.get('ifname')} ({rec.get('hook')}) has "
                           f"an unknown method {rec.get('method')!r}",
                           hint="written by another ebplane version? detach the pipeline "
                                "with that version, or remove its pins and state")
    return kind(rec)
