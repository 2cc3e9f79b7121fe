"""Filter rules as boxes: the one definition of what a rule matches, shared by both compiled
forms (``inline``: rules as constant branches in the program; ``tree``: a decision tree over
the boxes in BPF arrays) and by the reference matcher the tests hold them to.

A packet is a point in ten dimensions (``DIMS``); a rule is a box, one closed range per
dimension, plus an optional condition on the user area (``match:`` fields).  Values a
packet cannot carry in a field stand for its absence, so that presence is part of the box:

========  =====================================  ================================
dim       the packet's value                     absent
========  =====================================  ================================
family    0 (not IP), 4 or 6                     -
proto     IP protocol / last IPv6 next header    256 (not IP)
vlan      outer VLAN id                          0x1000 (untagged)
sport     TCP/UDP source port                    0x10000 (no L4 header, later fragment)
dport     destination port                       0x10000
src_hi    source address bytes 0-7, big-endian   0 (IPv4 uses bytes 0-3; not IP: 0)
src_lo    bytes 8-15                             0
dst_hi    destination address, bytes 0-7         0
dst_lo    bytes 8-15                             0
ct_state  connection state (a conntrack stage)   0 (untracked: no conntrack stage)
========  =====================================  ================================

A port rule without ``proto`` is two boxes (TCP and UDP); a ``match:`` range is as many
boxes as it has aligned value/mask blocks.  Boxes keep their rule's priority (its position):
the lowest priority among the boxes that hold the packet wins.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from ebplane.codegen.layout import Field, Layout
from ebplane.codegen.p4c import USER_BYTES, UserLayout
from ebplane.errors import UsageError
from ebplane.spec.rules import PORT_PROTOS, Rule

# -- shared with filter.h: defined here once; gen.py writes them into each program as
# #defines (EBP_D_<DIM>, EBP_FLT_DIMS, EBP_FLT_*_NONE, EBP_ACT_*) and structs ------------

DIMS: tuple[str, ...] = ("family", "proto", "vlan", "sport", "dport",
                         "src_hi", "src_lo", "dst_hi", "dst_lo", "ct_state")
D = {name: i for i, name in enumerate(DIMS)}
NDIMS = len(DIMS)
PROTO_NONE = 0x100        # EBP_FLT_PROTO_NONE
VLAN_NONE = 0x1000        # EBP_FLT_VLAN_NONE
PORT_NONE = 0x10000       # EBP_FLT_PORT_NONE
ANY = (0, (1 << 64) - 1)  # the whole range of a dimension

ACT_PASS = 0
ACT_DROP = 1
ACTION_CODES: dict[str, int] = {"pass": ACT_PASS, "drop": ACT_DROP}
ACT_KIND = 0xFF           # EBP_ACT_KIND: the low byte is pass or drop; above it, flags:
ACT_MARK = 0x100          # EBP_ACT_MARK: set the skb mark (rule.mark)
ACT_CLASS = 0x200         # EBP_ACT_CLASS: set the skb priority (rule.klass)


def action_code(rule: Rule) -> int:
    """``struct ebp_flt_rule.action`` of a rule: pass/drop and the mark/class flags."""
    return ACTION_CODES[rule.action] | (ACT_MARK if rule.mark is not None else 0) | \
        (ACT_CLASS if rule.klass is not None else 0)


RULE_LAYOUT = Layout("ebp_flt_rule", [
    Field("prio", "__u32", comment="position in the rule list: lower wins"),
    Field("rule_id", "__u32", comment="stable id: index of the rule's counters"),
    Field("action", "__u32", comment="EBP_ACT_*"),
    Field("mark", "__u32", comment="with EBP_ACT_MARK: the skb mark"),
    Field("klass", "__u32", comment="with EBP_ACT_CLASS: the skb priority (a tc classid)")],
    "what a classification returns")
BOX_LAYOUT = Layout("ebp_flt_box", [
    Field("lo", "__u64", NDIMS, "per dimension (EBP_D_*): the box's range"),
    Field("hi", "__u64", NDIMS),
    Field("user_mask", "__u32", 4, "(ebp_pkt.user32[i] & user_mask[i]) == user_value[i]"),
    Field("user_value", "__u32", 4),
    Field("user_need", "__u32", comment="ebp_pkt.user_valid bits the packet must have"),
    Field("rule", RULE_LAYOUT)],
    "one box: a rule, or one of the boxes a rule expands into (ports without proto: TCP and\n"
    " * UDP; a match: range: one box per aligned block)")
# the codecs, made from the layouts: every member a number, in order (Box.pack)
BOX = struct.Struct(BOX_LAYOUT.flat_format())
RULE = struct.Struct(RULE_LAYOUT.flat_format())

_ZERO_USER = (0, 0, 0, 0)


class Match(NamedTuple):
    """The winning rule for a packet."""

    prio: int
    rule_id: int
    action: int  # ACT_*


@dataclass(frozen=True)
class Box:
    """One box of a rule: ``lo``/``hi`` per dimension, the user-area condition
    (``(user32[i] & user_mask[i]) == user_value[i]`` for the words as loaded on the
    little-endian target, and ``user_valid & user_need == user_need``)."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    prio: int
    rule_id: int
    action: int
    user_need: int = 0
    user_mask: tuple[int, int, int, int] = _ZERO_USER
    user_value: tuple[int, int, int, int] = _ZERO_USER
    mark: int = 0
    klass: int = 0

    def pack(self, prio_scale: int = 1) -> bytes:
        """``struct ebp_flt_box``; the priority times ``prio_scale`` (installed tables leave
        gaps between priorities, so that a rule inserted later can take one in between)."""
        return BOX.pack(*self.lo, *self.hi, *self.user_mask, *self.user_value,
                        self.user_need, self.prio * prio_scale, self.rule_id, self.action,
                        self.mark, self.klass)

    def used_dims(self) -> set[int]:
        return {d for d in range(NDIMS) if (self.lo[d], self.hi[d]) != ANY}

    def holds(self, key: Sequence[int], user: Sequence[int], user_valid: int) -> bool:
        if any(not self.lo[d] <= key[d] <= self.hi[d] for d in range(NDIMS)):
            return False
        if self.user_need:
            if user_valid & self.user_need != self.user_need:
                return False
            if any(u & m != v for u, m, v in zip(user, self.user_mask, self.user_value)):
                return False
        return True


