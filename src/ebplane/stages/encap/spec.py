"""The specs of ``encap`` and ``decap`` (docs/forwarding.md, "Encap and decap").

``decap`` removes the outermost tunnel a packet carries (VLAN tag, VXLAN, GENEVE, GRE, IPIP /
IP6IP6, or a user's P4 header) and ``encap`` adds one (VLAN tag, VXLAN, GENEVE, GRE, IPIP with
configured outer addresses).  Both work at every hook; after either, the packet is parsed
again, so the stages after them see (and ``match:``) the packet as it now is: the inner
packet after a decap, the outer one after an encap.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.protocol_set import parser_graph
from ebplane.spec.stages import Stage, stage_name

# tunnel -> library protocols of which one must be listed for decap to find it
DECAP_TUNNELS: dict[str, tuple[str, ...]] = {
    "vlan": ("vlan",), "vxlan": ("vxlan",), "geneve": ("geneve",), "gre": ("gre",),
    "ipip": ("ipv4", "ipv6"),
}
ENCAP_TUNNELS: tuple[str, ...] = ("vxlan", "geneve", "gre", "ipip", "vlan")
# what follows a user header that decap removes
DECAP_INNER: tuple[str, ...] = ("ip", "ethernet")
TOO_BIG: tuple[str, ...] = ("drop", "pass")
VLAN_TAGGED: tuple[str, ...] = ("rewrite", "push")
UDP_DPORT_DEFAULT: dict[str, int] = {"vxlan": 4789, "geneve": 6081}
ENCAP_MTU_DEFAULT = 1500
ENCAP_TTL_DEFAULT = 64
INNER_DST_MAX = 16
DECAP_VNI_MAX = 16
MAC_PATTERN = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"


@dataclass(frozen=True)
class DecapStage(Stage):
    """Remove the outermost of ``tunnels`` the packet carries, or the outer headers up to
    and including the user header ``header`` (followed by ``inner``: an IP packet or an
    Ethernet frame).  ``vni``: VXLAN and GENEVE packets of these VNIs only.  Other packets go
    on unchanged."""

    kind: ClassVar[str] = "decap"
    tunnels: tuple[str, ...] = ()
    header: str | None = None
    inner: str = "ip"
    vni: tuple[int, ...] = ()  # vxlan, geneve: only these VNIs (empty: any)

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.tunnels:
            d["tunnels"] = list(self.tunnels)
        if self.header is not None:
            d["header"] = self.header
            d["inner"] = self.inner
        if self.vni:
            d["vni"] = list(self.vni)
        return d


@dataclass(frozen=True)
class EncapStage(Stage):
    """Put every packet that reaches it into ``tunnel``.

    IP tunnels (vxlan, geneve: the whole Ethernet frame; gre, ipip: the IP packet) get an
    outer IPv4 or IPv6 header from ``src`` to ``dst`` (``ttl``), with the outer Ethernet addresses
    ``src_mac``/``dst_mac`` (default: the frame's own).  A packet whose outer IP packet would
    exceed ``mtu`` bytes gets ``too_big`` (``drop``, or ``pass``: on unchanged), counted.
    ``inner_dst`` (IP tunnels): only packets to one of these prefixes are put in the tunnel;
    the others go on unchanged (counted ``skipped``).
    ``vlan`` pushes a tag ``vid``/``pcp``; a frame already tagged gets its outer tag
    rewritten (``tagged: rewrite``) or a second tag (``tagged: push``).
    """

    kind: ClassVar[str] = "encap"
    tunnel: str = "vxlan"
    src: str | None = None
    dst: str | None = None
    vni: int = 0
    key: int | None = None
    dport: int = 0
    ttl: int = ENCAP_TTL_DEFAULT
    src_mac: str | None = None
    dst_mac: str | None = None
    mtu: int = ENCAP_MTU_DEFAULT
    too_big: str = "drop"
    vid: int = 0
    pcp: int = 0
    tagged: str = "rewrite"
    inner_dst: tuple[str, ...] = ()  # only packets to these prefixes (empty: every packet)

    @property
    def l2(self) -> bool:
        """The tunnel carries the whole Ethernet frame (vxlan, geneve)."""
        return self.tunnel in UDP_DPORT_DEFAULT

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "tunnel": self.tunnel}
        if self.tunnel == "vlan":
            d.update(vid=self.vid, pcp=self.pcp, tagged=self.tagged)
            return d
        d.update(src=self.src, dst=self.dst, ttl=self.ttl, mtu=self.mtu, too_big=self.too_big)
        if self.tunnel in UDP_DPORT_DEFAULT:
            d.update(vni=self.vni, dport=self.dport)
        if self.key is not None:
            d["key"] = self.key
        if self.inner_dst:
            d["inner_dst"] = list(self.inner_dst)
        if self.src_mac:
            d["src_mac"] = self.src_mac
        if self.dst_mac:
            d["dst_mac"] = self.dst_mac
        return d


def parse_decap(obj: Any, where: Where, protocols: tuple[str, ...]) -> DecapStage:
    body = check.mapping({} if obj is None else obj, where,
                         allowed=("name", "tunnels", "header", "inner", "vni"))
    name = stage_name(body, where, "decap")
    raw = check.sequence(body.get("tunnels", []), where / "tunnels", what="a list of tunnels")
    tunnels: list[str] = []
    for i, t in enumerate(raw):
        t = check.choice(t, where / "tunnels" / i, tuple(DECAP_TUNNELS))
        needs = DECAP_TUNNELS[t]
        if not set(needs) & set(protocols):
            raise (where / "tunnels" / i).error(
                f"decap of {t} needs protocol {' or '.join(needs)} in protocols: (the parser "
                "finds the tunnel)", given=t, hint=f"add {needs[0]} to protocols:")
        if t in tunnels:
            raise (where / "tunnels" / i).error("tunnel listed twice", given=t)
        tunnels.append(t)
    header = None
    if "header" in body:
        header = check.string(body["header"], where / "header", what="a header name")
        graph = parser_graph(protocols)
        inst = graph.instances.get(header)
        if inst is None:
            users = [n for n in graph.instances if n not in _library_headers()]
            raise (where / "header").error(
                "no such header in the pipeline's protocols", given=header,
                allowed=", ".join(users) or None,
                hint="name a header instance of a protocol file listed in protocols: "
                     "(e.g. tenant of examples/tenant.p4)")
        if inst.stack is not None or inst.type.varbit_field is not None:
            raise (where / "header").error(
                "decap removes a header of fixed size only (not a header stack or one with a "
                "varbit field)", given=header, hint="name a fixed-size header")
    inner = check.choice(body.get("inner", "ip"), where / "inner", DECAP_INNER)
    if "inner" in body and header is None:
        raise (where / "inner").error("inner: applies to header: only (the tunnels say what "
                                      "they carry)", key=True, hint="remove inner:")
    vnis: list[int] = []
    if "vni" in body:
        raw_vni = body["vni"] if isinstance(body["vni"], list) else [body["vni"]]
        if not {"vxlan", "geneve"} & set(tunnels):
            raise (where / "vni").error("vni: applies to tunnels vxlan and geneve", key=True,
                                        hint="add vxlan or geneve to tunnels:, or remove vni:")
        if not 1 <= len(raw_vni) <= DECAP_VNI_MAX:
            raise (where / "vni").error(f"give 1 to {DECAP_VNI_MAX} VNIs", given=len(raw_vni),
                                        hint="use a second decap stage for more")
        for i, v in enumerate(raw_vni):
            vnis.append(check.integer(v, where / "vni" / i, 0, (1 << 24) - 1, what="VNI"))
    if not tunnels and header is None:
        raise where.error("decap needs tunnels: or header:",
                          hint="e.g. tunnels: [vxlan], or header: tenant")
    return DecapStage(name=name, tunnels=tuple(tunnels), header=header, inner=inner,
                      vni=tuple(vnis))


def _library_headers() -> set[str]:
    from ebplane.protocols import load_library
    return {i for m in load_library().modules.values() for i in m.instances}


def _address(obj: Any, where: Where) -> str:
    text = check.string(obj, where, what="an IP address")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise where.error("not an IP address", given=text) from None


def _mac(obj: Any, where: Where) -> str:
    text = check.string(obj, where, what="a MAC address")
    if not re.fullmatch(MAC_PATTERN, text):
        raise where.error("not a MAC address", given=text, allowed="xx:xx:xx:xx:xx:xx")
    return text.lower()


def parse_encap(obj: Any, where: Where, protocols: tuple[str, ...]) -> EncapStage:
    body = check.mapping({} if obj is None else obj, where, required=("tunnel",),
                         allowed=("name", "tunnel", "src", "dst", "vni", "key", "dport", "ttl",
                                  "src_mac", "dst_mac", "mtu", "too_big", "vid", "pcp",
                                  "tagged", "inner_dst"))
    name = stage_name(body, where, "encap")
    tunnel = check.choice(body["tunnel"], where / "tunnel", ENCAP_TUNNELS)
    ip_keys = ("src", "dst", "ttl", "src_mac", "dst_mac", "mtu", "too_big", "vni", "key",
               "dport", "inner_dst")
    vlan_keys = ("vid", "pcp", "tagged")
    wrong = [k for k in (ip_keys if tunnel == "vlan" else vlan_keys) if k in body]
    if not wrong and tunnel != "vlan":
        allowed = {"vxlan": ("vni", "dport"), "geneve": ("vni", "dport"), "gre": ("key",),
                   "ipip": ()}[tunnel]
        wrong = [k for k in ("vni", "key", "dport") if k in body and k not in allowed]
    if wrong:
        raise (where / wrong[0]).error(f"{wrong[0]}: does not apply to tunnel {tunnel}",
                                       key=True, hint=f"remove {wrong[0]}:")
    if tunnel == "vlan":
        if "vlan" not in protocols:
            raise (where / "tunnel").error("encap vlan needs protocol vlan in protocols: (to "
                                           "see the tags a frame has)", given=tunnel,
                                           hint="add vlan to protocols:")
        if "vid" not in body:
            raise where.error("encap vlan needs vid:", hint="e.g. vid: 100")
        return EncapStage(name=name, tunnel=tunnel,
                          vid=check.integer(body["vid"], where / "vid", 1, 4094, what="VLAN id"),
                          pcp=check.integer(body.get("pcp", 0), where / "pcp", 0, 7,
                                            what="priority"),
                          tagged=check.choice(body.get("tagged", "rewrite"), where / "tagged",
                                              VLAN_TAGGED))
    for k in ("src", "dst"):
        if k not in body:
            raise where.error(f"encap {tunnel} needs {k}: (an outer IP address)",
                              hint=f"e.g. {k}: 198.18.0.1")
    if "ipv4" not in protocols and "ipv6" not in protocols:
        raise (where / "tunnel").error(f"encap {tunnel} needs protocol ipv4 or ipv6 in "
                                       "protocols: (it reads the inner flow)", given=tunnel,
                                       hint="add ipv4 (and ipv6) to protocols:")
    if ("src_mac" in body) != ("dst_mac" in body):
        given = "src_mac" if "src_mac" in body else "dst_mac"
        raise (where / given).error("the outer Ethernet addresses come as a pair: src_mac: and "
                                    "dst_mac:", key=True, hint="give both, or neither (the "
                                    "frame's own addresses are kept)")
    vni = check.integer(body.get("vni", 0), where / "vni", 0, (1 << 24) - 1, what="VNI")
    key = None
    if "key" in body:
        key = check.integer(body["key"], where / "key", 0, (1 << 32) - 1, what="GRE key")
    raw_dst = body.get("inner_dst", [])
    if isinstance(raw_dst, str):
        raw_dst = [raw_dst]
    raw_dst = check.sequence(raw_dst, where / "inner_dst", what="a list of prefixes")
    if len(raw_dst) > INNER_DST_MAX:
        raise (where / "inner_dst").error(f"at most {INNER_DST_MAX} prefixes", given=len(raw_dst),
                                          hint="put the others in a second encap stage")
    inner_dst = []
    for i, text in enumerate(raw_dst):
        text = check.string(text, where / "inner_dst" / i, what="an IP prefix")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise (where / "inner_dst" / i).error("not an IP prefix", given=text) from None
        if f"ipv{net.version}" not in protocols:
            raise (where / "inner_dst" / i).error(
                f"an IPv{net.version} prefix needs protocol ipv{net.version} in protocols:",
                given=text, hint=f"add ipv{net.version} to protocols:")
        inner_dst.append(str(net))
    src, dst = _address(body["src"], where / "src"), _address(body["dst"], where / "dst")
    if (":" in src) != (":" in dst):
        raise (where / "dst").error("the outer addresses must be of one family", given=dst,
                                    hint=f"src is {src}: give dst of the same IP version")
    return EncapStage(
        name=name, tunnel=tunnel, inner_dst=tuple(inner_dst), src=src, dst=dst, vni=vni, key=key,
        dport=check.integer(body.get("dport", UDP_DPORT_DEFAULT.get(tunnel, 0)),
                            where / "dport", 0 if tunnel not in UDP_DPORT_DEFAULT else 1,
                            65535, what="UDP port"),
        ttl=check.integer(body.get("ttl", ENCAP_TTL_DEFAULT), where / "ttl", 1, 255,
                          what="TTL"),
        src_mac=_mac(body["src_mac"], where / "src_mac") if "src_mac" in body else None,
        dst_mac=_mac(body["dst_mac"], where / "dst_mac") if "dst_mac" in body else None,
        mtu=check.integer(body.get("mtu", ENCAP_MTU_DEFAULT), where / "mtu", 68, 65535,
                          what="MTU"),
        too_big=check.choice(body.get("too_big", "drop"), where / "too_big", TOO_BIG))


PARSERS = {"decap": parse_decap, "encap": parse_encap}
