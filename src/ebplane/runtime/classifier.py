"""Filter rules -> tuple-space-search tables, laid out as in ``codegen/bpf/filter.h``.

Each rule becomes one or more hash entries, each under a *shape*: which fields
it matches and with which masks (prefix lengths, port masks).  The BPF filter
masks the packet once per shape and does one lookup; the lowest priority found
wins.  Shapes are sorted by the best priority they hold so the probe loop can
stop early.  :func:`match_packet` is the same algorithm in Python: it is the
executable definition the BPF side must agree with, and the tests prove it equal
to plain first-match evaluation of the rules.

Match semantics (what a packet must have for a shape to be probed):

- ``family`` 4/6: the packet is IPv4/IPv6; 0: any packet.
- ``EBP_F_PROTO``: the packet is IP (IPv4 or IPv6); key.proto = its protocol
  (IPv6: last next header), else key.proto = 0.
- ``EBP_F_SPORT`` / ``EBP_F_DPORT``: the packet has an L4 header with ports
  (TCP or UDP, not a non-first fragment).
- ``EBP_F_VLAN``: the packet carries a VLAN tag; key.vlan = its id & vlan_mask.
- ``EBP_F_USER``: the packet has the header of every ``match:`` field of the shape
  (``user_valid & user_need == user_need``); key.user = the user area & user_mask.
- Ports and addresses are always masked (a mask of 0 gives 0).
- The loop over shapes stops at the first shape whose ``min_prio`` is above the
  best priority found so far (``filter_stage.h``: ``ebp_flt_probe``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, NamedTuple

from ebplane.codegen.p4c import USER_BYTES, UserLayout
from ebplane.errors import UsageError
from ebplane.spec.rules import PORT_PROTOS, Rule

# -- filter.h ---------------------------------------------------------------------------------

MAX_SHAPES = 32  # EBP_FLT_MAX_SHAPES

F_PROTO = 0x01
F_SPORT = 0x02
F_DPORT = 0x04
F_VLAN = 0x08
F_SRC = 0x10
F_DST = 0x20
F_USER = 0x40

ACT_PASS = 0
ACT_DROP = 1
ACTION_CODES: dict[str, int] = {"pass": ACT_PASS, "drop": ACT_DROP}

GEN_BIT = 1 << 31  # in ebp_flt_key.shape

VLAN_MASK = 0x0FFF

# little-endian x86-64 / BPF layouts; the natural alignment of every field already holds,
# so "<" (no padding) gives the same offsets as the C compiler (checked by the tests)
KEY = struct.Struct("<IBBHHH16s16s16s")        # struct ebp_flt_key
VALUE = struct.Struct("<III")                   # struct ebp_flt_rule
SHAPE = struct.Struct("<BBHHHI16s16sI16s")      # struct ebp_flt_shape
CONFIG = struct.Struct("<IIII")           # struct ebp_flt_config (gen, nshapes[2], pad)

_ZERO16 = bytes(16)


# -- model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """One probe of the rules hash: the fields matched and their masks (``ebp_flt_shape``)."""

    family: int
    fields: int
    vlan_mask: int
    sport_mask: int
    dport_mask: int
    src_mask: bytes  # 16 bytes, network order; IPv4 uses the first 4
    dst_mask: bytes
    min_prio: int    # best (lowest) priority among the shape's entries
    user_need: int = 0          # user_valid bits the packet must have (EBP_F_USER)
    user_mask: bytes = bytes(USER_BYTES)  # mask of the user area, big-endian fields

    def pack(self) -> bytes:
        return SHAPE.pack(self.family, self.fields, self.vlan_mask, self.sport_mask,
                          self.dport_mask, self.min_prio, self.src_mask, self.dst_mask,
                          self.user_need, self.user_mask)


class Match(NamedTuple):
    """The winning entry for a packet."""

    prio: int
    rule_id: int
    action: int  # ACT_*


@dataclass(frozen=True)
class Classifier:
    """A compiled rule set: shapes sorted by ``min_prio`` and hash entries for a batch update.

    ``keys`` holds the ``n`` keys of generation 0 (``n * KEY.size`` bytes), ``values`` the
    matching ``ebp_flt_rule`` values (``n * VALUE.size`` bytes), in the same order.
    """

    shapes: tuple[Shape, ...]
    keys: bytes
    values: bytes
    n: int
    user_layout: UserLayout = UserLayout()  # where the keys hold the rules' match: fields

    def key_bytes(self, gen: int) -> bytes:
        """All keys with the generation bit set to ``gen`` (0 or 1)."""
        if gen not in (0, 1):
            raise ValueError(f"generation must be 0 or 1, not {gen!r}")
        if gen == 0:
            return self.keys
        keys = bytearray(self.keys)
        # the shape index is < MAX_SHAPES, so the top byte of the little-endian u32 is 0
        keys[3::KEY.size] = b"\x80" * self.n
        return bytes(keys)

    def shape_bytes(self) -> bytes:
        """The packed shapes, to be written at ``gen * MAX_SHAPES + i`` of the shapes array."""
        return b"".join(s.pack() for s in self.shapes)

    @cached_property
    def table(self) -> dict[bytes, bytes]:
        """Generation-0 key -> value, as the BPF hash holds it (for :func:`match_packet`)."""
        ks, vs = KEY.size, VALUE.size
        return {self.keys[i * ks:(i + 1) * ks]: self.values[i * vs:(i + 1) * vs]
                for i in range(self.n)}


# -- packing ----------------------------------------------------------------------------------

def pack_key(shape_index: int, gen: int, *, family: int = 0, proto: int = 0, vlan: int = 0,
             sport: int = 0, dport: int = 0, src: bytes = b"", dst: bytes = b"",
             user: bytes = b"") -> bytes:
    """One ``ebp_flt_key``; ``src``/``dst``/``user`` are masked bytes (zero-padded)."""
    return KEY.pack(shape_index | (GEN_BIT if gen else 0), family, proto, vlan, sport, dport,
                    src, dst, user)


def pack_config(gen: int, nshapes: tuple[int, int]) -> bytes:
    """The ``ebp_flt_config`` entry: active generation and shapes in use per generation."""
    return CONFIG.pack(gen, nshapes[0], nshapes[1], 0)


@lru_cache(maxsize=None)
def prefix_mask(version: int, prefixlen: int) -> bytes:
    """Network-order mask of a prefix, padded to 16 bytes."""
    bits = 32 if version == 4 else 128
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)
    return mask.to_bytes(bits // 8, "big").ljust(16, b"\0")


@lru_cache(maxsize=4096)
def value_blocks(lo: int, hi: int, width: int) -> tuple[tuple[int, int], ...]:
    """The fewest (value, mask) pairs whose union is exactly ``lo..hi`` of ``width`` bits.

    Greedy: from ``lo`` take the largest aligned power-of-two block that does not
    pass ``hi``.  A 16-bit range needs at most 30 blocks.
    """
    full = (1 << width) - 1
    if not 0 <= lo <= hi <= full:
        raise ValueError(f"bad range {lo}-{hi} for {width} bits")
    blocks = []
    while lo <= hi:
        size = lo & -lo if lo else full + 1  # largest block aligned at lo
        while lo + size - 1 > hi:
            size >>= 1
        blocks.append((lo, full & ~(size - 1)))
        lo += size
    return tuple(blocks)


def port_blocks(lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    """:func:`value_blocks` of a 16-bit port range."""
    return value_blocks(lo, hi, 16)


def _user_blocks(rule: Rule, layout: UserLayout) -> tuple[int, tuple[tuple[bytes, bytes], ...]]:
    """``(user_need, ((user, mask), ...))``: the user-area keys of a rule's match: fields
    (a range expands into blocks, several fields into their product)."""
    need = 0
    combos: list[tuple[int, int]] = [(0, 0)]  # (value, mask) of the whole area as integers
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
    return need, tuple((v.to_bytes(USER_BYTES, "big"), mk.to_bytes(USER_BYTES, "big"))
                       for v, mk in combos)


# -- compile ----------------------------------------------------------------------------------

def compile_rules(rules: Sequence[Rule], rule_ids: Sequence[int], *,
                  max_shapes: int = MAX_SHAPES,
                  user_layout: UserLayout = UserLayout()) -> Classifier:
    """Compile rules (priority = position in ``rules``) into shapes and hash entries.

    ``user_layout`` places the rules' ``match:`` fields in the key's user area, as the
    program's parser does (``GeneratedProgram.user_layout``).

    A key produced by two rules keeps the earlier one: the later can never win there.
    Raises UsageError when the rules need more than ``max_shapes`` shapes.
    """
    if len(rule_ids) != len(rules):
        raise ValueError(f"{len(rules)} rules but {len(rule_ids)} rule ids")
    shape_of: dict[tuple, int] = {}  # (family, fields, masks...) -> shape index
    # (signature, min_prio): shapes are created in rule order, so the rule that creates a
    # shape holds its best priority, and creation order is already min_prio order
    shape_list: list[tuple[tuple, int]] = []
    entries: dict[bytes, bytes] = {}
    no_ports = ((0, 0),)
    for prio, (rule, rule_id) in enumerate(zip(rules, rule_ids)):
        family = rule.family
        fields = 0
        src_mask = src = dst_mask = dst = _ZERO16
        if rule.src is not None:
            fields |= F_SRC
            src_mask = prefix_mask(family, rule.src.prefixlen)
            src = rule.src.network_address.packed
        if rule.dst is not None:
            fields |= F_DST
            dst_mask = prefix_mask(family, rule.dst.prefixlen)
            dst = rule.dst.network_address.packed
        sports = dports = no_ports
        if rule.sport is not None:
            fields |= F_SPORT
            sports = port_blocks(*rule.sport)
        if rule.dport is not None:
            fields |= F_DPORT
            dports = port_blocks(*rule.dport)
        if rule.proto is not None:
            protos: tuple[int, ...] = (rule.proto,)
        elif fields & (F_SPORT | F_DPORT):
            protos = PORT_PROTOS  # ports without a protocol: TCP and UDP
        else:
            protos = (0,)
        if rule.proto is not None or fields & (F_SPORT | F_DPORT):
            fields |= F_PROTO
        vlan_mask = VLAN_MASK if rule.vlan is not None else 0
        if vlan_mask:
            fields |= F_VLAN
        vlan = rule.vlan or 0
        user_need, users = _user_blocks(rule, user_layout) if rule.match else (0, ((_ZERO16,
                                                                                   _ZERO16),))
        if user_need:
            fields |= F_USER
        value = VALUE.pack(prio, rule_id, ACTION_CODES[rule.action])
        for sport, sport_mask in sports:
            for dport, dport_mask in dports:
                for user, user_mask in users:
                    sig = (family, fields, vlan_mask, sport_mask, dport_mask, src_mask,
                           dst_mask, user_need, user_mask)
                    index = shape_of.get(sig)
                    if index is None:
                        index = shape_of[sig] = len(shape_list)
                        shape_list.append((sig, prio))
                    for proto in protos:
                        key = pack_key(index, 0, family=family, proto=proto, vlan=vlan,
                                       sport=sport, dport=dport, src=src, dst=dst, user=user)
                        if key not in entries:
                            entries[key] = value
    if len(shape_list) > max_shapes:
        raise _too_many_shapes(rules, shape_list, max_shapes)
    shapes = tuple(Shape(*sig[:7], min_prio=min_prio, user_need=sig[7], user_mask=sig[8])
                   for sig, min_prio in shape_list)
    return Classifier(shapes=shapes, keys=b"".join(entries), values=b"".join(entries.values()),
                      n=len(entries), user_layout=user_layout)


def _too_many_shapes(rules: Sequence[Rule], shape_list: list[tuple[tuple, int]],
                     max_shapes: int) -> UsageError:
    culprit = shape_list[max_shapes][1]
    rule = rules[culprit]
    where = f"rule {culprit}" + (f" (line {rule.line})" if rule.line is not None else "")
    return UsageError(
        f"the rules need {len(shape_list)} shapes (distinct combinations of matched fields, "
        f"prefix lengths and port masks), more than the limit of {max_shapes}; "
        f"{where} {rule.to_dict()} introduces shape {max_shapes + 1}",
        hint="use fewer distinct prefix lengths and port ranges (a port range that is not an "
             "aligned power-of-two block expands into several shapes), or split the rules "
             "over several filter stages")


# -- reference matcher ------------------------------------------------------------------------

def _and16(value: bytes, mask: bytes) -> bytes:
    return (int.from_bytes(value.ljust(16, b"\0"), "big")
            & int.from_bytes(mask, "big")).to_bytes(16, "big")


def match_packet(classifier_or_rules: Classifier | Sequence[Rule],
                 fields: Mapping[str, Any]) -> Match | None:
    """The verdict the BPF filter reaches for a packet, computed the same way in Python.

    ``fields``: ``family`` (0 non-IP, 4, 6), ``src``/``dst`` (address bytes), ``proto``,
    ``sport``, ``dport``, ``vlan``, ``has_l4``, ``has_vlan``, ``user`` (the 16-byte user
    area) and ``user_valid`` (its present bits); absent fields are 0/False.
    Given rules instead of a classifier, they are compiled with rule ids 0..n-1.
    """
    c = classifier_or_rules
    if not isinstance(c, Classifier):
        c = compile_rules(c, range(len(c)))
    family = fields.get("family", 0)
    is_ip = family in (4, 6)
    has_l4 = bool(fields.get("has_l4")) and is_ip
    has_vlan = bool(fields.get("has_vlan"))
    src, dst = fields.get("src", b""), fields.get("dst", b"")
    user, user_valid = fields.get("user", _ZERO16), fields.get("user_valid", 0)
    best: Match | None = None
    for index, shape in enumerate(c.shapes):
        if best is not None and shape.min_prio > best.prio:
            break
        if shape.family and shape.family != family:
            continue
        if shape.fields & F_PROTO and not is_ip:
            continue
        if shape.fields & (F_SPORT | F_DPORT) and not has_l4:
            continue
        if shape.fields & F_VLAN and not has_vlan:
            continue
        if shape.fields & F_USER and user_valid & shape.user_need != shape.user_need:
            continue
        key = pack_key(index, 0, family=shape.family,
                       proto=fields.get("proto", 0) if shape.fields & F_PROTO else 0,
                       vlan=fields.get("vlan", 0) & shape.vlan_mask if has_vlan else 0,
                       sport=fields.get("sport", 0) & shape.sport_mask if has_l4 else 0,
                       dport=fields.get("dport", 0) & shape.dport_mask if has_l4 else 0,
                       src=_and16(src, shape.src_mask), dst=_and16(dst, shape.dst_mask),
                       user=_and16(user, shape.user_mask))
        value = c.table.get(key)
        if value is not None:
            found = Match(*VALUE.unpack(value))
            if best is None or found.prio < best.prio:
                best = found
    return best
