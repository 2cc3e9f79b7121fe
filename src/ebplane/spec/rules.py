"""Filter rules: the typed model and its validator.

A rule is validated on its own (:func:`parse_rule`) against the protocols a
pipeline parses, so the CLI can check a rule added at run time exactly as the
spec loader checks the rules in a file.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ebplane.errors import SpecError
from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.protocol_set import KNOWN_PROTOCOLS, canonical_order, parser_graph

if TYPE_CHECKING:  # annotations only: importing ebplane.protocols loads the P4 front end
    from ebplane.protocols import FieldMatch

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ACTIONS: tuple[str, ...] = ("pass", "drop")

# IP protocol numbers of the built-in protocols a rule can name in `proto:`
PROTO_NUMBERS: dict[str, int] = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
PROTO_NAMES: dict[int, str] = {v: k for k, v in PROTO_NUMBERS.items()}
PORT_PROTOS: tuple[int, ...] = (PROTO_NUMBERS["tcp"], PROTO_NUMBERS["udp"])

RULE_KEYS: tuple[str, ...] = ("src", "dst", "proto", "sport", "dport", "vlan", "state", "match",
                              "action", "mark", "class")
MARK_MAX = 0xFFFFFFFF

# connection states a rule may match (`state:`), set by a conntrack stage before the filter;
# the value is ebp_pkt.ct_state (conntrack.h)
STATES: dict[str, int] = {"untracked": 0, "new": 1, "established": 2, "related": 3,
                          "invalid": 4}
STATE_NAMES: dict[int, str] = {v: k for k, v in STATES.items()}

# (at most 10 digits: a port is 0-65535, and a longer number is refused without converting it)
_RANGE = re.compile(r"\s*(\d{1,10})\s*-\s*(\d{1,10})\s*")


@dataclass(frozen=True)
class Rule:
    """One filter rule; every match field given must hold (None = any)."""

    action: str
    src: IPNetwork | None = None
    dst: IPNetwork | None = None
    proto: int | None = None
    sport: tuple[int, int] | None = None  # inclusive range
    dport: tuple[int, int] | None = None
    vlan: int | None = None
    # `match:` on any header field of the pipeline's protocols, sorted by field name
    match: tuple[FieldMatch, ...] = ()
    # with action pass: the skb mark (`mark:`) and skb priority (`class:` "major:minor", the
    # classid a qdisc reads from skb->priority) the packet leaves with
    mark: int | None = None
    klass: int | None = None
    # connection states (STATES values, sorted): the rule holds in any of them; None = any
    state: tuple[int, ...] | None = None
    # line in the spec file, for messages; not part of the rule's identity
    line: int | None = field(default=None, compare=False)

    def __hash__(self) -> int:
        # the dataclass hash of the compared fields, kept: stable ids hash every rule of a
        # 100k-rule table (twice), and ipaddress hashes a network in Python
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple([getattr(self, name) for name in _IDENTITY]))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def family(self) -> int:
        """4 or 6 when the rule matches addresses, else 0 (any packet)."""
        net = self.src or self.dst
        return net.version if net is not None else 0

    @classmethod
    def from_dict(cls, d: Any, *, protocols: Iterable[str] | None = None,
                  where: str | Where = "rule") -> Rule:
        """Validate and build a rule from its YAML/JSON form (see :func:`parse_rule`);
        ``protocols`` defaults to the whole library."""
        return parse_rule(d, protocols=tuple(KNOWN_PROTOCOLS) if protocols is None
                          else protocols, where=where)

    def to_dict(self) -> dict[str, Any]:
        """The rule in its YAML form; ``Rule.from_dict(r.to_dict())`` gives ``r`` back
        (without ``line``).  A new dict each call (the caller may change it); the rule keeps
        the first one made: applying 100k rules writes each rule's form three times."""
        d = self.__dict__.get("_yaml")
        if d is None:
            d = self._to_dict()
            object.__setattr__(self, "_yaml", d)  # not a field: no part of eq/hash/repr
        out = dict(d)
        if "state" in out and isinstance(out["state"], list):
            out["state"] = list(out["state"])
        if "match" in out:
            out["match"] = dict(out["match"])
        return out

    def _to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.src is not None:
            d["src"] = str(self.src)
        if self.dst is not None:
            d["dst"] = str(self.dst)
        if self.proto is not None:
            d["proto"] = PROTO_NAMES.get(self.proto, self.proto)
        for key, ports in (("sport", self.sport), ("dport", self.dport)):
            if ports is not None:
                d[key] = ports[0] if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"
        if self.vlan is not None:
            d["vlan"] = self.vlan
        if self.state is not None:
            names = [STATE_NAMES[v] for v in self.state]
            d["state"] = names[0] if len(names) == 1 else names
        if self.match:
            d["match"] = {str(m.field): match_text(m) for m in self.match}
        d["action"] = self.action
        if self.mark is not None:
            d["mark"] = self.mark
        if self.klass is not None:
            d["class"] = class_text(self.klass)
        return d

    @property
    def sets_skb(self) -> bool:
        """Whether the rule sets a mark or a class on the packets it passes."""
        return self.mark is not None or self.klass is not None


