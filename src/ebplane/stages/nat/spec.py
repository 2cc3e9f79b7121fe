"""The spec of the ``nat`` stage kind: source NAT (masquerade) and port forwards (DNAT), IPv4
and IPv6 (NAT66).

```yaml
- nat:
    masquerade: {from: [198.18.1.0/24], interface: eth1, ports: [1024, 32767]}
    forwards: [{proto: tcp, port: 8080, to: 198.18.1.2, to_port: 80}]
    size: 65536
    when_full: drop
    timeouts: {tcp: 3600}
```

The stage runs in a ``tc-egress`` pipeline on the outside interface: there it translates
sources (new masqueraded flows, replies of forwarded ones); the code generator adds a
``tc-ingress`` program on the same interface that translates destinations (replies of
masqueraded flows, new forwarded ones) before the kernel routes them (see docs/l4.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.stages import Stage, stage_name

NAT_SIZE_DEFAULT = 65536
NAT_SIZE_MAX = 1 << 22
NAT_WHEN_FULL: tuple[str, ...] = ("drop", "pass")
# the kernel's own connections use 32768-60999 (ip_local_port_range): stay below them
NAT_PORTS_DEFAULT = (1024, 32767)
NAT_PROTOS = {"tcp": 6, "udp": 17}
NAT_FORWARDS_MAX = 64
NAT_FROM_MAX = 16
# seconds a translation lives without packets
NAT_TIMEOUTS_DEFAULT: dict[str, int] = {
    "tcp_syn": 60,          # no reply seen yet
    "tcp": 3600,            # replied
    "tcp_close": 10,        # FIN or RST seen
    "udp": 60,
    "icmp": 30,
}
NAT_TIMEOUT_MAX = 7 * 24 * 3600


@dataclass(frozen=True)
class Forward:
    """A port forward: ``proto`` to ``port`` of the outside address goes to ``to``:``to_port``."""
    proto: str
    port: int
    to: str
    to_port: int

    def to_dict(self) -> dict[str, Any]:
        return {"proto": self.proto, "port": self.port, "to": self.to, "to_port": self.to_port}


@dataclass(frozen=True)
class NatStage(Stage):
    """Masquerade (``masquerade``: sources in ``masq_from`` leave with ``address`` /
    ``address6``, or the first IPv4 / global IPv6 address of ``interface``, and a port from
    ``ports`` that no other translation to the same remote end uses) and port forwards; a
    translation table of ``size`` connections (both directions) with ``timeouts`` and a
    ``when_full`` policy."""

    kind: ClassVar[str] = "nat"
    hooks: ClassVar[tuple[str, ...] | None] = ("tc-egress",)
    masq_from: tuple[str, ...] = ()
    interface: str | None = None
    address: str | None = None
    address6: str | None = None
    ports: tuple[int, int] = NAT_PORTS_DEFAULT
    forwards: tuple[Forward, ...] = ()
    size: int = NAT_SIZE_DEFAULT
    prealloc: bool = False
    when_full: str = "drop"
    timeouts: tuple[tuple[str, int], ...] = field(
        default_factory=lambda: tuple(NAT_TIMEOUTS_DEFAULT.items()))

    @property
    def masquerade(self) -> bool:
        return bool(self.masq_from)

    @property
    def families(self) -> set[int]:
        """The address families the stage translates (from its prefixes and forwards)."""
        return {ipaddress.ip_network(p).version for p in self.masq_from} | \
            {ipaddress.ip_address(f.to).version for f in self.forwards}

    def timeout(self, name: str) -> int:
        return dict(self.timeouts)[name]

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "size": self.size, "when_full": self.when_full}
        if self.prealloc:
            d["prealloc"] = True
        if self.masquerade:
            m: dict[str, Any] = {"from": list(self.masq_from), "ports": list(self.ports)}
            if self.interface:
                m["interface"] = self.interface
            if self.address:
                m["address"] = self.address
            if self.address6:
                m["address6"] = self.address6
            d["masquerade"] = m
        else:
            if self.address:
                d["address"] = self.address
            if self.address6:
                d["address6"] = self.address6
        if self.interface and not self.masquerade:
            d["interface"] = self.interface
        if self.forwards:
            d["forwards"] = [f.to_dict() for f in self.forwards]
        changed = {k: v for k, v in self.timeouts if NAT_TIMEOUTS_DEFAULT[k] != v}
        if changed:
            d["timeouts"] = changed
        return d


def _ip(obj: Any, where: Where, what: str, version: int | None = None) -> str:
    s = check.string(obj, where, what=what)
    try:
        a = ipaddress.ip_address(s)
    except ValueError:
        a = None
    if a is None or (version and a.version != version):
        kind = {4: "an IPv4", 6: "an IPv6", None: "an IP"}[version]
        raise where.error(f"not {kind} address ({what})", given=s,
                          hint="write an address such as 198.18.2.1" if version != 6 else
                               "write an address such as 2001:db8:2::1")
    return str(a)


def _port(obj: Any, where: Where) -> int:
    return check.integer(obj, where, 1, 65535, what="port")


def parse_nat(obj: Any, where: Where, protocols: tuple[str, ...]) -> NatStage:
    body = check.mapping({} if obj is None else obj, where,
                         allowed=("name", "masquerade", "forwards", "address", "address6",
                                  "interface", "size", "prealloc", "when_full", "timeouts"))
    name = stage_name(body, where, "nat")
    if not {"ipv4", "ipv6"} & set(protocols):
        raise where.error("nat needs protocol ipv4 or ipv6 in protocols:",
                          given=list(protocols),
                          hint="add ipv4 (and tcp, udp, icmp) to protocols:")
    size, when_full, prealloc, timeouts = check.table(
        body, where, size=NAT_SIZE_DEFAULT, size_max=NAT_SIZE_MAX,
        size_what="table size (connections)", when_full=NAT_WHEN_FULL,
        timeouts=NAT_TIMEOUTS_DEFAULT, timeout_max=NAT_TIMEOUT_MAX)
    address = _ip(body["address"], where / "address", "outside IPv4 address", 4) \
        if "address" in body else None
    address6 = _ip(body["address6"], where / "address6", "outside IPv6 address", 6) \
        if "address6" in body else None
    interface = check.string(body["interface"], where / "interface", what="an interface name") \
        if "interface" in body else None
    masq_from: list[str] = []
    ports = NAT_PORTS_DEFAULT
    if body.get("masquerade") is not None:
        w = where / "masquerade"
        m = check.mapping(body["masquerade"], w, allowed=("from", "interface", "address",
                                                          "address6", "ports"),
                          required=("from",))
        for i, p in enumerate(check.sequence(m["from"], w / "from", what="a list of prefixes")):
            try:
                masq_from.append(str(ipaddress.ip_network(check.string(p, w / "from" / i),
                                                          strict=False)))
            except ValueError:
                raise (w / "from" / i).error("not an IP prefix", given=p,
                                             hint="write the inside network, e.g. "
                                                  "198.18.1.0/24 or 2001:db8:1::/64") from None
        if not masq_from or len(masq_from) > NAT_FROM_MAX:
            raise (w / "from").error(f"masquerade needs 1 to {NAT_FROM_MAX} inside prefixes",
                                     given=len(masq_from), hint="list the inside networks")
        if "address" in m:
            address = _ip(m["address"], w / "address", "masquerade IPv4 address", 4)
        if "address6" in m:
            address6 = _ip(m["address6"], w / "address6", "masquerade IPv6 address", 6)
        if "interface" in m:
            interface = check.string(m["interface"], w / "interface", what="an interface name")
        if "ports" in m:
            pr = check.sequence(m["ports"], w / "ports", what="[first, last]")
            if len(pr) != 2:
                raise (w / "ports").error("ports is [first, last]", given=pr,
                                          hint="e.g. ports: [1024, 32767]")
            ports = (_port(pr[0], w / "ports" / 0), _port(pr[1], w / "ports" / 1))
            if ports[0] > ports[1]:
                raise (w / "ports").error("first port above last", given=list(ports),
                                          hint="write [first, last]")
    forwards: list[Forward] = []
    seen: set[tuple[str, int]] = set()
    for i, f in enumerate(check.sequence(body.get("forwards", []) or [], where / "forwards",
                                         what="a list of port forwards")):
        w = where / "forwards" / i
        f = check.mapping(f, w, allowed=("proto", "port", "to", "to_port"),
                          required=("proto", "port", "to"))
        fw = Forward(check.choice(f["proto"], w / "proto", tuple(NAT_PROTOS)),
                     _port(f["port"], w / "port"), _ip(f["to"], w / "to", "inside server"),
                     _port(f.get("to_port", f["port"]), w / "to_port"))
        fam = ipaddress.ip_address(fw.to).version
        if (fw.proto, fw.port, fam) in seen:
            raise w.error("port forwarded twice", given=f"{fw.proto}/{fw.port}",
                          hint="one forward per protocol, port and address family")
        seen.add((fw.proto, fw.port, fam))
        forwards.append(fw)
    if len(forwards) > NAT_FORWARDS_MAX:
        raise (where / "forwards").error(f"at most {NAT_FORWARDS_MAX} port forwards",
                                         given=len(forwards), hint="remove some")
    if not masq_from and not forwards:
        raise where.error("nat needs masquerade: or forwards:", given=sorted(body),
                          hint="add masquerade: {from: [INSIDE/PREFIX], interface: OUTSIDE}")
    if address is None and address6 is None and interface is None:
        raise where.error("nat needs the outside address: address:, address6: or interface:",
                          given=sorted(body), hint="add interface: OUTSIDE_IFACE (its first "
                                                   "IPv4 and global IPv6 addresses are used) "
                                                   "or address: A.B.C.D")
    families = {ipaddress.ip_network(p).version for p in masq_from} | \
        {ipaddress.ip_address(f.to).version for f in forwards}
    for fam in sorted(families):
        if f"ipv{fam}" not in protocols:
            raise where.error(f"nat translates IPv{fam} here: protocols: needs ipv{fam}",
                              given=list(protocols), hint=f"add ipv{fam} to protocols:")
        if interface is None and (address if fam == 4 else address6) is None:
            key = "address" if fam == 4 else "address6"
            raise where.error(f"nat translates IPv{fam} here but has no outside IPv{fam} "
                              f"address", given=sorted(body),
                              hint=f"add {key}: or interface:")
    return NatStage(name=name, masq_from=tuple(masq_from), interface=interface, address=address,
                    address6=address6,
                    ports=ports, forwards=tuple(forwards), size=size, prealloc=prealloc,
                    when_full=when_full,
                    timeouts=tuple(timeouts.items()))


PARSERS = {"nat": parse_nat}
