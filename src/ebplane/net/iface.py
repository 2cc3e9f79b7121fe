"""Facts about network interfaces in the calling thread's network namespace.

Everything here asks the kernel through sockets opened in the calling thread
(rtnetlink and the ethtool feature ioctls via pyroute2; the driver name through the one
ethtool ioctl pyroute2 0.9.7 lacks, ETHTOOL_GDRVINFO), never through ``/sys/class/net``:
sysfs shows the namespace of whoever mounted ``/sys``, not the one a thread
entered with :func:`ebplane.net.netns.enter`.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import socket
import struct
import time
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.ethtool.ioctl import EthtoolError, IoctlEthtool
from pyroute2.netlink.exceptions import NetlinkError

from ebplane.errors import InterfaceNotFound, KernelError, kernel_error
from ebplane.net import netns

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x03
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16-byte name + 24-byte union
_DRVINFO_SIZE = 196  # struct ethtool_drvinfo
IFF_UP = 0x1


@dataclass(frozen=True)
class IfaceInfo:
    """What ebplane needs to know about an interface before attaching to it.

    ``peer_ifindex``/``peer_netns`` describe the other end of a veth
    (``peer_netns`` is the ``ip netns`` name of the namespace holding it, or
    None when that namespace has no name, e.g. the host's); ``peer_elsewhere``
    says whether it is in another namespace than this end (named or not).  ``gro``
    is None when the driver does not report it.
    """

    name: str
    ifindex: int
    mtu: int
    mac: str
    kind: str | None
    driver: str | None
    operstate: str
    up: bool
    rx_queues: int
    tx_queues: int
    peer_ifindex: int | None
    peer_netns: str | None
    gro: bool | None
    xdp_prog_id: int | None
    peer_elsewhere: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV)


def _driver(name: str) -> str | None:
    """The driver's name (ETHTOOL_GDRVINFO: struct ethtool_drvinfo, cmd then a 32-byte
    driver name); None when the device does not say.  pyroute2 has no call for it."""
    drv = ctypes.create_string_buffer(struct.pack("I", ETHTOOL_GDRVINFO), _DRVINFO_SIZE)
    ifreq = struct.pack("16sQ", name.encode(), ctypes.addressof(drv))
    ifreq += b"\0" * (_IFREQ_SIZE - len(ifreq))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, array.array("B", ifreq))
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return None
            raise kernel_error(f"ethtool query on {name!r}", e.errno) from e
    return drv.raw[4:36].split(b"\0", 1)[0].decode() or None


def _features_active(name: str, features) -> bool | None:
    """Whether any of ``features`` (names as ``ethtool -k`` shows them, those the device
    lists) is on for ``name`` in the calling thread's namespace; None when the device does
    not report features."""
    eth = IoctlEthtool(name)
    try:
        feats = eth.get_features()
        listed = [f for f in features if f in feats]
        return any(feats.is_active(f) for f in listed) if listed else None
    except (EthtoolError, KeyError):
        return None
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return None
        raise kernel_error(f"ethtool query on {name!r}", e.errno) from e
    finally:
        eth.close()


def _gro(name: str) -> bool | None:
    """Whether generic receive offload is on (the ``rx-gro`` feature); None when the device
    does not report features."""
    return _features_active(name, ("rx-gro",))


def _driver_and_gro(name: str) -> tuple[str | None, bool | None]:
    return _driver(name), _gro(name)


def _not_found(name: str) -> InterfaceNotFound:
    here = netns.current_name()
    where = f"network namespace {here!r}" if here else "the current network namespace"
    present = ", ".join(n for _, n in socket.if_nameindex()) or "none"
    return InterfaceNotFound(f"interface {name!r} does not exist in {where}",
                             hint=f"interfaces there: {present}")


def ifindex(name: str) -> int:
    """The ifindex of ``name`` in the calling thread's namespace."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise _not_found(name) from None