# -- rules -> boxes ---------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def value_blocks(lo: int, hi: int, width: int) -> tuple[tuple[int, int], ...]:
    """The fewest (value, mask) pairs whose union is exactly ``lo..hi`` of ``width`` bits
    (greedy: from ``lo`` the largest aligned power-of-two block that does not pass ``hi``)."""
    full = (1 << width) - 1
    if not 0 <= lo <= hi <= full:
        raise ValueError(f"bad range {lo}-{hi} for {width} bits")
    blocks = []
    while lo <= hi:
        size = lo & -lo if lo else full + 1
        while lo + size - 1 > hi:
            size >>= 1
        blocks.append((lo, full & ~(size - 1)))
        lo += size
    return tuple(blocks)


def _address_ranges(net) -> tuple[tuple[int, int], tuple[int, int]]:
    """(hi range, lo range) of a prefix over the two 64-bit halves of a 16-byte address
    (integer arithmetic: the ipaddress properties cost more than the whole box)."""
    return _prefix_ranges(net.version, int(net.network_address), net.prefixlen)


@lru_cache(maxsize=65536)
def _prefix_ranges(version: int, addr: int, plen: int) -> tuple[tuple[int, int], tuple[int, int]]:
    bits = 32 if version == 4 else 128
    host = (1 << (bits - plen)) - 1
    first, last = addr & ~host, addr | host
    if version == 4:
        # an IPv4 packet's bytes 4-15 are zero: any value may stand there
        first, last = first << 96, (last << 96) | ((1 << 96) - 1)
    hi = (first >> 64, last >> 64)
    lo = (first & ANY[1], last & ANY[1]) if hi[0] == hi[1] else ANY
    return hi, lo


def user_blocks(rule: Rule, layout: UserLayout) -> tuple[int, tuple[tuple[tuple[int, ...],
                                                                          tuple[int, ...]], ...]]:
    """``(user_need, ((mask words, value words), ...))`` of a rule's ``match:`` fields in the
    program's user area (a range is several blocks; several fields, their product)."""
    need = 0
    combos: list[tuple[int, int]] = [(0, 0)]  # (value, mask) of the whole area, big-endian
    for m in rule.match:
        try:
            uf = layout.field(str(m.field))
        except KeyError:
            raise UsageError(f"rule {rule.to_dict()} matches {m.field}, which the running "
                             "program does not extract",
                             hint="re-apply the pipeline so its parser extracts the field") \
                from None
        need |= 1 << uf.bit
        shift = 8 * (USER_BYTES - uf.offset - uf.size)
        blocks = ((m.lo, m.mask),) if m.lo == m.hi else value_blocks(m.lo, m.hi, m.field.width)
        combos = [(v | (bv << shift), mk | (bm << shift)) for v, mk in combos
                  for bv, bm in blocks]
    out = []
    for v, mk in combos:
        words_v = struct.unpack("<4I", v.to_bytes(USER_BYTES, "big"))
        words_m = struct.unpack("<4I", mk.to_bytes(USER_BYTES, "big"))
        out.append((words_m, words_v))
    return need, tuple(out)


