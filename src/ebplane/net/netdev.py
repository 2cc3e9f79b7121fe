"""XDP features of an interface, from the kernel's ``netdev`` generic-netlink family.

libbpf 1.1 cannot report XDP feature flags (they came with 1.2), and the
features decide whether a redirect to a device works at all (a veth is a
redirect target only while its peer runs XDP or has GRO on; otherwise
redirected frames vanish silently).  So ebplane asks the kernel directly
with a minimal generic-netlink client.  The socket is opened in the calling
thread, so the ifindex is looked up in that thread's network namespace.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field

from ebplane.errors import InterfaceNotFound, KernelError, NotSupported, kernel_error

NETLINK_GENERIC = 16
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX = 1
NETDEV_A_DEV_XDP_FEATURES = 3
NETDEV_A_DEV_XDP_ZC_MAX_SEGS = 4
NETDEV_A_DEV_XDP_RX_METADATA_FEATURES = 5
NETDEV_A_DEV_XSK_FEATURES = 6

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
_NLATTR = struct.Struct("=HH")  # len, type
_TIMEOUT = 2.0

#: ``enum netdev_xdp_act`` bit -> name, in the kernel's order.
XDP_FEATURE_BITS: dict[int, str] = {
    1 << 0: "basic", 1 << 1: "redirect", 1 << 2: "ndo_xmit", 1 << 3: "xsk_zerocopy",
    1 << 4: "hw_offload", 1 << 5: "rx_sg", 1 << 6: "ndo_xmit_sg",
}


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align4(len(raw)) - len(raw))


def _parse_attrs(data: bytes) -> dict[int, bytes]:
    """Flat attribute type -> payload map (nested attributes stay raw)."""
    attrs: dict[int, bytes] = {}
    off = 0
    while off + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, off)
        if length < _NLATTR.size or off + length > len(data):
            break
        attrs[kind & NLA_TYPE_MASK] = data[off + _NLATTR.size:off + length]
        off += _align4(length)
    return attrs


class _GenlSocket:
    """One request/one reply over a NETLINK_GENERIC socket, bounded by a timeout."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        except OSError as e:
            raise kernel_error("open a generic-netlink socket", e.errno) from e
        self.sock.settimeout(_TIMEOUT)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "_GenlSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, family: int, cmd: int, version: int, attrs: bytes, what: str
                ) -> dict[int, bytes]:
        """Send one genetlink command; return the reply's attributes.

        A negative errno in the reply raises :class:`OSError` with that
        errno, for the caller to turn into the right ebplane error.
        """
        self.seq += 1
        body = _GENLMSGHDR.pack(cmd, version, 0) + attrs
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), family, NLM_F_REQUEST | NLM_F_ACK,
                             self.seq, 0) + body
        self.sock.send(msg)
        reply: dict[int, bytes] | None = None
        try:
            while True:
                data = self.sock.recv(65536)
                off = 0
                while off + _NLMSGHDR.size <= len(data):
                    length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
                    if length < _NLMSGHDR.size:
                        break
                    payload = data[off + _NLMSGHDR.size:off + length]
                    off += _align4(length)
                    if seq != self.seq:
                        continue
                    if kind == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", payload)
                        if err:
                            raise OSError(-err, os.strerror(-err))
                        if reply is None:
                            raise KernelError(f"{what}: the kernel acknowledged without a reply")
                        return reply  # the ACK after the reply
                    if kind == NLMSG_DONE:
                        return reply or {}
                    reply = _parse_attrs(payload[_GENLMSGHDR.size:])
        except socket.timeout:
            raise KernelError(f"{what}: no answer from the kernel within {_TIMEOUT:g} s",
                              err=errno.ETIMEDOUT) from None

    def family_id(self, name: str, *, hint: str | None = None) -> int:
        """Resolve a generic-netlink family name to its id.

        A family the kernel lacks raises NotSupported carrying ``hint``.
        """
        try:
            attrs = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1,
                                 _attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"),
                                 f"resolve generic-netlink family {name!r}")
        except OSError as e:
            if isinstance(e, KernelError):
                raise
            if e.errno == errno.ENOENT:
                raise NotSupported(f"the kernel has no generic-netlink family {name!r}",
                                   err=e.errno, hint=hint) from None
            raise kernel_error(f"resolve generic-netlink family {name!r}", e.errno) from e
        if CTRL_ATTR_FAMILY_ID not in attrs:
            raise KernelError(f"resolve generic-netlink family {name!r}: reply has no id")
        return struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0]


