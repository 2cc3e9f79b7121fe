"""The spec of the ``balancer`` stage: an L4 load balancer for virtual IPs in XDP.

```yaml
- balancer:
    name: lb
    encap: ipip            # or gue (UDP to gue_port, GUE variant 1: the IP packet follows)
    gue_port: 6080
    source: {ipv4: 198.18.0.1, ipv6: "2001:db8::1"}   # outer source addresses
    mtu: 1500              # largest encapsulated packet
    table_size: 65537      # Maglev lookup table entries per VIP, a prime
    connections: 65536     # connection table (LRU) entries
    max_backends: 256      # backend slots of the stage (all VIPs)
    vips:
      - vip: 198.18.10.1
        port: 80
        proto: tcp
        backends: [198.18.20.2, {address: 198.18.20.3, weight: 2, state: down}]
```

The backends of the spec are the initial set; ``ebplane backends`` changes them at run
time (the stage's maps hold the live set; see docs/l4.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.stages import Stage, stage_name

LB_ENCAPS: tuple[str, ...] = ("ipip", "gue")
LB_PROTOS: dict[str, int] = {"tcp": 6, "udp": 17}
LB_STATES: tuple[str, ...] = ("up", "down")
LB_TABLE_DEFAULT = 65537
LB_TABLE_MAX = 1_000_003
LB_TABLE_ENTRIES_MAX = 1 << 24        # all VIPs' tables, both halves
LB_CONNECTIONS_DEFAULT = 65536
LB_CONNECTIONS_MAX = 1 << 24
LB_BACKENDS_DEFAULT = 256
LB_BACKENDS_MAX = 65536
LB_WEIGHT_MAX = 1000
LB_GUE_PORT_DEFAULT = 6080
LB_MTU_DEFAULT = 1500


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


@dataclass(frozen=True)
class Backend:
    address: str
    weight: int = 1
    state: str = "up"

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "weight": self.weight, "state": self.state}


@dataclass(frozen=True)
class Vip:
    address: str
    port: int
    proto: str
    backends: tuple[Backend, ...] = ()

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version

    @property
    def key(self) -> str:
        """How commands name the VIP: ``ADDRESS:PORT/PROTO`` (IPv6 in brackets)."""
        a = f"[{self.address}]" if self.family == 6 else self.address
        return f"{a}:{self.port}/{self.proto}"

    def to_dict(self) -> dict[str, Any]:
        return {"vip": self.address, "port": self.port, "proto": self.proto,
                "backends": [b.to_dict() for b in self.backends]}


@dataclass(frozen=True)
class BalancerStage(Stage):
    """VIPs to backends: Maglev over the backends up, a connection table, IPIP/GUE
    encapsulation for direct server return (see balancer.h)."""

    kind: ClassVar[str] = "balancer"
    hooks: ClassVar[tuple[str, ...]] = ("xdp",)
    vips: tuple[Vip, ...] = ()
    encap: str = "ipip"
    gue_port: int = LB_GUE_PORT_DEFAULT
    source4: str | None = None
    source6: str | None = None
    mtu: int = LB_MTU_DEFAULT
    table_size: int = LB_TABLE_DEFAULT
    connections: int = LB_CONNECTIONS_DEFAULT
    max_backends: int = LB_BACKENDS_DEFAULT

    def vip(self, key: str | None) -> Vip:
        """The VIP named ``ADDRESS:PORT/PROTO`` (or the only one when ``key`` is None)."""
        from ebplane.errors import NotFound, UsageError
        if key is None:
            if len(self.vips) == 1:
                return self.vips[0]
            raise UsageError(f"balancer '{self.name}' has {len(self.vips)} VIPs",
                             hint="name one with --vip ADDRESS:PORT/PROTO ("
                                  + ", ".join(v.key for v in self.vips) + ")")
        for v in self.vips:
            if v.key == key or v.key == normalise_vip_key(key):
                return v
        raise NotFound(f"balancer '{self.name}' has no VIP {key}",
                       hint="VIPs: " + ", ".join(v.key for v in self.vips))

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "encap": self.encap, "mtu": self.mtu,
                             "table_size": self.table_size, "connections": self.connections,
                             "max_backends": self.max_backends,
                             "vips": [v.to_dict() for v in self.vips]}
        if self.encap == "gue":
            d["gue_port"] = self.gue_port
        src = {k: v for k, v in (("ipv4", self.source4), ("ipv6", self.source6)) if v}
        if src:
            d["source"] = src
        return d


def normalise_vip_key(key: str) -> str:
    """``ADDRESS:PORT/PROTO`` in the form :attr:`Vip.key` writes it."""
    try:
        addr_port, proto = key.rsplit("/", 1)
        addr, port = addr_port.rsplit(":", 1)
        ip = ipaddress.ip_address(addr.strip("[]"))
        a = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{a}:{int(port)}/{proto.lower()}"
    except ValueError:
        return key


def _address(obj: Any, where: Where, what: str) -> str:
    text = check.string(obj, where, what=what)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise where.error(f"invalid {what}", given=text,
                          hint="an IPv4 or IPv6 address, no prefix length") from None
    return str(ip)


def parse_backend(obj: Any, where: Where) -> Backend:
    """A backend: an address, or ``{address, weight, state}``."""
    if isinstance(obj, str):
        obj = {"address": obj}
    body = check.mapping(obj, where, allowed=("address", "weight", "state"),
                         required=("address",), what="an address or a mapping")
    return Backend(address=_address(body["address"], where / "address", "backend address"),
                   weight=check.integer(body.get("weight", 1), where / "weight", 0,
                                        LB_WEIGHT_MAX, what="weight"),
                   state=check.choice(body.get("state", "up"), where / "state", LB_STATES))


def parse_balancer(obj: Any, where: Where, protocols: tuple[str, ...]) -> BalancerStage:
    body = check.mapping({} if obj is None else obj, where,
                         allowed=("name", "vips", "encap", "gue_port", "source", "mtu",
                                  "table_size", "connections", "max_backends"),
                         required=("vips",))
    name = stage_name(body, where, "balancer")
    encap = check.choice(body.get("encap", "ipip"), where / "encap", LB_ENCAPS)
    gue_port = check.integer(body.get("gue_port", LB_GUE_PORT_DEFAULT), where / "gue_port",
                             1, 65535, what="UDP port")
    mtu = check.integer(body.get("mtu", LB_MTU_DEFAULT), where / "mtu", 576, 9000,
                        what="MTU")
    size = check.integer(body.get("table_size", LB_TABLE_DEFAULT), where / "table_size", 7,
                         LB_TABLE_MAX, what="Maglev table size")
    if not is_prime(size):
        raise (where / "table_size").error("the Maglev table size must be a prime", given=size,
                                           hint="use a prime such as 65537, 131071 or 4099")
    conns = check.integer(body.get("connections", LB_CONNECTIONS_DEFAULT),
                          where / "connections", 16, LB_CONNECTIONS_MAX,
                          what="connection table size")
    max_be = check.integer(body.get("max_backends", LB_BACKENDS_DEFAULT),
                           where / "max_backends", 1, LB_BACKENDS_MAX, what="backend slots")
    src = check.mapping(body.get("source", {}) or {}, where / "source",
                        allowed=("ipv4", "ipv6"))
    source4 = _address(src["ipv4"], where / "source" / "ipv4", "outer source") \
        if "ipv4" in src else None
    source6 = _address(src["ipv6"], where / "source" / "ipv6", "outer source") \
        if "ipv6" in src else None
    for fam, a, key in ((4, source4, "ipv4"), (6, source6, "ipv6")):
        if a and ipaddress.ip_address(a).version != fam:
            raise (where / "source" / key).error(f"source.{key} must be an IPv{fam} address",
                                                 given=a)
    vips: list[Vip] = []
    seen: set[str] = set()
    n_backends = 0
    raw_vips = check.sequence(body["vips"], where / "vips")
    if not raw_vips:
        raise (where / "vips").error("a balancer needs at least one VIP")
    for i, rv in enumerate(raw_vips):
        w = where / "vips" / i
        rb = check.mapping(rv, w, allowed=("vip", "port", "proto", "backends"),
                           required=("vip", "port"))
        addr = _address(rb["vip"], w / "vip", "VIP address")
        port = check.integer(rb["port"], w / "port", 1, 65535, what="port")
        proto = check.choice(rb.get("proto", "tcp"), w / "proto", tuple(LB_PROTOS))
        fam = ipaddress.ip_address(addr).version
        if f"ipv{fam}" not in protocols or proto not in protocols:
            raise w.error(f"VIP {addr} {proto} needs ipv{fam} and {proto} in protocols:",
                          given=list(protocols), hint=f"add ipv{fam} and {proto} to protocols:")
        backends = tuple(parse_backend(b, w / "backends" / j)
                         for j, b in enumerate(check.sequence(rb.get("backends", []) or [],
                                                              w / "backends")))
        addrs = [b.address for b in backends]
        if len(set(addrs)) != len(addrs):
            raise (w / "backends").error("a backend is listed twice", given=addrs)
        for j, b in enumerate(backends):
            if (source4 if b.family == 4 else source6) is None:
                raise (w / "backends" / j).error(
                    f"backend {b.address} needs an outer IPv{b.family} source",
                    hint=f"set source: {{ipv{b.family}: ADDRESS}} (this host's address "
                         "toward the backends)")
        v = Vip(addr, port, proto, backends)
        if v.key in seen:
            raise w.error(f"VIP {v.key} is listed twice")
        seen.add(v.key)
        n_backends += len(backends)
        vips.append(v)
    if n_backends > max_be:
        raise (where / "max_backends").error(
            f"the VIPs list {n_backends} backends, more than max_backends", given=max_be,
            hint=f"raise max_backends to {n_backends} or more")
    if len(vips) * 2 * size > LB_TABLE_ENTRIES_MAX:
        raise (where / "table_size").error(
            f"{len(vips)} VIPs x 2 halves x {size} entries exceed {LB_TABLE_ENTRIES_MAX}",
            hint="use a smaller prime table_size")
    return BalancerStage(name=name, vips=tuple(vips), encap=encap, gue_port=gue_port,
                         source4=source4, source6=source6, mtu=mtu, table_size=size,
                         connections=conns, max_backends=max_be)


PARSERS = {"balancer": parse_balancer}