def rule_boxes(rule: Rule, prio: int, rule_id: int,
               layout: UserLayout = UserLayout()) -> list[Box]:
    """The boxes of one rule (see the module doc)."""
    lo = [ANY[0]] * NDIMS
    hi = [ANY[1]] * NDIMS

    def put(dim: str, r: tuple[int, int]) -> None:
        lo[D[dim]], hi[D[dim]] = r

    if rule.family:
        put("family", (rule.family, rule.family))
    for side, net in (("src", rule.src), ("dst", rule.dst)):
        if net is not None:
            h, low = _address_ranges(net)
            put(f"{side}_hi", h)
            put(f"{side}_lo", low)
    if rule.vlan is not None:
        put("vlan", (rule.vlan, rule.vlan))
    if rule.sport is not None:
        put("sport", rule.sport)
    if rule.dport is not None:
        put("dport", rule.dport)
    states = _state_runs(rule.state) if rule.state is not None else (None,)
    if rule.proto is not None:
        protos: tuple[int | None, ...] = (rule.proto,)
    elif rule.sport is not None or rule.dport is not None:
        protos = PORT_PROTOS
    else:
        protos = (None,)
    need, users = user_blocks(rule, layout) if rule.match else (0, ((_ZERO_USER, _ZERO_USER),))
    action = action_code(rule)
    out = []
    for p in protos:
        if p is not None:
            put("proto", (p, p))
        for run in states:
            if run is not None:
                put("ct_state", run)
            for mask, value in users:
                out.append(Box(tuple(lo), tuple(hi), prio, rule_id, action, need, mask, value,
                               rule.mark or 0, rule.klass or 0))
    return out


def _state_runs(states: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Sorted state values as ranges of consecutive values (one box each)."""
    runs: list[list[int]] = []
    for v in states:
        if runs and runs[-1][1] + 1 == v:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return tuple((a, b) for a, b in runs)


def compile_boxes(rules: Sequence[Rule], rule_ids: Sequence[int],
                  layout: UserLayout = UserLayout()) -> list[Box]:
    """All boxes of a rule list, in priority order (priority = position)."""
    if len(rule_ids) != len(rules):
        raise ValueError(f"{len(rules)} rules but {len(rule_ids)} rule ids")
    out: list[Box] = []
    for prio, (rule, rid) in enumerate(zip(rules, rule_ids)):
        out.extend(rule_boxes(rule, prio, rid, layout))
    return out


# -- the packet side --------------------------------------------------------------------------

def packet_key(fields: Mapping[str, Any]) -> tuple[list[int], tuple[int, ...], int]:
    """``(key, user words, user_valid)`` of a packet given as a mapping: ``family`` (0 non-IP,
    4, 6), ``src``/``dst`` (address bytes), ``proto``, ``sport``, ``dport``, ``vlan``,
    ``has_l4``, ``has_vlan``, ``user`` (16 bytes), ``user_valid`` and ``ct_state``; absent means 0/False."""
    family = fields.get("family", 0)
    is_ip = family in (4, 6)
    key = [0] * NDIMS
    key[D["family"]] = family if is_ip else 0
    key[D["proto"]] = fields.get("proto", 0) if is_ip else PROTO_NONE
    key[D["vlan"]] = fields.get("vlan", 0) if fields.get("has_vlan") else VLAN_NONE
    l4 = is_ip and bool(fields.get("has_l4"))
    key[D["sport"]] = fields.get("sport", 0) if l4 else PORT_NONE
    key[D["dport"]] = fields.get("dport", 0) if l4 else PORT_NONE
    for side in ("src", "dst"):
        a = int.from_bytes(bytes(fields.get(side, b"")).ljust(16, b"\0")[:16], "big") \
            if is_ip else 0
        key[D[f"{side}_hi"]] = a >> 64
        key[D[f"{side}_lo"]] = a & ANY[1]
    key[D["ct_state"]] = fields.get("ct_state", 0)
    user = struct.unpack("<4I", bytes(fields.get("user", b"")).ljust(USER_BYTES, b"\0"))
    return key, user, fields.get("user_valid", 0)


def match_boxes(boxes: Sequence[Box], fields: Mapping[str, Any]) -> Match | None:
    """The reference: the first box (in priority order) that holds the packet."""
    key, user, valid = packet_key(fields)
    for b in boxes:
        if b.holds(key, user, valid):
            return Match(b.prio, b.rule_id, b.action)
    return None


def match_packet(rules: Sequence[Rule], fields: Mapping[str, Any], *,
                 rule_ids: Sequence[int] | None = None,
                 layout: UserLayout = UserLayout()) -> Match | None:
    """The verdict every compiled form must reach for a packet (rule ids default to 0..n-1)."""
    ids = range(len(rules)) if rule_ids is None else rule_ids
    return match_boxes(compile_boxes(rules, ids, layout), fields)


def address_bytes(text: str) -> bytes:
    """An address as the packet mapping wants it (helper for callers and tests)."""
    return ipaddress.ip_address(text).packed
