"""A consumer of BPF ring buffers (BPF_MAP_TYPE_RINGBUF) through libbpf's ring_buffer API."""

from __future__ import annotations

import ctypes
from typing import Callable

from ebplane.kernel.libbpf import RINGBUF_SAMPLE_FN, check, check_ptr, lib
from ebplane.kernel.maps import Map


class RingBuffer:
    """Calls ``callback(data: bytes)`` for every record; return a true value to stop early.

    >>> with RingBuffer(obj.maps["events"], on_event) as rb:   # doctest: +SKIP
    ...     rb.poll(100)
    """

    def __init__(self, ring: Map, callback: Callable[[bytes], object]):
        if ring.type_name != "ringbuf":
            raise TypeError(f"map '{ring.name}' is a {ring.type_name}, not a ringbuf")
        self._user_cb = callback
        self._error: BaseException | None = None

        def _sample(_ctx, data, size):
            try:
                stop = self._user_cb(ctypes.string_at(data, size))
            except BaseException as exc:  # never unwind through C
                self._error = exc
                return -1
            return 1 if stop else 0

        self._cb = RINGBUF_SAMPLE_FN(_sample)  # keep a reference: C holds the pointer
        self._ptr = check_ptr(lib.ring_buffer__new(ring.fd, self._cb, None, None),
                              f"open ring buffer '{ring.name}'")

    def _reraise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to ``timeout_ms`` for records; returns how many were consumed."""
        n = lib.ring_buffer__poll(self._ptr, timeout_ms)
        self._reraise()
        return check(n, "poll ring buffer") if n != -1 else 0

    def consume(self) -> int:
        """Consume what is there without waiting."""
        n = lib.ring_buffer__consume(self._ptr)
        self._reraise()
        return check(n, "consume ring buffer") if n != -1 else 0

    def close(self) -> None:
        if self._ptr:
            lib.ring_buffer__free(self._ptr)
            self._ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
