"""Reading and writing classic pcap files (the format tcpdump and scapy write)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable, Iterator

from ebplane.errors import UsageError

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1


def read_pcap(path: str | Path) -> Iterator[bytes]:
    """The frames of an Ethernet pcap file, in order."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"pcap file {path} does not exist") from None
    if len(data) < 24:
        raise UsageError(f"{path} is not a pcap file (only {len(data)} bytes)")
    for endian in "<>":
        magic, _vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack_from(endian + "IHHiIII", data)
        if magic in (MAGIC_US, MAGIC_NS):
            break
    else:
        hint = "convert it: tcpdump -r FILE -w OUT.pcap" if data[:4] == b"\x0a\x0d\x0d\x0a" else None
        raise UsageError(f"{path} is not a classic pcap file (pcapng or another format)", hint=hint)
    if linktype != LINKTYPE_ETHERNET:
        raise UsageError(f"{path} has link type {linktype}; ebplane replays Ethernet (1) only")
    off = 24
    index = 0
    while off < len(data):
        if off + 16 > len(data):
            raise UsageError(f"{path}: record {index} is cut short (file truncated)")
        _ts, _frac, incl, _orig = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        if off + incl > len(data):
            raise UsageError(f"{path}: record {index} is cut short (file truncated)")
        yield data[off:off + incl]
        off += incl
        index += 1


def write_pcap(path: str | Path, frames: Iterable[bytes]) -> int:
    """Write frames to an Ethernet pcap file; returns how many."""
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", MAGIC_US, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
        for fr in frames:
            f.write(struct.pack("<IIII", 0, 0, len(fr), len(fr)))
            f.write(fr)
            n += 1
    return n
