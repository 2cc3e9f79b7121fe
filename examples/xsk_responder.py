"""A userspace ARP and ICMP echo responder on AF_XDP, written with ``ebplane.xsk``.

It owns one IPv4 address that no kernel on the link has: it answers ARP requests for it
and ICMP echo requests to it, and ignores everything else.  The frames reach it through
the xsk stage of a pipeline (``examples/xsk.yaml``)::

    ebplane apply examples/xsk.yaml
    python examples/xsk_responder.py --pipeline xsk --ifname eth0 --ip 198.18.1.100

:func:`answer` is the whole protocol logic (bytes in, bytes out), :func:`serve` the loop.
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import threading

from ebplane.lab.traffic import inet_checksum as checksum
from ebplane.xsk import XskSocket

ETH_P_ARP, ETH_P_IP = 0x0806, 0x0800
ARP_REQUEST, ARP_REPLY = 1, 2
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0


def answer(frame: bytes, mac: bytes, ip: bytes) -> bytes | None:
    """The reply to ``frame`` if it is an ARP request for ``ip`` or an ICMP echo request to
    ``ip`` (``mac``: the responder's MAC, 6 bytes; ``ip``: 4 bytes), else None."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == ETH_P_ARP and len(frame) >= 42:
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
        sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
        if (htype, ptype, hlen, plen, op) != (1, ETH_P_IP, 6, 4, ARP_REQUEST) or tpa != ip:
            return None
        arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, ARP_REPLY) + mac + ip + sha + spa
        return sha + mac + struct.pack("!H", ETH_P_ARP) + arp
    if ethertype == ETH_P_IP and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != 1 or frame[30:34] != ip or len(frame) < 14 + ihl + 8:
            return None
        tot_len = struct.unpack_from("!H", frame, 16)[0]
        icmp = bytearray(frame[14 + ihl:14 + tot_len])
        if icmp[0] != ICMP_ECHO_REQUEST:
            return None
        icmp[0] = ICMP_ECHO_REPLY
        icmp[2:4] = b"\0\0"
        icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
        hdr = bytearray(frame[14:34])  # options are not echoed
        hdr[0] = 0x45
        hdr[2:4] = struct.pack("!H", 20 + len(icmp))
        hdr[8] = 64
        hdr[10:12] = b"\0\0"
        hdr[12:16], hdr[16:20] = frame[30:34], frame[26:30]
        hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
        return frame[6:12] + mac + frame[12:14] + bytes(hdr) + bytes(icmp)
    return None


def serve(xs: XskSocket, mac: bytes, ip: bytes, stop: threading.Event) -> int:
    """Answer until ``stop`` is set; returns how many replies were sent."""
    sent = 0
    while not stop.is_set():
        replies = [r for f in xs.recv(timeout=0.1) if (r := answer(f, mac, ip)) is not None]
        while replies:
            n = xs.send(replies)
            sent += n
            replies = replies[n:]
    return sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="applied pipeline with an xsk stage")
    p.add_argument("--ifname", required=True)
    p.add_argument("--netns", help="namespace of the interface")
    p.add_argument("--queue", type=int, default=0)
    p.add_argument("--ip", required=True, help="the IPv4 address to answer for")
    p.add_argument("--mac", default="02:eb:00:00:00:01", help="the MAC to answer with")
    a = p.parse_args(argv)
    ip = ipaddress.IPv4Address(a.ip).packed
    mac = bytes.fromhex(a.mac.replace(":", ""))
    with XskSocket(a.ifname, a.queue, netns=a.netns) as xs:
        xs.attach(a.pipeline)
        print(f"answering ARP and ping for {a.ip} on {a.ifname} queue {a.queue} ({xs.mode} "
              "mode); Ctrl-C to stop")
        stop = threading.Event()
        try:
            serve(xs, mac, ip, stop)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