# the fields that make a rule's identity (eq and hash): all but line
_IDENTITY: tuple[str, ...] = tuple(f.name for f in fields(Rule) if f.compare)


def class_text(klass: int) -> str:
    """A class as tc writes it: hexadecimal ``major:minor``."""
    return f"{klass >> 16:x}:{klass & 0xFFFF:x}"


def _class(obj: Any, where: Where) -> int:
    """``class: "major:minor"`` (hexadecimal, as tc writes classids) or a number: the value
    for skb->priority."""
    if isinstance(obj, str):
        major, colon, minor = obj.strip().partition(":")
        try:
            if not colon or not 0 < len(major) <= 4 or not 0 < len(minor) <= 4:
                raise ValueError
            return (int(major, 16) << 16) | int(minor, 16)
        except ValueError:
            raise where.error("invalid class", given=obj,
                              allowed='"major:minor" in hexadecimal as tc writes it, '
                                      'e.g. "1:10", or a number 0-4294967295') from None
    return check.integer(obj, where, 0, MARK_MAX, what="class (skb priority)")


def parse_rule(obj: Any, *, protocols: Iterable[str], where: str | Where = "rule") -> Rule:
    """Validate one rule against the protocols the pipeline parses.

    ``where`` is the rule's location: a name used as the field path root for
    rules that come from the command line, or a :class:`Where` inside a spec.
    """
    at = Where(root=where) if isinstance(where, str) else where
    listed = frozenset(protocols)
    d = check.mapping(obj, at, allowed=RULE_KEYS, required=(), what="a rule (a mapping)")

    # each field has a fast path for the common well-formed value that builds no Where;
    # anything else (and every error) goes through the located validator
    src = _network(d["src"], at, "src", listed) if "src" in d else None
    dst = _network(d["dst"], at, "dst", listed) if "dst" in d else None
    if src is not None and dst is not None and src.version != dst.version:
        raise (at / "dst").error(f"src is IPv{src.version} but dst is IPv{dst.version}",
                                 given=str(dst),
                                 hint="one rule matches one address family; write two rules")
    family = (src or dst).version if (src or dst) is not None else 0

    proto = _proto(d["proto"], at, listed, family) if "proto" in d else None
    sport = _ports(d["sport"], at, "sport", listed, proto) if "sport" in d else None
    dport = _ports(d["dport"], at, "dport", listed, proto) if "dport" in d else None

    vlan = None
    if "vlan" in d:
        vlan = check.integer(d["vlan"], at / "vlan", 1, 4094, what="VLAN id")
        _need(at / "vlan", listed, ("vlan",), "a vlan match", vlan)

    match = _user_fields(d["match"], at / "match", listed) if "match" in d else ()
    state = _states(d["state"], at / "state") if "state" in d else None

    if "action" not in d:
        raise at.error("missing required key 'action'", allowed=" | ".join(ACTIONS))
    action = d["action"]
    if type(action) is not str or action not in ACTIONS:
        action = check.choice(action, at / "action", ACTIONS)
    mark = check.integer(d["mark"], at / "mark", 0, MARK_MAX, what="mark") \
        if "mark" in d else None
    klass = _class(d["class"], at / "class") if "class" in d else None
    for key, value in (("mark", mark), ("class", klass)):
        if value is not None and action != "pass":
            raise (at / key).error(f"{key}: applies to packets a rule passes, not to action: "
                                   f"{action}", given=d[key],
                                   hint=f"set action: pass or remove {key}:")
    return Rule(action=action, src=src, dst=dst, proto=proto, sport=sport, dport=dport,
                vlan=vlan, match=match, state=state, mark=mark, klass=klass, line=at.line)


