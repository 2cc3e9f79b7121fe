"""The composed, specialised parser: the IR a code generator walks.

A :class:`ParserGraph` holds only the states reachable with the protocols a
pipeline lists, the header instances those states extract, which fields of
each header some stage (or the parser itself) reads -- the others are skipped
by offset -- and the :class:`ParseInfoLayout`, the struct in which the
generated parser hands its results to the stages.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from ebplane.errors import SpecError
from ebplane.protocols import ir, printer
from ebplane.protocols.library import load_library

# (a stack index of at most 6 digits: longer is no field name, and is refused unconverted)
_FIELD_RE = re.compile(r"([A-Za-z_]\w*)(?:\[(\d{1,6})\])?\.([A-Za-z_]\w*)")
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
ABSENT = 0xFFFF  # value of an *_off slot when the header is not in the packet


@dataclass(frozen=True)
class FieldPath:
    """A header field a stage can read: ``ipv4.dstAddr``, ``vlan[1].vid``.

    For a header stack, ``index`` None means element 0 (the outermost).
    """

    instance: str
    index: int | None
    field: str
    width: int

    def __str__(self) -> str:
        idx = "" if self.index is None else f"[{self.index}]"
        return f"{self.instance}{idx}.{self.field}"


@dataclass(frozen=True)
class LayoutSlot:
    """One member of the parse-info struct.

    ``kind``: ``offset`` (u16 byte offset of a header in the packet, 0xFFFF when
    absent), ``count`` (u8 number of stack elements extracted), ``field`` (a
    header field's value), ``meta`` (a parse-info field), ``end`` (u16 offset
    where parsing stopped: the payload).  Values of up to 32 bits are host-order
    integers of ``size`` bytes; wider ones (MACs, IPv6 addresses) are byte
    arrays in network order (``is_bytes``).
    """

    name: str
    kind: str
    offset: int
    size: int
    width: int
    instance: str | None = None
    index: int | None = None
    field: str | None = None

    @property
    def is_bytes(self) -> bool:
        return self.width > 32


@dataclass(frozen=True)
class ParseInfoLayout:
    slots: tuple[LayoutSlot, ...]
    size: int

    def slot(self, name: str) -> LayoutSlot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(name)


def value_size(width: int) -> int:
    """Bytes a value of ``width`` bits takes in the parse-info struct."""
    for size in (1, 2, 4):
        if width <= size * 8:
            return size
    return (width + 7) // 8


def build_layout(instances: dict[str, ir.Instance], needed: dict[str, tuple[str, ...]],
                 meta: dict[str, ir.MetaField]) -> ParseInfoLayout:
    """Lay out the parse-info struct: aligned members, largest alignment first, no holes."""
    slots: list[tuple[str, str, int, int, str | None, int | None, str | None]] = []
    for inst in instances.values():
        indexes = [None] if inst.stack is None else list(range(inst.stack))
        if inst.stack is not None:
            slots.append((f"{inst.name}_count", "count", 1, 8, inst.name, None, None))
        for i in indexes:
            base = inst.name if i is None else f"{inst.name}_{i}"
            slots.append((f"{base}_off", "offset", 2, 16, inst.name, i, None))
            for fname in needed.get(inst.name, ()):
                w = inst.type.field(fname).width
                slots.append((f"{base}_{fname}", "field", value_size(w), w, inst.name, i, fname))
    for m in meta.values():
        slots.append((f"info_{m.name}", "meta", value_size(m.width), m.width, None, None, m.name))
    slots.append(("end_off", "end", 2, 16, None, None, None))

    def align(size: int) -> int:
        return size if size in (1, 2, 4) else 1
    slots.sort(key=lambda s: -align(s[2]))  # stable: keeps declaration order within a size
    out, offset = [], 0
    for name, kind, size, width, inst, idx, fname in slots:
        out.append(LayoutSlot(name, kind, offset, size, width, inst, idx, fname))
        offset += size
    return ParseInfoLayout(tuple(out), (offset + 3) // 4 * 4)


def resolve_field(instances: dict[str, ir.Instance], name: str) -> FieldPath:
    """Check a ``header.field`` / ``header[i].field`` name against the selected protocols."""
    m = _FIELD_RE.fullmatch(name.strip())
    if m is None:
        raise SpecError("expected HEADER.FIELD or HEADER[INDEX].FIELD", field=name,
                        hint="e.g. ipv4.dstAddr or vlan[1].vid")
    iname, index, fname = m.group(1), m.group(2), m.group(3)
    inst = instances.get(iname)
    if inst is None:
        owner = next((mod.name for mod in load_library().modules.values()
                      if iname in mod.instances), None)
        raise SpecError(f"unknown header '{iname}'", field=name,
                        allowed=", ".join(instances),
                        hint=f"add {owner} to protocols:" if owner else
                        "name a header of the listed protocols")
    f = inst.type.field(fname)
    if f is None or f.varbit:
        raise SpecError(f"header '{iname}' has no field '{fname}'", field=name,
                        allowed=", ".join(x.name for x in inst.type.fields if not x.varbit))
    idx = None
    if index is not None:
        if inst.stack is None or int(index) >= inst.stack:
            bound = "is not a stack" if inst.stack is None else f"has {inst.stack} elements"
            raise SpecError(f"header '{iname}' {bound}", field=name,
                            hint=f"write {iname}.{fname}" if inst.stack is None else
                            f"use an index from 0 to {inst.stack - 1}")
        idx = int(index)
    return FieldPath(iname, idx, fname, f.width)


@dataclass(frozen=True)
class FieldMatch:
    """A rule's ``match: {field: value}``: matches when ``lo <= field & mask <= hi``.

    An exact value has ``lo == hi`` and a full mask, ``value/mask`` and address
    prefixes have ``lo == hi == value & mask``, a range ``lo-hi`` a full mask.
    """

    field: FieldPath
    lo: int
    hi: int
    mask: int

    @property
    def kind(self) -> str:
        if self.lo != self.hi:
            return "range"
        return "exact" if self.mask == (1 << self.field.width) - 1 else "mask"


def parse_match(instances: dict[str, ir.Instance], key: str, value: int | str) -> FieldMatch:
    """Parse ``value | value/mask | lo-hi`` for field ``key``.

    Values are integers (decimal or 0x hex), IPv4/IPv6 addresses (with /prefix
    length) for 32/128-bit fields, or MAC addresses for 48-bit fields.
    """
    fp = resolve_field(instances, key)
    full = (1 << fp.width) - 1
    forms = "an integer, value/mask, lo-hi" + {32: ", an IPv4 address[/len]",
                                                 128: ", an IPv6 address[/len]",
                                                 48: ", a MAC address"}.get(fp.width, "")

    def bad(why: str) -> SpecError:
        return SpecError(why, field=key, given=value, allowed=forms)

    def number(text: str) -> int:
        text = text.strip()
        try:
            if fp.width == 48 and _MAC_RE.fullmatch(text):
                return int(text.replace(":", ""), 16)
            if fp.width in (32, 128) and ("." in text or ":" in text):
                addr = ipaddress.ip_address(text)
                if addr.max_prefixlen != fp.width:
                    raise bad(f"an IPv{addr.version} address does not fit bit<{fp.width}>")
                return int(addr)
            return int(text, 0)
        except ValueError:
            raise bad(f"not a value for bit<{fp.width}>") from None

    def check(v: int) -> int:
        if not 0 <= v <= full:
            raise bad(f"value does not fit in bit<{fp.width}>")
        return v

    if isinstance(value, bool) or not isinstance(value, int | str):
        raise bad("expected a number or a string")
    if isinstance(value, int):
        v = check(value)
        return FieldMatch(fp, v, v, full)
    text = value.strip()
    if "/" in text:
        base, _, suffix = text.partition("/")
        v = check(number(base))
        if fp.width in (32, 128) and ("." in base or ":" in base):
            try:
                plen = int(suffix)
            except ValueError:
                raise bad("expected a prefix length after /") from None
            if not 0 <= plen <= fp.width:
                raise bad(f"prefix length must be 0..{fp.width}")
            mask = full ^ ((1 << (fp.width - plen)) - 1)
        else:
            mask = check(number(suffix))
        return FieldMatch(fp, v & mask, v & mask, mask)
    if "-" in text and not text.startswith("-"):
        lo_text, _, hi_text = text.partition("-")
        lo, hi = check(number(lo_text)), check(number(hi_text))
        if lo > hi:
            raise bad("empty range: write the lower bound first")
        return FieldMatch(fp, lo, hi, full)
    v = check(number(text))
    return FieldMatch(fp, v, v, full)


@dataclass
class ParserGraph:
    """A parser specialised for a list of protocols (see :func:`build_parser`)."""

    protocols: tuple[str, ...]
    start: str
    states: dict[str, ir.ParseState]
    header_types: dict[str, ir.HeaderType]
    instances: dict[str, ir.Instance]
    meta: dict[str, ir.MetaField]
    consts: dict[str, ir.ConstDecl]
    needed: dict[str, tuple[str, ...]]  # instance -> fields to load, wire order
    layout: ParseInfoLayout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = build_layout(self.instances, self.needed, self.meta)

    # -- queries --------------------------------------------------------------

    def edges(self) -> list[tuple[str, str, str]]:
        """``(state, condition, target)`` for every case, in evaluation order."""
        out = []
        for st in self.states.values():
            t = st.transition
            if isinstance(t, ir.Direct):
                out.append((st.name, "always", t.target))
            else:
                out += [(st.name, printer.condition(c, t.keys), c.target) for c in t.cases]
        return out

    def resolve_field(self, name: str) -> FieldPath:
        """Check a ``header.field`` / ``header[i].field`` name against the selected protocols."""
        return resolve_field(self.instances, name)

    def parse_match(self, key: str, value: int | str) -> FieldMatch:
        """A rule's ``match: {key: value}`` checked against this parser's fields."""
        return parse_match(self.instances, key, value)

    # -- output ---------------------------------------------------------------

    def to_p4(self) -> str:
        """A complete P4-16 parser (headers, structs, parser block) for other targets."""
        lines = ["// Generated by ebplane for protocols: " + ", ".join(self.protocols),
                 "#include <core.p4>", ""]
        used = {c.name for st in self.states.values() for c in _consts(st)}
        lines += [f"const bit<{c.width}> {c.name} = {printer.number(c.value, c.width)};"
                  for c in self.consts.values() if c.name in used]
        if used:
            lines.append("")
        types = dict.fromkeys(inst.type.name for inst in self.instances.values())
        for t in types:
            lines += printer.header_type(self.header_types[t]) + [""]
        lines.append("struct headers_t {")
        for inst in self.instances.values():
            stack = f"[{inst.stack}]" if inst.stack is not None else ""
            lines.append(f"    {inst.type.name}{stack} {inst.name};")
        lines += ["}", ""]
        params = "packet_in pkt, out headers_t hdr"
        if self.meta:
            lines.append("struct parse_info_t {")
            lines += [f"    bit<{m.width}> {m.name};" for m in self.meta.values()]
            lines += ["}", ""]
            params += ", inout parse_info_t info"
        lines.append(f"parser EbplaneParser({params}) {{")
        body: list[str] = []
        if self.start != "start":
            body += ["state start {", f"    transition {self.start};", "}"]
        for st in self.states.values():
            body += ([""] if body else []) + printer.state(st)
        lines += [("    " + b) if b else "" for b in body]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        """Human text: states, the parse graph as ``state --cond--> state``, headers, layout."""
        out = [f"protocols: {', '.join(self.protocols)}", f"start: {self.start}", "", "states:"]
        for st in self.states.values():
            out.append(f"  {st.name} ({st.protocol})")
            for s in st.statements:
                out.append(f"    {self._statement_text(s)}")
        out += ["", "parse graph:"]
        out += [f"  {a} --{cond}--> {b}" for a, cond, b in self.edges()]
        out += ["", "headers:"]
        for inst in self.instances.values():
            stack = f"[{inst.stack}]" if inst.stack is not None else ""
            need = set(self.needed.get(inst.name, ()))
            loaded = [f"{f.name}@{inst.type.bit_offset(f.name)}:{f.width}"
                      for f in inst.type.fields if f.name in need]
            skipped = [f.name for f in inst.type.fields if f.name not in need]
            out.append(f"  {inst.name}{stack}: {inst.type.name}, {inst.type.byte_size} bytes; "
                       f"load {' '.join(loaded) or '-'}; skip {' '.join(skipped) or '-'}")
        out += ["", f"parse-info layout ({self.layout.size} bytes):"]
        for s in self.layout.slots:
            kind = f"u8[{s.size}]" if s.is_bytes else f"u{s.size * 8}"
            out.append(f"  {s.offset:4d}  {kind:7s} {s.name:28s} {_slot_meaning(s)}")
        return "\n".join(out) + "\n"

    def _statement_text(self, s: ir.Statement) -> str:
        if isinstance(s, ir.Extract):
            inst = self.instances[s.instance]
            return (f"extract {inst.name}{'.next' if s.next else ''} "
                    f"({inst.type.byte_size} bytes)")
        return printer.statement(s)

    def to_dict(self) -> dict:
        """JSON-ready form of :meth:`describe` (for ``--json``)."""
        return {
            "protocols": list(self.protocols),
            "start": self.start,
            "states": [{"name": st.name, "protocol": st.protocol,
                        "statements": [printer.statement(s) for s in st.statements],
                        "transitions": [{"condition": c, "target": b}
                                        for a, c, b in self.edges() if a == st.name]}
                       for st in self.states.values()],
            "headers": {inst.name: {
                "type": inst.type.name, "bytes": inst.type.byte_size, "stack": inst.stack,
                "fields": [{"name": f.name, "width": f.width,
                            "bit_offset": inst.type.bit_offset(f.name),
                            "needed": f.name in self.needed.get(inst.name, ())}
                           for f in inst.type.fields]}
                for inst in self.instances.values()},
            "parse_info": {"size": self.layout.size,
                           "slots": [{"name": s.name, "kind": s.kind, "offset": s.offset,
                                      "size": s.size, "width": s.width, "bytes": s.is_bytes}
                                     for s in self.layout.slots]},
        }

    def parse_bytes(self, pkt: bytes) -> dict:
        """Run the parser on one packet in Python: the reference for generated parsers."""
        from ebplane.protocols.interp import run  # interp imports graph types
        return run(self, pkt)


def _slot_meaning(s: LayoutSlot) -> str:
    elem = s.instance if s.index is None else f"{s.instance}[{s.index}]"
    if s.kind == "offset":
        return f"offset of {elem}, {ABSENT:#x} if absent"
    if s.kind == "count":
        return f"number of {s.instance} headers extracted"
    if s.kind == "field":
        return f"{elem}.{s.field} (bit<{s.width}>)"
    if s.kind == "meta":
        return f"info.{s.field} (bit<{s.width}>)"
    return "offset where parsing stopped (payload)"


def _consts(st: ir.ParseState):
    """Named constants a state uses (the P4 export declares only those)."""
    return (n for e in ir.state_exprs(st) for n in ir.walk(e) if isinstance(n, ir.Const) and n.name)
