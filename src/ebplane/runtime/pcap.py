"""Reading and writing capture files through scapy: classic pcap (microsecond or nanosecond,
either byte order, gzip-compressed too) and pcapng in, classic pcap out.

ebplane replays Ethernet frames only; these functions keep their old names and contract
(frames as ``bytes``, ``UsageError`` for a file that is missing, not a capture, of another
link type, or cut short) and leave the format to scapy's readers and writer.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Iterator

from ebplane.errors import UsageError

LINKTYPE_ETHERNET = 1


def read_pcap(path: str | Path) -> Iterator[bytes]:
    """The frames of an Ethernet pcap or pcapng file, in order."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapReader  # opens pcapng files as RawPcapNgReader

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"pcap file {path} does not exist")
    try:
        reader = RawPcapReader(str(path))
    except (Scapy_Exception, OSError) as e:
        raise UsageError(f"{path} is not a pcap or pcapng file ({e})",
                         hint="write captures with tcpdump -w, tshark -w or scapy's wrpcap") \
            from None
    with reader:
        plain = isinstance(reader.f, io.BufferedReader)  # not gzip: positions are file offsets
        size = path.stat().st_size
        end = reader.f.tell()
        count = 0
        for index, (data, meta) in enumerate(reader):
            # pcap: one link type in the file header; pcapng: one per interface
            linktype = getattr(meta, "linktype", getattr(reader, "linktype", None))
            if linktype != LINKTYPE_ETHERNET:
                raise UsageError(f"{path}: record {index} has link type {linktype}; "
                                 f"ebplane replays Ethernet ({LINKTYPE_ETHERNET}) only")
            if len(data) < getattr(meta, "caplen", len(data)):
                raise UsageError(f"{path}: record {index} is cut short (file truncated)")
            if plain:
                end = reader.f.tell()
            count += 1
            yield data
        if plain and end != size:  # the reader stops quietly at a record cut short
            raise UsageError(f"{path}: record {count} is cut short (file truncated)")


def write_pcap(path: str | Path, frames: Iterable[bytes]) -> int:
    """Write frames to an Ethernet pcap file; returns how many."""
    from scapy.utils import RawPcapWriter

    n = 0
    with RawPcapWriter(str(path), linktype=LINKTYPE_ETHERNET) as w:
        for fr in frames:
            w.write(bytes(fr))
            n += 1
    return n