def _need(where: Where, listed: frozenset[str], any_of: tuple[str, ...], what: str,
          given: Any) -> None:
    """Raise unless one of ``any_of`` is in the pipeline's protocols."""
    if listed.isdisjoint(any_of):
        names = " or ".join(any_of)
        raise where.error(f"{what} needs protocol {names} in protocols: "
                          f"[{', '.join(canonical_order(listed))}]", given=given,
                          hint=f"add {any_of[0]} to the pipeline's protocols: list")


# an IPv4 address or prefix as ipaddress writes it (no leading zeros)
_IPV4 = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\."
                   r"(0|[1-9][0-9]{0,2})(?:/(0|[1-9][0-9]?))?")


@functools.lru_cache(maxsize=1 << 16)
def _quick_ipv4(text: str) -> ipaddress.IPv4Network | None:
    """``text`` as an IPv4 network when it is one written canonically without host bits
    (what ``ip_network(text, strict=True)`` gives, about 5x faster), else None.  Cached:
    the prefixes of a large ACL repeat."""
    m = _IPV4.fullmatch(text)
    if m is None:
        return None
    a, b, c, d, plen = m.groups()
    a, b, c, d = int(a), int(b), int(c), int(d)
    bits = 32 if plen is None else int(plen)
    if a > 255 or b > 255 or c > 255 or d > 255 or bits > 32:
        return None
    addr = (a << 24) | (b << 16) | (c << 8) | d
    if addr & ((1 << (32 - bits)) - 1):
        return None
    return ipaddress.IPv4Network((addr, bits))


def stored_network(text: str) -> IPNetwork:
    """A network as ``str(net)`` wrote it (a rule stored by ebplane itself)."""
    return _quick_ipv4(text) or ipaddress.ip_network(text)


def _network(obj: Any, at: Where, key: str, listed: frozenset[str]) -> IPNetwork:
    if type(obj) is str and "ipv4" in listed:
        net = _quick_ipv4(obj.strip())
        if net is not None:
            return net
    return _network_at(obj, at / key, listed)


