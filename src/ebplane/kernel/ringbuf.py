"""A consumer of BPF ring buffers (BPF_MAP_TYPE_RINGBUF) through libbpf's ring_buffer API."""

from __future__ import annotations

import ctypes
import errno
from typing import Callable

from ebplane.kernel.libbpf import RINGBUF_SAMPLE_FN, check, check_ptr, lib
from ebplane.kernel.maps import Map

# What the sample callback returns to make libbpf stop consuming: libbpf 1.1 stops only on a
# negative value and hands it back from poll/consume, so it must not look like a real errno
# of epoll_wait (EINTR, EBADF...).
_STOP = -errno.ECANCELED


class RingBuffer:
    """Calls ``callback(data: bytes)`` for every record; return a true value to stop early.

    An exception raised by the callback stops consumption and propagates out of
    :meth:`poll` / :meth:`consume`.

    >>> with RingBuffer(obj.maps["events"], on_event) as rb:   # doctest: +SKIP
    ...     rb.poll(100)
    """

    def __init__(self, ring: Map, callback: Callable[[bytes], object]):
        if ring.type_name != "ringbuf":
            raise TypeError(f"map '{ring.name}' is a {ring.type_name}, not a ringbuf")
        self._user_cb = callback
        self._error: BaseException | None = None
        self._count = 0

        def _sample(_ctx, data, size):
            self._count += 1
            try:
                stop = self._user_cb(ctypes.string_at(data, size))
            except BaseException as exc:  # never unwind through C
                self._error = exc
                return _STOP
            return _STOP if stop else 0

        self._cb = RINGBUF_SAMPLE_FN(_sample)  # keep a reference: C holds the pointer
        self._ptr = check_ptr(lib.ring_buffer__new(ring.fd, self._cb, None, None),
                              f"open ring buffer '{ring.name}'")

    def _finish(self, ret: int, what: str) -> int:
        """Re-raise the callback's exception, or turn libbpf's return into a record count."""
        count, self._count = self._count, 0
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if ret not in (_STOP, -errno.EINTR):  # EINTR: Python's signal handler runs next
            check(ret, what)
        return count

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to ``timeout_ms`` for records; returns how many were delivered."""
        return self._finish(lib.ring_buffer__poll(self._ptr, timeout_ms), "poll ring buffer")

    def consume(self) -> int:
        """Deliver what is there without waiting; returns how many records."""
        return self._finish(lib.ring_buffer__consume(self._ptr), "consume ring buffer")

    def close(self) -> None:
        if self._ptr:
            lib.ring_buffer__free(self._ptr)
            self._ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
