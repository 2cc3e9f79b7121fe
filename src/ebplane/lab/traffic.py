"""Traffic for labs and tests: send crafted frames, count what arrives, ping.

Frames are built with scapy and written to a raw ``AF_PACKET`` socket opened
inside the sending namespace (scapy's own senders consult its interface
cache, which was filled in the host namespace at import time).  Counting uses
a raw socket opened inside the receiving namespace *before* sending, so no
frame can slip by between "start listening" and "send".  Every wait is
bounded by a timeout.
"""

from __future__ import annotations

import contextlib

import ipaddress
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass

from ebplane.errors import UsageError
from ebplane.net import iface, netns

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33  # not exported by the socket module; root may exceed rmem_max
_RCVBUF = 8 << 20  # room for thousands of small frames between send and wait()
PROTOS = ("udp", "tcp", "icmp")
_IPPROTO = {"udp": 17, "tcp": 6, "icmp": 1}
_ICMPV6 = 58


@dataclass(frozen=True)
class Flow:
    """A 5-tuple.  For ``icmp`` (echo requests) ``sport`` is the echo id and
    ``dport`` is ignored; the ICMP version follows the address family."""

    proto: str
    src: str
    dst: str
    sport: int = 0
    dport: int = 0

    def __post_init__(self) -> None:
        if self.proto not in PROTOS:
            raise UsageError(f"unknown protocol {self.proto!r}", hint=f"use one of {PROTOS}")
        try:
            src, dst = ipaddress.ip_address(self.src), ipaddress.ip_address(self.dst)
        except ValueError as e:
            raise UsageError(f"flow address: {e}") from None
        if src.version != dst.version:
            raise UsageError(f"flow {self.src} -> {self.dst} mixes IPv4 and IPv6")
        for port in (self.sport, self.dport):
            if not 0 <= port <= 0xFFFF:
                raise UsageError(f"port {port} out of range", hint="0 to 65535")

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.src).version

    @property
    def ipproto(self) -> int:
        return _ICMPV6 if self.proto == "icmp" and self.version == 6 else _IPPROTO[self.proto]

    def frame(self, src_mac: str, dst_mac: str, payload: bytes = b"") -> bytes:
        """One Ethernet frame of this flow (TCP: a SYN; ICMP: an echo request, seq 0)."""
        from scapy.layers.inet import ICMP, IP, TCP, UDP  # scapy is slow to import: lazily
        from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw

        if self.version == 4:
            l3 = IP(src=self.src, dst=self.dst)
        else:
            l3 = IPv6(src=self.src, dst=self.dst)
        if self.proto == "udp":
            l4 = UDP(sport=self.sport, dport=self.dport)
        elif self.proto == "tcp":
            l4 = TCP(sport=self.sport, dport=self.dport, flags="S")
        elif self.version == 4:
            l4 = ICMP(type=8, id=self.sport)
        else:
            l4 = ICMPv6EchoRequest(id=self.sport)
        return bytes(Ether(src=src_mac, dst=dst_mac) / l3 / l4 / Raw(payload))

    def matches(self, frame: bytes) -> bool:
        """Whether an Ethernet frame belongs to this flow (MACs, TTL, checksums ignored)."""
        off = 12
        (ethertype,) = struct.unpack_from("!H", frame, off) if len(frame) >= 14 else (0,)
        if ethertype == ETH_P_8021Q and len(frame) >= 18:
            off += 4
            (ethertype,) = struct.unpack_from("!H", frame, off)
        off += 2
        if self.version == 4:
            if ethertype != ETH_P_IP or len(frame) < off + 20:
                return False
            ihl = (frame[off] & 0x0F) * 4
            proto, src, dst = frame[off + 9], frame[off + 12:off + 16], frame[off + 16:off + 20]
            l4 = off + ihl
        else:
            if ethertype != ETH_P_IPV6 or len(frame) < off + 40:
                return False
            proto, src, dst = frame[off + 6], frame[off + 8:off + 24], frame[off + 24:off + 40]
            l4 = off + 40
        if (proto != self.ipproto or src != ipaddress.ip_address(self.src).packed
                or dst != ipaddress.ip_address(self.dst).packed or len(frame) < l4 + 8):
            return False
        if self.proto == "icmp":
            echo_request = 8 if self.version == 4 else 128
            return frame[l4] == echo_request and struct.unpack_from("!H", frame, l4 + 4)[0] \
                == self.sport
        return struct.unpack_from("!HH", frame, l4) == (self.sport, self.dport)