def _netns_by_nsid(ip: IPRoute, nsid: int) -> str | None:
    """Name of the ``ip netns`` namespace that the current namespace calls ``nsid``."""
    try:
        names = os.listdir(netns.NETNS_DIR)
    except FileNotFoundError:
        return None
    for name in names:
        try:
            fd = os.open(os.path.join(netns.NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if ip.get_netnsid(fd=fd).get("nsid") == nsid:
                return name
        except NetlinkError:
            continue
        finally:
            os.close(fd)
    return None


def _from_link(ip: IPRoute, msg) -> IfaceInfo:
    name = msg.get_attr("IFLA_IFNAME")
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    peer_ifindex = peer_netns = None
    peer_elsewhere = False
    if kind == "veth":
        peer_ifindex = msg.get_attr("IFLA_LINK")
        nsid = msg.get_attr("IFLA_LINK_NETNSID")
        peer_netns = netns.current_name() if nsid is None else _netns_by_nsid(ip, nsid)
        peer_elsewhere = nsid is not None
    xdp = msg.get_attr("IFLA_XDP")
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp is not None else None
    driver, gro = _driver_and_gro(name)
    return IfaceInfo(
        name=name, ifindex=msg["index"], mtu=msg.get_attr("IFLA_MTU"),
        mac=msg.get_attr("IFLA_ADDRESS") or "", kind=kind, driver=driver,
        operstate=msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN", up=bool(msg["flags"] & IFF_UP),
        rx_queues=msg.get_attr("IFLA_NUM_RX_QUEUES") or 1,
        tx_queues=msg.get_attr("IFLA_NUM_TX_QUEUES") or 1,
        peer_ifindex=peer_ifindex, peer_netns=peer_netns, gro=gro, xdp_prog_id=prog_id or None,
        peer_elsewhere=peer_elsewhere)


def info(name: str) -> IfaceInfo:
    """Facts about interface ``name`` in the calling thread's namespace."""
    with IPRoute() as ip:
        try:
            links = ip.link("get", ifname=name)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                raise _not_found(name) from None
            raise kernel_error(f"query interface {name!r}", e.code) from e
        return _from_link(ip, links[0])


def list_ifaces() -> list[IfaceInfo]:
    """All interfaces of the calling thread's namespace, by ifindex."""
    with IPRoute() as ip:
        return sorted((_from_link(ip, m) for m in ip.get_links()), key=lambda i: i.ifindex)


def wait_up(name: str, timeout: float = 5.0) -> None:
    """Wait until ``name`` is operationally up (carrier on), at most ``timeout`` seconds.

    The kernel turns a veth's carrier on asynchronously after ``ip link set
    up``; until then its qdisc drops every frame and IPv6 neighbour
    discovery fails, so traffic right after bringing a link up is lost.
    """
    deadline = time.monotonic() + timeout
    while (state := info(name).operstate) != "UP":
        if time.monotonic() >= deadline:
            raise KernelError(f"interface {name!r} is still {state} after {timeout:g} s",
                              hint="is the other end of the link up? (`ip link`)")
        time.sleep(0.01)


# Features with which a device hands the stack CHECKSUM_PARTIAL frames: the sender leaves
# the TCP/UDP checksum to "hardware" (for a veth: to whoever finally turns the frame into an
# skb, or to nobody once XDP redirects it as an xdp_frame).
TX_CHECKSUM_FEATURES = ("tx-checksum-ipv4", "tx-checksum-ip-generic", "tx-checksum-ipv6")


def tx_checksum_offload(name: str) -> bool | None:
    """Whether ``name`` (calling thread's namespace) offloads TX checksums: its frames may
    leave with an incomplete TCP/UDP checksum.  None when the device does not say."""
    return _features_active(name, TX_CHECKSUM_FEATURES)


def disable_tx_checksum_offload(ns: str, name: str) -> None:
    """``ethtool -K NAME tx off`` in namespace ``ns``: the stack then completes every
    checksum in software before the frame leaves (TSO, which needs TX checksums, goes off
    with it; GSO still segments in software)."""
    netns.run(ns, ["ethtool", "-K", name, "tx", "off"])
