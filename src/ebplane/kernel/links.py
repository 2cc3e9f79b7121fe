"""bpf_link: an attachment that detaches when its last fd closes (or its pin goes)."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

from ebplane.errors import AttachError, kernel_error
from ebplane.kernel import bpffs
from ebplane.kernel.fd import FD
from ebplane.kernel.libbpf import (BPF_F_AFTER, BPF_F_BEFORE, BPF_F_LINK, BPF_LINK_CREATE,
                                   LinkInfo, LinkUpdateOpts, TcxLinkCreateAttr, bpf_syscall, lib,
                                   obj_info)

LINK_TYPES = {1: "raw_tracepoint", 2: "tracing", 3: "cgroup", 4: "iter", 5: "netns", 6: "xdp",
              7: "perf_event", 8: "kprobe_multi", 9: "struct_ops", 10: "netfilter", 11: "tcx"}


class Link:
    """A bpf_link, owning its fd (an :class:`FD`, or an int it takes over).
    ``close()`` detaches unless the link is pinned (or another fd of it is open)."""

    def __init__(self, fd: int | FD, *, description: str = ""):
        self._fd = fd if isinstance(fd, FD) else FD(fd)
        self.description = description
        info = obj_info(self.fd, LinkInfo)
        self.id = info.id
        self.type = LINK_TYPES.get(info.type, str(info.type))

    @classmethod
    def create_tcx(cls, prog_fd: int, ifindex: int, attach_type: int, *,
                   before: "Link | None" = None, after: "Link | None" = None,
                   description: str = "") -> "Link":
        """A tcx link placed before or after another tcx link of the same hook (bpf_mprog);
        neither: appended after the programs already there."""
        attr = TcxLinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex,
                                 attach_type=attach_type)
        if before is not None:
            attr.flags, attr.relative_fd = BPF_F_BEFORE | BPF_F_LINK, before.fd
        elif after is not None:
            attr.flags, attr.relative_fd = BPF_F_AFTER | BPF_F_LINK, after.fd
        fd = bpf_syscall(BPF_LINK_CREATE, attr)
        if fd < 0:
            where = (f"before link {before.id}" if before is not None else
                     f"after link {after.id}" if after is not None else "")
            raise kernel_error(f"create tcx link on ifindex {ifindex} {where}".strip(), -fd)
        return cls(fd, description=description)

    @classmethod
    def from_pin(cls, path: str | Path) -> "Link":
        return cls(bpffs.get_pinned(path), description=str(path))

    @property
    def fd(self) -> int:
        """The fd number (-1 once closed)."""
        return self._fd._fd

    def prog_id(self) -> int:
        return obj_info(self.fd, LinkInfo).prog_id

    def ifindex(self) -> int:
        """The interface of an XDP or tcx link; 0 once the link is detached (defunct)."""
        return obj_info(self.fd, LinkInfo).u[0] & 0xFFFFFFFF

    def update(self, new_prog_fd: int, *, old_prog_fd: int | None = None) -> None:
        """Replace the program atomically (no packet sees no program)."""
        opts = LinkUpdateOpts(sz=ctypes.sizeof(LinkUpdateOpts))
        if old_prog_fd is not None:
            opts.flags = 1 << 2  # BPF_F_REPLACE
            opts.old_prog_fd = old_prog_fd
        ret = lib.bpf_link_update(self.fd, new_prog_fd, ctypes.byref(opts))
        if ret < 0:
            what = f"replace program of link {self.id} ({self.description})"
            if old_prog_fd is not None and -ret == errno.EPERM:
                # the kernel's answer when the link no longer runs old_prog_fd: not privileges
                raise AttachError(f"{what}: the link no longer runs the expected program", err=-ret,
                                  hint="someone replaced it meanwhile; read prog_id() and retry")
            raise kernel_error(what, -ret)

    def pin(self, path: str | Path) -> Path:
        return bpffs.pin_fd(self.fd, path)

    def detach(self) -> None:
        """Detach now, even if pinned elsewhere (the pin then holds a defunct link)."""
        ret = lib.bpf_link_detach(self.fd)
        if ret < 0:
            raise kernel_error(f"detach link {self.id} ({self.description})", -ret)

    def close(self) -> None:
        self._fd.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<Link {self.type} id={self.id} {self.description}>"