def _peer_mac(ns: str, ifname: str) -> str:
    """MAC of the device at the other end of veth ``ifname`` (the next hop's L2 address)."""
    with netns.enter(ns):
        info = iface.info(ifname)
    if info.peer_ifindex is None or info.peer_netns is None:
        raise UsageError(f"cannot tell the destination MAC for frames leaving {ns}:{ifname}",
                         hint="it is not a veth with a named peer namespace; pass dst_mac=")
    with netns.enter(info.peer_netns):
        return iface.info(socket.if_indextoname(info.peer_ifindex)).mac


def send(ns: str, ifname: str, flow: Flow, count: int = 1, *, src_mac: str | None = None,
         dst_mac: str | None = None, payload: bytes = b"") -> int:
    """Send ``count`` frames of ``flow`` out of ``ifname`` in namespace ``ns``; return count.

    MACs default to the interface's own and, for a veth, its peer's, so the
    frames are accepted (and routed) by the node at the other end.  The frame
    is built once and sent ``count`` times (scapy costs about 0.5 ms a frame).
    """
    if count < 0:
        raise UsageError(f"cannot send {count} packets", hint="count must be 0 or more")
    if dst_mac is None:
        dst_mac = _peer_mac(ns, ifname)
    with netns.enter(ns):
        if src_mac is None:
            src_mac = iface.info(ifname).mac
        frame = flow.frame(src_mac, dst_mac, payload)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
            sock.bind((ifname, 0))
            for _ in range(count):
                sock.send(frame)
    return count


