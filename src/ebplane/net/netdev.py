"""XDP features of an interface, from the kernel's ``netdev`` generic-netlink family.

libbpf 1.1 cannot report XDP feature flags (they came with 1.2), and the
features decide whether a redirect to a device works at all (a veth is a
redirect target only while its peer runs XDP or has GRO on; otherwise
redirected frames vanish silently).  So ebplane asks the kernel directly,
through pyroute2's generic-netlink socket; pyroute2 0.9.7 has no class for the
``netdev`` family, so :class:`netdevmsg` declares its attributes (uapi
``netdev.h``).  The socket is opened in the calling thread, so the ifindex is
looked up in that thread's network namespace.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from pyroute2.netlink import NLM_F_REQUEST, genlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from ebplane.errors import InterfaceNotFound, NotSupported, kernel_error

NETDEV_FAMILY = "netdev"
NETDEV_CMD_DEV_GET = 1

#: ``enum netdev_xdp_act`` bit -> name, in the kernel's order.
XDP_FEATURE_BITS: dict[int, str] = {
    1 << 0: "basic", 1 << 1: "redirect", 1 << 2: "ndo_xmit", 1 << 3: "xsk_zerocopy",
    1 << 4: "hw_offload", 1 << 5: "rx_sg", 1 << 6: "ndo_xmit_sg",
}


class netdevmsg(genlmsg):
    """A message of the ``netdev`` family: the ``dev`` attribute set (uapi netdev.h)."""
    prefix = "NETDEV_A_DEV_"
    nla_map = (("NETDEV_A_DEV_UNSPEC", "none"),
               ("NETDEV_A_DEV_IFINDEX", "uint32"),
               ("NETDEV_A_DEV_PAD", "none"),
               ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
               ("NETDEV_A_DEV_XDP_ZC_MAX_SEGS", "uint32"),
               ("NETDEV_A_DEV_XDP_RX_METADATA_FEATURES", "uint64"),
               ("NETDEV_A_DEV_XSK_FEATURES", "uint64"))


def open_netdev(family: str = NETDEV_FAMILY) -> GenericNetlinkSocket:
    """A generic-netlink socket bound to the ``netdev`` family (the caller closes it).
    ``family`` names another family only for tests of a family the kernel lacks."""
    sock = GenericNetlinkSocket()
    sock.asyncore.module_err_level = "debug"  # a missing family is reported below
    try:
        sock.bind(family, netdevmsg)
    except NetlinkError as e:
        sock.close()
        if e.code == errno.ENOENT:
            raise NotSupported(f"the kernel has no generic-netlink family {family!r}",
                               err=e.code,
                               hint="XDP feature flags need Linux 6.3 or newer") from None
        raise kernel_error(f"resolve generic-netlink family {family!r}", e.code) from e
    except BaseException:
        sock.close()
        raise
    return sock


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


def xdp_features(ifindex: int) -> XdpFeatures:
    """XDP features of interface ``ifindex`` in the calling thread's namespace."""
    what = f"query XDP features of ifindex {ifindex}"
    msg = netdevmsg()
    msg["cmd"] = NETDEV_CMD_DEV_GET
    msg["version"] = 1
    msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
    sock = open_netdev()
    try:
        reply = list(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST))
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.EINVAL):
            raise InterfaceNotFound(f"no interface with ifindex {ifindex} in this "
                                    "network namespace",
                                    hint="look the ifindex up in the namespace that holds "
                                         "the interface (`ip -n NS link`)") from None
        raise kernel_error(what, e.code) from e
    finally:
        sock.close()
    if not reply:
        raise kernel_error(what, errno.ENODATA)
    dev = reply[0]
    return XdpFeatures.from_raw(
        ifindex, dev.get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0,
        zc_max_segs=dev.get_attr("NETDEV_A_DEV_XDP_ZC_MAX_SEGS") or 0,
        rx_metadata=dev.get_attr("NETDEV_A_DEV_XDP_RX_METADATA_FEATURES") or 0,
        xsk_features=dev.get_attr("NETDEV_A_DEV_XSK_FEATURES") or 0)
