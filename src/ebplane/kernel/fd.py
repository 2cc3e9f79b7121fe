"""The one owner of a kernel file descriptor (map, program, link, pin): :class:`FD`.

Every ebplane object that holds a BPF fd (``Map``, ``Program``, ``Link``, and the maps and
programs of a loaded ``BpfObject``) holds it through an :class:`FD`, so there is one set of
close semantics:

- ``close()`` closes once; later calls do nothing, and the number reads as -1 afterwards
  (never a stale number that the process may already have reused for another file);
- ``with FD(n) as fd:`` closes on leaving;
- ``dup()`` gives an independent owner of the same kernel object (close-on-exec);
- ``take()`` hands the number over to someone else (libbpf, another process) and leaves
  this owner closed without closing the number.

An FD is not closed by the garbage collector: closing a link's last fd detaches it, and
dropping an attachment by accident must not take a program off an interface.  Owners that
are done close explicitly (or use ``with``).

An FD converts to ``int`` (``__index__``), so it can be passed wherever a raw fd number is
expected (``os.close``, libbpf calls).
"""

from __future__ import annotations

import os


class FD:
    """Owns one file descriptor number."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int):
        fd = int(fd)
        if fd < 0:
            raise ValueError(f"not a file descriptor: {fd}")
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __int__(self) -> int:
        return self._fd

    __index__ = __int__

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:  # EBADF: someone closed the number behind our back
                pass

    def dup(self) -> "FD":
        """A second, independent owner of the same kernel object."""
        if self._fd < 0:
            raise ValueError("dup of a closed FD")
        return FD(os.dup(self._fd))  # os.dup sets close-on-exec

    def take(self) -> int:
        """Give up ownership: return the number and leave this FD closed (not the number)."""
        if self._fd < 0:
            raise ValueError("take of a closed FD")
        fd, self._fd = self._fd, -1
        return fd

    def __enter__(self) -> "FD":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FD {self._fd}>" if self._fd >= 0 else "<FD closed>"