def _network_at(obj: Any, where: Where, listed: frozenset[str]) -> IPNetwork:
    if isinstance(obj, (ipaddress.IPv4Network, ipaddress.IPv6Network,
                        ipaddress.IPv4Address, ipaddress.IPv6Address)):
        obj = str(obj)
    if not isinstance(obj, str):
        raise where.error(f"expected an address or CIDR string, got {check.type_name(obj)}",
                          given=obj, hint='quote the address, e.g. "2001:db8::1"')
    try:
        net = ipaddress.ip_network(obj.strip(), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(obj.strip(), strict=False)
        except ValueError:
            raise where.error("invalid address or CIDR", given=obj,
                              allowed="an IPv4/IPv6 address or prefix, e.g. 198.18.0.0/24") from None
        raise where.error("host bits set in prefix", given=obj,
                          hint=f"did you mean {loose}?") from None
    _need(where, listed, (f"ipv{net.version}",), f"an IPv{net.version} address", obj)
    return net


def _proto(obj: Any, at: Where, listed: frozenset[str], family: int) -> int:
    if type(obj) is str and obj in listed and obj in PROTO_NUMBERS:
        ip_version = KNOWN_PROTOCOLS[obj]
        if not family or len(ip_version) != 1 or ip_version[0] == f"ipv{family}":
            return PROTO_NUMBERS[obj]
    return _proto_at(obj, at / "proto", listed, family)


def _proto_at(obj: Any, where: Where, listed: frozenset[str], family: int) -> int:
    if isinstance(obj, str):
        if obj not in PROTO_NUMBERS:
            raise where.error("unknown protocol", given=obj,
                              allowed=" | ".join(PROTO_NUMBERS) + " | 0-255")
        number = PROTO_NUMBERS[obj]
    else:
        number = check.integer(obj, where, 0, 255, what="IP protocol number")
    # a number with a name needs the same parser as the name, so that
    # to_dict() (which writes the name) always validates again
    name = PROTO_NAMES.get(number)
    if name is not None:
        _need(where, listed, (name,), f"proto {name}", obj)
        ip_version = KNOWN_PROTOCOLS[name]
        if family and len(ip_version) == 1 and ip_version[0] != f"ipv{family}":
            other = "icmpv6" if name == "icmp" else "icmp"
            raise where.error(f"proto {name} never matches IPv{family} addresses", given=obj,
                              hint=f"use proto {other} for IPv{family}")
    else:
        _need(where, listed, ("ipv4", "ipv6"), "a proto match", obj)
    return number


def _states(obj: Any, where: Where) -> tuple[int, ...]:
    """``state: new`` or ``state: [established, related]``."""
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise where.error("state: names no state", allowed=" | ".join(STATES),
                          hint="remove state:, or name a state")
    out = set()
    for item in items:
        if not isinstance(item, str) or item not in STATES:
            raise where.error("unknown connection state", given=item,
                              allowed=" | ".join(STATES))
        out.add(STATES[item])
    return tuple(sorted(out))


def _ports(obj: Any, at: Where, key: str, listed: frozenset[str],
           proto: int | None) -> tuple[int, int]:
    if proto in PORT_PROTOS or (proto is None and ("tcp" in listed or "udp" in listed)):
        if type(obj) is int and 0 <= obj <= 65535:
            return obj, obj
        if type(obj) is str:
            m = _RANGE.fullmatch(obj.strip())
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if lo <= hi <= 65535:
                    return lo, hi
    return _ports_at(obj, at / key, listed, proto)


def _ports_at(obj: Any, where: Where, listed: frozenset[str],
              proto: int | None) -> tuple[int, int]:
    if proto is not None and proto not in PORT_PROTOS:
        raise where.error("ports need proto tcp or udp (or no proto: both)",
                          given=PROTO_NAMES.get(proto, proto), allowed="tcp | udp")
    if proto is None:
        _need(where, listed, ("tcp", "udp"), "a port match", obj)
    if isinstance(obj, str):
        text = obj.strip()
        m = _RANGE.fullmatch(text)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
        elif text.isdecimal() and len(text) <= 10:
            lo = hi = int(text)
        else:
            raise where.error("invalid port or port range", given=obj,
                              allowed='0-65535 or "lo-hi"')
        for port in (lo, hi):
            if port > 65535:
                raise where.error("port out of range", given=obj, allowed="0-65535")
        if lo > hi:
            raise where.error("port range is reversed", given=obj,
                              hint=f'write "{hi}-{lo}"')
        return lo, hi
    port = check.integer(obj, where, 0, 65535, what="port")
    return port, port


def match_text(m: FieldMatch) -> int | str:
    """A ``match:`` value in the form :meth:`ParserGraph.parse_match` reads back."""
    if m.kind == "exact":
        return m.lo
    if m.kind == "range":
        return f"{m.lo:#x}-{m.hi:#x}"
    return f"{m.lo:#x}/{m.mask:#x}"


def _user_fields(obj: Any, where: Where, listed: frozenset[str]) -> tuple[FieldMatch, ...]:
    """``match: {header.field: value | value/mask | lo-hi}`` checked against the parse graph
    of the pipeline's protocols (library and users' .p4 files)."""
    if not isinstance(obj, dict):
        raise where.error(f"expected a mapping of protocol.field: value, "
                          f"got {check.type_name(obj)}", given=obj)
    if not obj:
        raise where.error("match: names no field", hint="remove match:, or add header.field: value")
    graph = parser_graph(listed)
    out: dict[str, FieldMatch] = {}
    for key, value in obj.items():
        at = where / str(key)
        proto, dot, _ = str(key).partition(".")
        if not dot:
            raise at.error("expected a key of the form protocol.field", given=key, key=True)
        header = proto.split("[")[0]
        if header not in graph.instances:
            raise at.error(f"user protocol field {key!r} needs protocol {header!r} in protocols: "
                           f"[{', '.join(canonical_order(listed))}]", given=key, key=True,
                           allowed=", ".join(graph.instances),
                           hint="list the protocol (a library name or a .p4 file) under protocols:")
        try:
            fp = graph.resolve_field(str(key))
        except SpecError as e:
            raise at.error(e.reason, given=key, allowed=e.allowed, hint=e.hint, key=True) from None
        try:
            m = graph.parse_match(str(key), value)
        except SpecError as e:
            raise at.error(e.reason, given=value, allowed=e.allowed, hint=e.hint) from None
        if str(fp) in out:
            raise at.error(f"field {fp} is matched twice", given=key, key=True,
                           hint="write each field once")
        out[str(fp)] = m
    return tuple(out[k] for k in sorted(out))
