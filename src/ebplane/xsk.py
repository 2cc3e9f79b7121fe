"""AF_XDP sockets from Python: receive and send frames in batches over the mmap'ed rings.

An xsk stage of a pipeline redirects frames to the socket registered for its rx queue (an
XSKMAP).  :class:`XskSocket` is that socket: it registers a UMEM (one anonymous mapping cut
into frames), sizes and maps the four rings, binds to ``(interface, queue)`` in copy or
zero-copy mode, and registers itself in the pipeline's XSKMAP::

    with XskSocket("eth0", netns="ebp-lab-dut") as xs:
        xs.attach("mypipe")                  # the XSKMAP of the pipeline's xsk stage
        for frame in xs.recv(timeout=1.0):   # list of bytes
            ...
        xs.send([reply])

The hot path is vectorised with numpy: :meth:`XskSocket.recv_batch` takes every ready RX
descriptor in one slice and :meth:`XskSocket.release` hands their frames back to the fill
ring in one slice, so the per-frame cost stays in C.

Rings are single-producer / single-consumer between this process and the kernel; the
index stores below are ordered after the descriptor stores by x86-64's TSO (CPython and
numpy store in program order), which is what the kernel's acquire loads need.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import select
import socket
import struct
from dataclasses import dataclass

import numpy as np

from ebplane.errors import NotFound, UsageError, kernel_error
from ebplane.kernel.codec import U32
from ebplane.kernel.libbpf import libc
from ebplane.kernel.maps import Map
from ebplane.net import iface
from ebplane.net import netns as _netns

AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_TX_RING, XDP_UMEM_REG = 1, 2, 3, 4
XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_STATISTICS = 5, 6, 7
XDP_COPY, XDP_ZEROCOPY = 1 << 1, 1 << 2
PGOFF_RX, PGOFF_TX = 0, 0x80000000
PGOFF_FILL, PGOFF_COMPLETION = 0x100000000, 0x180000000
MODES = ("auto", "copy", "zerocopy")

DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("options", "<u4")])  # struct xdp_desc
_UMEM_REG = struct.Struct("=QQIIII")      # addr, len, chunk_size, headroom, flags, tx_md_len
_SOCKADDR = struct.Struct("=HHIII")       # family, flags, ifindex, queue_id, shared_umem_fd
_OFFSETS = struct.Struct("=16Q")          # rx, tx, fill, completion: producer consumer desc flags
_STATS_FIELDS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                 "rx_fill_ring_empty_descs", "tx_ring_empty_descs")

MSG_DONTWAIT = 0x40


def _power_of_two(n: int, what: str) -> int:
    if n < 1 or n & (n - 1):
        raise UsageError(f"{what} must be a power of two, got {n}", hint="e.g. 2048")
    return n


class _Ring:
    """One mmap'ed ring: producer and consumer indices (free-running u32) and descriptors.

    The index this process owns is cached as a Python int and only stored; the other side's
    is loaded through ctypes (cheaper than a numpy scalar on the per-batch path).
    """

    def __init__(self, mm: mmap.mmap, offs: tuple[int, int, int, int], size: int, dtype):
        prod, cons, desc, _flags = offs
        self.mm = mm
        self.producer = ctypes.c_uint32.from_buffer(mm, prod)
        self.consumer = ctypes.c_uint32.from_buffer(mm, cons)
        self.desc = np.frombuffer(mm, dtype, size, desc)
        self.size, self.mask = size, size - 1

    def close(self) -> None:
        del self.producer, self.consumer, self.desc  # views pin the mapping: drop them first
        self.mm.close()


class _Consumer(_Ring):
    """A ring the kernel fills (RX, completion): :meth:`take` copies out what is ready."""

    def __init__(self, *args):
        super().__init__(*args)
        self.cons = self.consumer.value

    def ready(self) -> int:
        return (self.producer.value - self.cons) & 0xFFFFFFFF

    def take(self, limit: int) -> np.ndarray:
        n = min(self.ready(), limit)
        start = self.cons & self.mask
        if start + n <= self.size:
            out = self.desc[start:start + n].copy()
        else:
            out = np.concatenate((self.desc[start:], self.desc[:start + n - self.size]))
        self.cons = (self.cons + n) & 0xFFFFFFFF
        self.consumer.value = self.cons
        return out


class _Producer(_Ring):
    """A ring this process fills (fill, TX): :meth:`put` adds as many entries as fit."""

    def __init__(self, *args):
        super().__init__(*args)
        self.prod = self.producer.value

    def free(self) -> int:
        return self.size - ((self.prod - self.consumer.value) & 0xFFFFFFFF)

    def put(self, items: np.ndarray) -> int:
        n = min(len(items), self.free())
        if n == 0:
            return 0
        start = self.prod & self.mask
        first = min(n, self.size - start)
        self.desc[start:start + first] = items[:first]
        if first < n:
            self.desc[:n - first] = items[first:n]
        self.prod = (self.prod + n) & 0xFFFFFFFF
        self.producer.value = self.prod
        return n


@dataclass
class RxBatch:
    """Frames taken from the RX ring: ``addrs`` / ``lens`` index the UMEM.  Their frames
    belong to the caller until passed to :meth:`XskSocket.release`."""

    addrs: np.ndarray
    lens: np.ndarray

    def __len__(self) -> int:
        return len(self.addrs)


class XskSocket:
    """An AF_XDP socket bound to rx queue ``queue`` of ``ifname`` (in namespace ``netns``).

    The UMEM has ``frames`` frames of ``frame_size`` bytes: half are lent to the kernel for
    receiving (fill ring), half are kept for sending.  ``mode``: ``copy``, ``zerocopy``, or
    ``auto`` (zero-copy where the driver offers it; veth does not).
    """

    def __init__(self, ifname: str, queue: int = 0, *, netns: str | None = None,
                 frames: int = 4096, frame_size: int = 2048, ring_size: int = 2048,
                 mode: str = "auto"):
        if mode not in MODES:
            raise UsageError(f"unknown AF_XDP mode {mode!r}", hint=f"use one of {MODES}")
        self.ifname, self.queue, self.netns = ifname, queue, netns
        self.frame_size = _power_of_two(frame_size, "frame_size")
        self.ring_size = _power_of_two(ring_size, "ring_size")
        self.nframes = frames
        self._rings: list[_Ring] = []
        self._umem: mmap.mmap | None = None
        self.sock: socket.socket | None = None
        try:
            with _netns.enter(netns) if netns else contextlib.nullcontext():
                self.ifindex = iface.ifindex(ifname)
                try:
                    self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
                except OSError as e:
                    raise kernel_error("create an AF_XDP socket", e.errno,
                                       hint="the kernel needs CONFIG_XDP_SOCKETS") from None
            self._register_umem()
            self._map_rings()
            self.mode = self._bind(mode)
            self._tx_free = list(range(frames // 2, frames))
            fill = np.arange(frames // 2, dtype=np.uint64) * frame_size
            self.fill.put(fill[:self.ring_size])
            self._spare = fill[self.ring_size:]  # rx frames that did not fit the fill ring
        except BaseException:
            self.close()
            raise

    # -- setup --------------------------------------------------------------------------
    def _setsockopt(self, opt: int, value: bytes, what: str) -> None:
        try:
            self.sock.setsockopt(SOL_XDP, opt, value)
        except OSError as e:
            raise kernel_error(f"AF_XDP {what}", e.errno) from None

    def _register_umem(self) -> None:
        size = self.nframes * self.frame_size
        self._umem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.umem = np.frombuffer(self._umem, np.uint8)
        addr = self.umem.ctypes.data
        self._setsockopt(XDP_UMEM_REG, _UMEM_REG.pack(addr, size, self.frame_size, 0, 0, 0),
                         f"register a UMEM of {size} bytes")
        for opt, what in ((XDP_UMEM_FILL_RING, "fill ring"),
                          (XDP_UMEM_COMPLETION_RING, "completion ring"),
                          (XDP_RX_RING, "RX ring"), (XDP_TX_RING, "TX ring")):
            self._setsockopt(opt, struct.pack("I", self.ring_size), f"size the {what}")

    def _map_rings(self) -> None:
        offs = _OFFSETS.unpack(self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, _OFFSETS.size))
        rx, tx, fr, cr = (offs[i:i + 4] for i in range(0, 16, 4))

        def ring(cls, o, pgoff, dtype):
            length = o[2] + self.ring_size * np.dtype(dtype).itemsize
            try:
                mm = mmap.mmap(self.sock.fileno(), length, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
            except OSError as e:
                raise kernel_error("map an AF_XDP ring", e.errno) from None
            r = cls(mm, o, self.ring_size, dtype)
            self._rings.append(r)
            return r
        self.rx = ring(_Consumer, rx, PGOFF_RX, DESC)
        self.tx = ring(_Producer, tx, PGOFF_TX, DESC)
        self.fill = ring(_Producer, fr, PGOFF_FILL, np.uint64)
        self.completion = ring(_Consumer, cr, PGOFF_COMPLETION, np.uint64)

    def _bind(self, mode: str) -> str:
        tries = {"auto": ("zerocopy", "copy"), "copy": ("copy",), "zerocopy": ("zerocopy",)}[mode]
        err = 0
        for m in tries:
            addr = _SOCKADDR.pack(AF_XDP, XDP_ZEROCOPY if m == "zerocopy" else XDP_COPY,
                                  self.ifindex, self.queue, 0)
            if libc.bind(self.sock.fileno(), addr, len(addr)) == 0:
                return m
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                break
        hint = None
        if err == errno.EINVAL:
            hint = f"does {self.ifname} have rx queue {self.queue}? (ethtool -l {self.ifname})"
        elif err in (errno.EOPNOTSUPP, errno.ENOTSUP):
            hint = "the driver has no zero-copy AF_XDP: use mode copy (or auto)"
        elif err == errno.EBUSY:
            hint = f"another AF_XDP socket is bound to {self.ifname} queue {self.queue}"
        raise kernel_error(f"bind AF_XDP socket to {self.ifname} queue {self.queue} ({mode})",
                           err, hint=hint)

    # -- registration in a pipeline's XSKMAP ---------------------------------------------
    def register(self, xskmap: Map) -> None:
        """Put this socket into ``xskmap`` at its queue (frames of that queue come here)."""
        xskmap.with_codecs(U32, U32).update(self.queue, self.sock.fileno())

    def attach(self, pipeline: str, stage: str | None = None) -> None:
        """Register in the XSKMAP of the xsk stage ``stage`` of the applied ``pipeline``."""
        # the runtime layer: only when asked
        from ebplane.runtime.pipeline import manifest_of
        from ebplane.runtime.state import PipelineState, pin_dir
        maps = pin_dir(pipeline) / "maps"
        state = PipelineState.load(pipeline)
        socks = manifest_of(state).maps_in_role("socks") if state is not None else []
        found = sorted(m["cname"] for m in socks if stage is None or m["stage"] == stage)
        if len(found) != 1:
            raise NotFound(f"pipeline '{pipeline}' has {'no' if not found else 'several'} "
                           f"xsk stage{'' if stage is None else ' ' + repr(stage)}",
                           hint="apply a pipeline with an xsk stage first"
                           if not found else "name the stage: attach(pipeline, stage=...)")
        with Map.from_pin(maps / found[0]) as m:
            self.register(m)

    # -- receive ------------------------------------------------------------------------
    def wait(self, timeout: float | None) -> bool:
        """Wait until the RX ring has frames (at most ``timeout`` seconds)."""
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLIN)
        return bool(p.poll(None if timeout is None else int(timeout * 1000)))

    def recv_batch(self, limit: int = 1 << 16, *, timeout: float | None = 0.0) -> RxBatch:
        """Take up to ``limit`` ready frames off the RX ring (waiting up to ``timeout``
        seconds when none is ready; None: forever).  Give them back with :meth:`release`."""
        if not self.rx.ready() and timeout != 0.0:
            self.wait(timeout)
        got = self.rx.take(limit)
        return RxBatch(got["addr"], got["len"])

    def release(self, batch: RxBatch | np.ndarray) -> None:
        """Lend the frames of ``batch`` back to the kernel for receiving."""
        addrs = batch.addrs if isinstance(batch, RxBatch) else batch
        if not len(addrs) and not len(self._spare):
            return
        # (an address inside a frame is fine: the kernel masks fill addresses to the chunk)
        if len(self._spare):
            addrs = np.concatenate((self._spare, addrs))
        done = self.fill.put(addrs)
        self._spare = addrs[done:]

    def frame(self, addr: int, length: int) -> bytes:
        return self.umem[addr:addr + length].tobytes()

    def recv(self, limit: int = 1 << 16, *, timeout: float | None = 0.0) -> list[bytes]:
        """Up to ``limit`` frames as bytes (copied out; their UMEM frames are released)."""
        b = self.recv_batch(limit, timeout=timeout)
        frames = [self.frame(int(a), int(n)) for a, n in zip(b.addrs, b.lens)]
        self.release(b)
        return frames

    # -- send ---------------------------------------------------------------------------
    def _reclaim(self) -> None:
        done = self.completion.take(self.ring_size)
        if len(done):
            self._tx_free.extend(int(a) // self.frame_size for a in done)

    def send(self, frames: list[bytes]) -> int:
        """Queue ``frames`` on the TX ring and kick the kernel; returns how many were queued
        (fewer when TX frames or ring slots run out: retry the rest)."""
        self._reclaim()
        n = min(len(frames), len(self._tx_free), self.tx.free())
        if n == 0:
            return 0
        descs = np.zeros(n, DESC)
        for i, fr in enumerate(frames[:n]):
            if len(fr) > self.frame_size:
                raise UsageError(f"frame of {len(fr)} bytes exceeds the UMEM frame size "
                                 f"{self.frame_size}", hint="raise frame_size")
            addr = self._tx_free.pop() * self.frame_size
            self.umem[addr:addr + len(fr)] = np.frombuffer(fr, np.uint8)
            descs[i] = (addr, len(fr), 0)
        self.tx.put(descs)
        self.kick()
        return n

    def kick(self) -> None:
        """Make the kernel transmit what the TX ring holds (copy mode sends in this call)."""
        while libc.sendto(self.sock.fileno(), None, 0, MSG_DONTWAIT, None, 0) < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EBUSY, errno.ENOBUFS):
                self._reclaim()
                continue
            if err == errno.EINTR:
                continue
            raise kernel_error(f"transmit on AF_XDP socket ({self.ifname})", err)

    # -- facts --------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """The kernel's counters of this socket (drops because rings were full, ...)."""
        raw = self.sock.getsockopt(SOL_XDP, XDP_STATISTICS, 8 * len(_STATS_FIELDS))
        return dict(zip(_STATS_FIELDS, struct.unpack(f"={len(raw) // 8}Q", raw)))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        for r in self._rings:
            r.close()
        self._rings.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self._umem is not None:
            self.umem = None  # the view pins the mapping
            self._umem.close()
            self._umem = None

    def __enter__(self) -> "XskSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["MODES", "RxBatch", "XskSocket"]
