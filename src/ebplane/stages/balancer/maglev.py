"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4), with weights.

Each backend has a permutation of the table's M slots (M a prime): ``offset`` and ``skip``
come from two hashes of the backend's name, and its j-th preference is
``(offset + j * skip) mod M``.  Backends take turns; on its turn a backend claims its most
preferred slot still free.  Weights: a backend of weight w takes a turn in w of every
``max(weights)`` rounds, so it ends up with a share of the slots proportional to w.  The
table depends only on the set of (name, weight): every balancer computes the same one, and
a change of the set moves few slots besides those of the backend that came or went.

:func:`flow_hash` is the hash balancer.h computes over a flow (murmur3's mixing).
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from typing import Sequence

from ebplane.stages.balancer.gen import EMPTY  # (balancer.h gets the same as a #define)

__all__ = ["EMPTY", "flow_hash", "permutation", "populate"]
_M32 = 0xFFFFFFFF


def permutation(name: str, size: int) -> tuple[int, int]:
    """``(offset, skip)`` of a backend's preference list in a table of ``size`` (prime)."""
    h1 = zlib.crc32(b"maglev-offset:" + name.encode())
    h2 = zlib.crc32(b"maglev-skip:" + name.encode())
    return h1 % size, h2 % (size - 1) + 1


def populate(backends: Sequence[tuple[int, str, int]], size: int) -> list[int]:
    """The lookup table: ``backends`` are ``(slot, name, weight)``; entries are slots
    (:data:`EMPTY` everywhere when no backend has a weight above 0)."""
    live = sorted((name, slot, w) for slot, name, w in backends if w > 0)
    if not live:
        return [EMPTY] * size
    table = [EMPTY] * size
    offs, skips, nxt, credit, ws, slots = [], [], [], [], [], []
    for name, slot, w in live:
        o, s = permutation(name, size)
        offs.append(o)
        skips.append(s)
        nxt.append(0)
        credit.append(0)
        ws.append(w)
        slots.append(slot)
    wmax = max(ws)
    filled = 0
    n = len(live)
    while True:
        for i in range(n):
            credit[i] += ws[i]
            if credit[i] < wmax:
                continue
            credit[i] -= wmax
            o, s, j = offs[i], skips[i], nxt[i]
            c = (o + j * s) % size
            while table[c] != EMPTY:
                j += 1
                c = (o + j * s) % size
            table[c] = slots[i]
            nxt[i] = j + 1
            filled += 1
            if filled == size:
                return table


def _mix(h: int, k: int) -> int:
    k = (k * 0xCC9E2D51) & _M32
    k = ((k << 15) | (k >> 17)) & _M32
    k = (k * 0x1B873593) & _M32
    h ^= k
    h = ((h << 13) | (h >> 19)) & _M32
    return (h * 5 + 0xE6546B64) & _M32


def flow_hash(src: str, sport: int, dport: int, proto: int) -> int:
    """The hash balancer.h's ebp_lb_hash gives the flow (source address, ports, protocol)."""
    raw = ipaddress.ip_address(src).packed.ljust(16, b"\0")
    h = 0x5EED1B1B
    for w in struct.unpack("<4I", raw):
        h = _mix(h, w)
    h = _mix(h, (sport << 16) | dport)
    h = _mix(h, proto)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h
