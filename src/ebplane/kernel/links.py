"""bpf_link: an attachment that detaches when its last fd closes (or its pin goes)."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

from ebplane.errors import AttachError, kernel_error
from ebplane.kernel import bpffs
from ebplane.kernel.fd import FD
from ebplane.kernel.libbpf import LinkInfo, LinkUpdateOpts, lib, obj_info

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
    def from_pin(cls, path: str | Path) -> "Link":
        return cls(bpffs.get_pinned(path), description=str(path))

    @property
    def fd(self) -> int:
        """The fd number (-1 once closed)."""
        return self._fd._fd

    def prog_id(self) -> int:
        return obj_info(self.fd, LinkInfo).prog_id

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