@dataclass(frozen=True)
class XdpFeatures:
    """The XDP features the kernel reports for one interface.

    ``raw`` is ``NETDEV_A_DEV_XDP_FEATURES``; ``names`` its set bits by
    name.  ``redirect_target`` (NDO_XMIT) is what a devmap redirect *to*
    this device needs; ``redirect`` only says XDP programs *on* it may
    redirect.
    """

    ifindex: int
    raw: int
    names: frozenset[str] = field(default_factory=frozenset)
    zc_max_segs: int = 0
    rx_metadata: int = 0
    xsk_features: int = 0

    @classmethod
    def from_raw(cls, ifindex: int, raw: int, **extra: int) -> "XdpFeatures":
        names = frozenset(n for bit, n in XDP_FEATURE_BITS.items() if raw & bit)
        return cls(ifindex=ifindex, raw=raw, names=names, **extra)

    @property
    def basic(self) -> bool:
        """XDP_PASS, XDP_DROP, XDP_TX and XDP_ABORTED work."""
        return "basic" in self.names

    @property
    def redirect(self) -> bool:
        """Programs on this device may return XDP_REDIRECT."""
        return "redirect" in self.names

    @property
    def redirect_target(self) -> bool:
        """Frames redirected from elsewhere can be sent here (NDO_XMIT)."""
        return "ndo_xmit" in self.names

    @property
    def xsk_zerocopy(self) -> bool:
        """AF_XDP sockets can run in zero-copy mode."""
        return "xsk_zerocopy" in self.names

    @property
    def hw_offload(self) -> bool:
        """Programs can be offloaded to the NIC."""
        return "hw_offload" in self.names

    @property
    def rx_sg(self) -> bool:
        """Multi-buffer (jumbo) frames are received with XDP."""
        return "rx_sg" in self.names

    @property
    def ndo_xmit_sg(self) -> bool:
        """Multi-buffer frames can be redirected here."""
        return "ndo_xmit_sg" in self.names

    def to_dict(self) -> dict:
        return {"ifindex": self.ifindex, "xdp_features": self.raw,
                "names": sorted(self.names, key=list(XDP_FEATURE_BITS.values()).index),
                "xdp_zc_max_segs": self.zc_max_segs, "xdp_rx_metadata_features": self.rx_metadata,
                "xsk_features": self.xsk_features}


def _u(data: bytes | None) -> int:
    """Little-endian unsigned of whatever width the kernel sent (u32 or u64)."""
    return int.from_bytes(data, "little") if data else 0


def xdp_features(ifindex: int) -> XdpFeatures:
    """XDP features of interface ``ifindex`` in the calling thread's namespace."""
    with _GenlSocket() as genl:
        family = genl.family_id("netdev", hint="XDP feature flags need Linux 6.3 or newer")
        what = f"query XDP features of ifindex {ifindex}"
        try:
            attrs = genl.request(family, NETDEV_CMD_DEV_GET, 1,
                                 _attr(NETDEV_A_DEV_IFINDEX, struct.pack("=I", ifindex)), what)
        except OSError as e:
            if isinstance(e, KernelError):
                raise
            if e.errno in (errno.ENODEV, errno.EINVAL):
                raise InterfaceNotFound(f"no interface with ifindex {ifindex} in this "
                                        "network namespace",
                                        hint="look the ifindex up in the namespace that holds "
                                             "the interface (`ip -n NS link`)") from None
            raise kernel_error(what, e.errno) from e
    return XdpFeatures.from_raw(
        ifindex, _u(attrs.get(NETDEV_A_DEV_XDP_FEATURES)),
        zc_max_segs=_u(attrs.get(NETDEV_A_DEV_XDP_ZC_MAX_SEGS)),
        rx_metadata=_u(attrs.get(NETDEV_A_DEV_XDP_RX_METADATA_FEATURES)),
        xsk_features=_u(attrs.get(NETDEV_A_DEV_XSK_FEATURES)))
