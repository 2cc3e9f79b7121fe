"""The spec of ``multicast``: frames to a group address (a multicast or broadcast MAC, an
IPv4 or IPv6 multicast address) go to every member port of the group but the one they came
in on: one DEVMAP_HASH per group, ``bpf_redirect_map`` with ``BPF_F_BROADCAST |
BPF_F_EXCLUDE_INGRESS``.  XDP only (devmap broadcast is XDP's).  Groups and their members
change at run time (``ebplane groups``), and with ``snooping: true`` they are learnt from
IGMP/MLD reports (``ebplane groups PIPELINE snoop``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.stages import Stage, stage_name
from ebplane.stages.forward.spec import _ifname

# XDP: devmap broadcast; tc-ingress: bpf_clone_redirect per member (any frame size)
MC_HOOKS: tuple[str, ...] = ("xdp", "tc-ingress")
MC_GROUPS_DEFAULT = 16
MC_GROUPS_MAX = 256
MC_MEMBERS_MAX = 64        # ports per group (max_entries of each group's DEVMAP_HASH)
MC_ADDRESSES_MAX = 4096    # group addresses of one stage
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


def parse_group_address(text: Any, where: Where) -> tuple[int, str]:
    """A group address -> (kind, canonical text): kind 0 a MAC with the group bit
    (``broadcast`` is ff:ff:ff:ff:ff:ff), 4 an IPv4 multicast address, 6 an IPv6 one."""
    if not isinstance(text, str):
        raise where.error(f"expected a group address, got {check.type_name(text)}", given=text,
                          hint="a multicast MAC (01:00:5e:...), broadcast, 224.0.0.0/4 or ff00::/8")
    t = text.strip().lower()
    if t == "broadcast":
        return 0, BROADCAST_MAC
    parts = t.replace("-", ":").split(":")
    if len(parts) == 6 and all(len(p) == 2 for p in parts):
        try:
            raw = bytes.fromhex("".join(parts))
        except ValueError:
            raw = None
        if raw is not None:
            if not raw[0] & 1:
                raise where.error(f"{text} is a unicast MAC (its first byte's group bit is 0)",
                                  given=text, hint="a group MAC has an odd first byte, "
                                                   "e.g. 01:00:5e:01:01:01")
            return 0, ":".join(parts)
    try:
        ip = ipaddress.ip_address(t)
    except ValueError:
        raise where.error(f"not a group address: {text}", given=text,
                          hint="a multicast MAC, broadcast, an IPv4 address in 224.0.0.0/4 or "
                               "an IPv6 address in ff00::/8") from None
    if not ip.is_multicast:
        raise where.error(f"{text} is not a multicast address", given=text,
                          hint="IPv4 224.0.0.0/4, IPv6 ff00::/8")
    return ip.version, str(ip)


def check_address_parsed(address: str, protocols, where: Where) -> None:
    """An IP group address needs its IP version parsed (else only MACs are looked up)."""
    kind, _ = parse_group_address(address, where)
    fam = {4: "ipv4", 6: "ipv6"}.get(kind)
    if fam and fam not in protocols:
        raise where.error(f"address {address} needs {fam} in protocols:", given=address,
                          hint=f"add {fam} to protocols: or use the group MAC address")


@dataclass(frozen=True)
class Group:
    """One multicast group: its member ports and the destination addresses that select it."""

    name: str
    members: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members), "addresses": list(self.addresses)}


@dataclass(frozen=True)
class MulticastStage(Stage):
    """Frames to a group address go to every member of the group but their ingress port.

    The IPv4/IPv6 destination is looked up first (when the pipeline parses IP), then the
    destination MAC.  Frames to no group go on to the next stage.  ``max_groups`` bounds the
    groups (also at run time).
    """

    kind: ClassVar[str] = "multicast"
    hooks: ClassVar[tuple[str, ...]] = MC_HOOKS
    groups: tuple[Group, ...] = ()
    max_groups: int = MC_GROUPS_DEFAULT
    snooping: bool = False  # copy IGMP/MLD frames to a ring buffer for `ebplane groups snoop`

    def check_hook(self, hook: str, where: Where) -> None:
        if self.snooping and hook != "xdp":
            raise (where / "snooping").error(
                "snooping works at hook xdp only", given=hook, key=True,
                hint="use hook: xdp, or list the groups (ebplane groups ... add)")

    def body(self) -> dict[str, Any]:
        d = {"name": self.name, "max_groups": self.max_groups,
             "groups": {g.name: g.to_dict() for g in self.groups}}
        if self.snooping:
            d["snooping"] = True
        return d


GROUP_NAME_PATTERN = r"[A-Za-z0-9_.-]{1,15}"


def parse_group(name: Any, obj: Any, where: Where) -> Group:
    gname = check.name(name, where, pattern=GROUP_NAME_PATTERN,
                       allowed="1-15 characters from A-Z, a-z, 0-9, _ . -")
    body = check.mapping(obj, where, allowed=("members", "addresses"), required=("addresses",))
    members: list[str] = []
    for i, m in enumerate(check.sequence(body.get("members", []) or [], where / "members",
                                         what="a list of interface names")):
        n = _ifname(m, where / "members" / i)
        if n in members:
            raise (where / "members" / i).error("member listed twice", given=n)
        members.append(n)
    if len(members) > MC_MEMBERS_MAX:
        raise (where / "members").error(f"{len(members)} members exceed {MC_MEMBERS_MAX}")
    addrs: list[str] = []
    raw = check.sequence(body["addresses"], where / "addresses", what="a list of group addresses")
    if not raw:
        raise (where / "addresses").error("a group needs at least one address",
                                          hint="e.g. addresses: [broadcast] or [239.1.1.1]")
    for i, a in enumerate(raw):
        _, text = parse_group_address(a, where / "addresses" / i)
        if text in addrs:
            raise (where / "addresses" / i).error("address listed twice", given=a)
        addrs.append(text)
    return Group(gname, tuple(members), tuple(addrs))


def parse_multicast(obj: Any, where: Where, protocols: tuple[str, ...]) -> MulticastStage:
    body = check.mapping({} if obj is None else obj, where,
                         allowed=("name", "groups", "max_groups", "snooping"))
    max_groups = check.integer(body.get("max_groups", MC_GROUPS_DEFAULT), where / "max_groups",
                               1, MC_GROUPS_MAX, what="number of groups")
    raw = body.get("groups", {}) or {}
    if not isinstance(raw, dict):
        raise (where / "groups").error(f"expected a mapping of group name -> "
                                       f"{{members, addresses}}, got {check.type_name(raw)}")
    if len(raw) > max_groups:
        raise (where / "groups").error(f"{len(raw)} groups exceed max_groups {max_groups}",
                                       hint="raise max_groups:")
    groups = tuple(parse_group(k, v, where / "groups" / k) for k, v in raw.items())
    seen: dict[str, str] = {}
    for g in groups:
        for a in g.addresses:
            if a in seen:
                raise (where / "groups" / g.name / "addresses").error(
                    f"address {a} already selects group {seen[a]}", given=a)
            seen[a] = g.name
        for a in g.addresses:
            check_address_parsed(a, protocols, where / "groups" / g.name / "addresses")
    snooping = body.get("snooping", False)
    if not isinstance(snooping, bool):
        raise (where / "snooping").error(f"expected true or false, got "
                                         f"{check.type_name(snooping)}", given=snooping)
    if snooping and not {"ipv4", "ipv6"} & set(protocols):
        raise (where / "snooping").error("snooping reads IGMP (ipv4) and MLD (ipv6) reports",
                                         hint="add ipv4 and/or ipv6 to protocols:")
    return MulticastStage(name=stage_name(body, where, "multicast"), groups=groups,
                          max_groups=max_groups, snooping=snooping)


PARSERS = {"multicast": parse_multicast}
