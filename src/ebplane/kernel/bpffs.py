"""bpffs: make sure it is mounted, pin and unpin objects, and ebplane's pin root.

Pins of ebplane live under ``$EBPLANE_BPFFS_ROOT`` (default ``/sys/fs/bpf/ebplane``); the
test suite points it elsewhere so it never meets a user's pipelines.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
from pathlib import Path

from ebplane.errors import BpffsError, NotFound, PermissionDenied, kernel_error
from ebplane.kernel.fd import FD
from ebplane.kernel.libbpf import StatFs, lib, libc

BPFFS = Path("/sys/fs/bpf")
BPF_FS_MAGIC = 0xCAFE4A11


def root() -> Path:
    return Path(os.environ.get("EBPLANE_BPFFS_ROOT", str(BPFFS / "ebplane")))


def _is_bpffs(path: Path) -> bool:
    st = StatFs()
    if libc.statfs(str(path).encode(), ctypes.byref(st)) != 0:
        return False
    return (st.f_type & 0xFFFFFFFF) == BPF_FS_MAGIC


def ensure_mounted() -> Path:
    """Mount bpffs on /sys/fs/bpf when it is not; return the pin root (created)."""
    if not _is_bpffs(BPFFS):
        if os.geteuid() != 0:
            raise PermissionDenied("bpffs is not mounted on /sys/fs/bpf and mounting it needs root",
                                   hint="run as root, or: mount -t bpf bpf /sys/fs/bpf")
        BPFFS.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            raise BpffsError(f"could not mount bpffs on {BPFFS}: {res.stderr.strip()}",
                             hint="mount it by hand: mount -t bpf bpf /sys/fs/bpf")
    r = root()
    r.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = r.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        # pins are root's: an earlier version left the root 0755, which let every user
        # list the pipelines and their maps
        os.chmod(r, 0o700)
    if not _is_bpffs(r):
        raise BpffsError(f"{r} is not on a bpffs mount",
                         hint="point EBPLANE_BPFFS_ROOT below a bpffs mount such as /sys/fs/bpf")
    return r


def pin_fd(fd: int | FD, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ret = lib.bpf_obj_pin(int(fd), str(path).encode())
    if ret < 0:
        raise kernel_error(f"pin to {path}", -ret,
                           hint="the path must be on bpffs and not exist yet")
    return path


def get_pinned(path: str | Path) -> FD:
    """Open a pinned object; returns a new fd (the caller owns it)."""
    fd = lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        if -fd == errno.ENOENT:
            raise NotFound(f"nothing is pinned at {path}")
        if -fd == errno.EACCES and os.geteuid() != 0:  # pins are root's: privileges
            raise PermissionDenied(f"open pin {path}: {os.strerror(errno.EACCES)} (EACCES)",
                                   err=errno.EACCES, hint="run as root: ebplane's pins are "
                                   "root's only")
        raise kernel_error(f"open pin {path}", -fd)
    return FD(fd)


def unpin(path: str | Path) -> None:
    """Remove a pin or a directory of pins (idempotent)."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