class Capture:
    """Counts the frames of a flow that arrive on an interface of a namespace.

    Open it before sending (``with Capture(ns, "eth0", flow) as cap:``), send,
    then ``cap.wait(n, timeout)``.  Frames the interface itself sends are ignored.
    """

    def __init__(self, ns: str, ifname: str, flow: Flow | None = None):
        self.ns, self.ifname, self.flow = ns, ifname, flow
        self.count = 0
        with netns.enter(ns):
            iface.ifindex(ifname)  # a clear InterfaceNotFound before any socket error
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RCVBUF)
                self.sock.bind((ifname, ETH_P_ALL))
            except BaseException:
                self.sock.close()
                raise
        self.sock.setblocking(False)

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _drain(self) -> None:
        while True:
            try:
                frame, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            if addr[2] != PACKET_OUTGOING and (self.flow is None or self.flow.matches(frame)):
                self.count += 1

    def wait(self, n: int, timeout: float = 2.0) -> int:
        """Count arrivals until ``n`` have come or ``timeout`` seconds pass; return the count.

        After reaching ``n`` it keeps reading for a short grace period so
        that duplicates or unexpected extra frames show in the count too.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            now = time.monotonic()
            if self.count >= n or now >= deadline:
                break
            select.select([self.sock], [], [], deadline - now)
        grace = min(0.05, timeout)
        end = time.monotonic() + grace
        while (left := end - time.monotonic()) > 0:
            select.select([self.sock], [], [], left)
            self._drain()
        return self.count


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): IPv4 headers, ICMPv4 (the kernel does ICMPv6's)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(ns: str, addr: str, count: int = 3, *, timeout: float = 1.0) -> int:
    """Send ``count`` ICMP echo requests from namespace ``ns`` to ``addr``; return replies.

    Written over raw sockets (no iputils-ping needed).  Each request waits at
    most ``timeout`` seconds for its reply; a reply counts once.
    """
    try:
        version = ipaddress.ip_address(addr).version
    except ValueError:
        raise UsageError(f"ping: {addr!r} is not an IP address") from None
    family, proto, request, reply = ((socket.AF_INET, socket.IPPROTO_ICMP, 8, 0) if version == 4
                                     else (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129))
    ident = secrets.randbits(16)
    with netns.enter(ns):
        sock = socket.socket(family, socket.SOCK_RAW, proto)
    received = set()
    with sock:
        for seq in range(count):
            body = struct.pack("!HH", ident, seq) + b"ebplane-ping"
            csum = inet_checksum(struct.pack("!BBH", request, 0, 0) + body) if version == 4 else 0
            sock.sendto(struct.pack("!BBH", request, 0, csum) + body, (addr, 0))
            deadline = time.monotonic() + timeout
            while seq not in received and (left := deadline - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                data, _ = sock.recvfrom(65536)
                if version == 4:
                    data = data[(data[0] & 0x0F) * 4:]  # raw IPv4 sockets include the IP header
                if len(data) >= 8 and data[0] == reply \
                        and struct.unpack_from("!HH", data, 4) == (ident, seq):
                    received.add(seq)
    return len(received)


# -- kernel-socket traffic ----------------------------------------------------------------------
# Ordinary sockets, so that the sending kernel fills in (or leaves to offload) the checksums
# as it does for any application: frames built by hand always carry full checksums and hide
# what a veth's CHECKSUM_PARTIAL does to redirected traffic.

def _family(addr: str) -> int:
    try:
        return socket.AF_INET if ipaddress.ip_address(addr).version == 4 else socket.AF_INET6
    except ValueError:
        raise UsageError(f"{addr!r} is not an IP address") from None


def socket_udp(src_ns: str, dst_ns: str, dst: str, *, port: int = 5000, count: int = 20,
               size: int = 200, timeout: float = 2.0) -> int:
    """Send ``count`` UDP datagrams of ``size`` bytes from a kernel socket in ``src_ns`` to
    ``dst``:``port``, received by a socket bound in ``dst_ns``; return how many arrived
    intact."""
    fam = _family(dst)
    with netns.enter(dst_ns):
        rx = socket.socket(fam, socket.SOCK_DGRAM)
    with netns.enter(src_ns):
        tx = socket.socket(fam, socket.SOCK_DGRAM)
    with rx, tx:
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RCVBUF)  # a burst of jumbo datagrams
        rx.bind((dst, port))
        payload = [secrets.token_bytes(size) for _ in range(count)]
        for p in payload:
            tx.sendto(p, (dst, port))
        want, got = set(payload), 0
        deadline = time.monotonic() + timeout
        while got < count and (left := deadline - time.monotonic()) > 0:
            if not select.select([rx], [], [], left)[0]:
                break
            if rx.recv(65536) in want:
                got += 1
        return got


def socket_tcp(src_ns: str, dst_ns: str, dst: str, *, port: int = 5001, size: int = 200_000,
               timeout: float = 5.0) -> int:
    """Connect from ``src_ns`` to a listener in ``dst_ns`` at ``dst``:``port``, send ``size``
    random bytes and have them echoed back; return the number of bytes that came back equal
    (0 when the connection was never established)."""
    import threading

    fam = _family(dst)
    with netns.enter(dst_ns):
        ls = socket.socket(fam, socket.SOCK_STREAM)
    with netns.enter(src_ns):
        cs = socket.socket(fam, socket.SOCK_STREAM)
    data = secrets.token_bytes(size)

    def echo() -> None:
        ls.settimeout(timeout)
        try:
            conn, _ = ls.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(timeout)
            try:
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)
            except OSError:
                pass

    with ls, cs:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((dst, port))
        ls.listen(1)
        server = threading.Thread(target=echo, daemon=True)
        server.start()
        cs.settimeout(timeout)
        back = bytearray()
        def send() -> None:
            try:
                cs.sendall(data)
                cs.shutdown(socket.SHUT_WR)
            except OSError:  # the connection failed or was closed: the count says so
                pass

        sender = threading.Thread(target=send, daemon=True)
        try:
            cs.connect((dst, port))
            sender.start()
            while len(back) < size and (chunk := cs.recv(65536)):
                back += chunk
        except OSError:
            pass
        if sender.is_alive():  # unblock a sendall still running before the socket goes
            with contextlib.suppress(OSError):
                cs.shutdown(socket.SHUT_RDWR)
        if sender.ident is not None:
            sender.join(timeout)
        cs.close()
        server.join(timeout)
    n = 0
    while n < len(back) and back[n] == data[n]:
        n += 1
    return n


def csum_errors(ns: str) -> dict[str, int]:
    """The namespace's checksum error counters (``UdpInCsumErrors``, ``TcpInCsumErrors`` and
    their IPv6 forms), read from /proc/thread-self/net (this thread is in ``ns``)."""
    with netns.enter(ns):
        with open("/proc/thread-self/net/snmp") as f:
            lines = f.read().splitlines()
        with open("/proc/thread-self/net/snmp6") as f:
            six = f.read().splitlines()
    out: dict[str, int] = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        names, values = head.split()[1:], vals.split()[1:]
        proto = head.split(":")[0]
        for k, v in zip(names, values):
            if k == "InCsumErrors" and proto in ("Udp", "Tcp"):
                out[f"{proto}{k}"] = int(v)
    for line in six:
        k, v = line.split()
        if k in ("Udp6InCsumErrors",):
            out[k] = int(v)
    return out
