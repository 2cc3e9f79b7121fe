"""ParserGraph -> restricted C: the ``ebp_parse()`` every generated program calls.

The parser is generated from the pipeline's protocols (docs/p4-subset.md), so a pipeline
that lists ethernet, ipv4 and udp gets code for exactly those three headers.  One labelled
block per P4 state, ``goto`` for transitions; header stacks are bounded by their counters,
so every loop ends (the verifier sees the counter as a constant on each path).

What the parser hands the stages is ``struct ebp_pkt`` (ebplane.h).  Its well-known members
are *bound* to library header fields here (ipv4.srcAddr -> src, tcp.dstPort -> dport, ...);
a header field no stage reads and no select needs is skipped by offset, never loaded.
Fields that filter rules match with ``match:`` are copied into ``ebp_pkt.user`` at offsets
fixed at code generation (:class:`UserLayout`); the control plane packs rule keys the same way.

Semantics: any P4 reject (a header cut short, ``StackOutOfBounds``, ``NoMatch``, an explicit
``reject`` such as IPv4 ihl < 5) makes ``ebp_parse`` return ``EBP_MALFORMED``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ebplane.errors import SpecError
from ebplane.protocols import ir
from ebplane.protocols.graph import FieldPath, ParserGraph

USER_BYTES = 16  # bytes of ebp_pkt.user (EBP_USER_BYTES, generated with the parser's #defines)

# Features flag -> header fields the bound ebp_pkt members need (when the header is parsed)
WANTED_FIELDS: dict[str, tuple[str, ...]] = {
    "vlan": ("vlan.vid",),
    "ipv4": ("ipv4.srcAddr", "ipv4.dstAddr"),
    "ipv6": ("ipv6.srcAddr", "ipv6.dstAddr"),
    "tcp": ("tcp.srcPort", "tcp.dstPort"),
    "udp": ("udp.srcPort", "udp.dstPort"),
}
# fields every parse with that header loads: EBP_PKT_FRAG needs the MF bit
ALWAYS_FIELDS: tuple[str, ...] = ("ipv4.flags", "ipv4.fragOffset")


# -- the user area -----------------------------------------------------------------------------

@dataclass(frozen=True)
class UserField:
    """A ``match:`` field in ``ebp_pkt.user``: ``size`` big-endian bytes at ``offset``;
    bit ``bit`` of ``ebp_pkt.user_valid`` says the packet has the field's header."""

    name: str
    path: FieldPath | None   # None in a layout read back from a manifest without its graph
    offset: int
    size: int
    bit: int


@dataclass(frozen=True)
class UserLayout:
    """Where each ``match:`` field of a program lives in the user area (same order always)."""

    fields: tuple[UserField, ...] = ()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.fields)

    def field(self, name: str) -> UserField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> list[dict]:
        return [{"field": f.name, "offset": f.offset, "size": f.size, "bit": f.bit}
                for f in self.fields]

    @classmethod
    def from_dict(cls, items: list[dict], graph: ParserGraph | None = None) -> "UserLayout":
        """A layout as a manifest recorded it (``to_dict``); the fields' header paths are
        resolved in ``graph`` when given (the control plane needs offsets, sizes and bits
        only: without a graph ``path`` is None)."""
        return cls(tuple(UserField(d["field"], graph.resolve_field(d["field"]) if graph else None,
                                   d["offset"], d["size"], d["bit"]) for d in items))


def user_layout(graph: ParserGraph, names: Iterable[str]) -> UserLayout:
    """Lay out the ``match:`` fields ``names`` (sorted: one layout per set of names)."""
    out: list[UserField] = []
    offset = 0
    for name in sorted(set(names)):
        fp = graph.resolve_field(name)
        size = (fp.width + 7) // 8
        out.append(UserField(name, fp, offset, size, len(out)))
        offset += size
    if offset > USER_BYTES:
        sizes = ", ".join(f"{f.name} ({f.size} bytes)" for f in out)
        raise SpecError(f"the match: fields of the rules need {offset} bytes, more than the "
                        f"{USER_BYTES} bytes of the packet's user area: {sizes}",
                        field="match", hint="match on fewer or narrower fields")
    return UserLayout(tuple(out))


def needed_fields(graph: ParserGraph, wants: Iterable[str], user: UserLayout) -> set[str]:
    """Header fields the bound ebp_pkt members and the user area need (present ones only)."""
    names = set(ALWAYS_FIELDS) | {f.name for f in user.fields}
    for w in wants:
        names.update(WANTED_FIELDS.get(w, ()))
    return {n for n in names if n.split(".")[0].split("[")[0] in graph.instances}


# -- C generation ------------------------------------------------------------------------------

def _mask(width: int) -> str:
    return hex((1 << width) - 1) + ("ULL" if width > 32 else "")


def _lit(value: int) -> str:
    return (hex(value) if value > 9 else str(value)) + ("ULL" if value >= 1 << 32 else "")


def _width(e: ir.Expr) -> int | None:
    """Bits a value of ``e`` can occupy (None: unknown); a constant counts its own bits."""
    if isinstance(e, ir.Const):
        return max(e.value.bit_length(), 1)
    if isinstance(e, ir.FieldRef | ir.MetaRef | ir.Lookahead | ir.Cast):
        return e.width
    return e.width


def _var(inst: str, fname: str) -> str:
    return f"v_{inst}_{fname}"


def _read(ptr: str, bit: int, width: int) -> str:
    """C expression: the ``width``-bit big-endian field at bit ``bit`` of ``ptr``."""
    first, last = bit // 8, (bit + width - 1) // 8
    n = last - first + 1
    if n > 8:
        raise SpecError(f"a field of {width} bits at bit {bit} cannot be read as a value",
                        hint="select only on fields of at most 64 bits")
    at = f"{ptr} + {first}" if first else ptr
    load = {1: f"*(__u8 *)({at})", 2: f"bpf_ntohs(*(__be16 *)({at}))",
            4: f"bpf_ntohl(*(__be32 *)({at}))"}.get(n, f"ebp_be({at}, {n})")
    shift = n * 8 - (bit % 8) - width
    expr = f"({load} >> {shift})" if shift else load
    return f"({expr} & {_mask(width)})" if width != n * 8 else expr


class _Gen:
    """Writes one ``ebp_parse`` for a graph, its bindings and user layout."""

    def __init__(self, graph: ParserGraph, wants: set[str], user: UserLayout):
        self.g = graph
        self.wants = wants
        self.user = user
        self.lines: list[str] = []
        # header fields some parser expression reads: they get a local (last extracted value)
        self.expr_fields: dict[tuple[str, str], int] = {}
        self.meta_used: set[str] = set()
        for st in graph.states.values():
            for e in ir.state_exprs(st):
                for n in ir.walk(e):
                    if isinstance(n, ir.FieldRef):
                        if isinstance(n.index, int):
                            raise SpecError(
                                f"state '{st.name}' reads hdr.{n.instance}[{n.index}].{n.field}: "
                                "the eBPF backend reads stack fields with .last only",
                                file=st.loc.file if st.loc else None,
                                line=st.loc.line if st.loc else None,
                                hint=f"use hdr.{n.instance}.last.{n.field}")
                        self.expr_fields[(n.instance, n.field)] = n.width
            for s in st.statements:
                if isinstance(s, ir.Assign):
                    self.meta_used.add(s.target.name)
        self.meta_used |= {n.name for st in graph.states.values() for e in ir.state_exprs(st)
                           for n in ir.walk(e) if isinstance(n, ir.MetaRef)}
        self.slots: dict[str, int] = {}
        i = 0
        for inst in graph.instances.values():
            self.slots[inst.name] = i
            i += inst.stack or 1
        self.nhdr = i

    # -- expressions --------------------------------------------------------------------
    def expr(self, e: ir.Expr) -> str:
        if isinstance(e, ir.Const):
            return _lit(e.value)
        if isinstance(e, ir.FieldRef):
            return _var(e.instance, e.field)
        if isinstance(e, ir.MetaRef):
            return f"m_{e.name}"
        if isinstance(e, ir.Lookahead):
            return f"la_{e.width}"
        if isinstance(e, ir.Cast):
            inner = _width(e.expr)
            if inner is not None and inner <= e.width:
                return self.expr(e.expr)  # zero-extension: the value already fits
            return f"({self.expr(e.expr)} & {_mask(e.width)})"
        if isinstance(e, ir.UnOp):
            inner = f"({e.op}{self.expr(e.expr)})"
            return f"({inner} & {_mask(e.width)})" if e.width else inner
        inner = f"({self.expr(e.left)} {e.op} {self.expr(e.right)})"
        if e.width and e.op in ("+", "-", "*", "<<"):
            return f"({inner} & {_mask(e.width)})"
        return inner

    def lookaheads(self, exprs: Iterable[ir.Expr]) -> None:
        """Read each ``pkt.lookahead<bit<N>>()`` of ``exprs`` at the current offset."""
        seen: set[int] = set()
        for e in exprs:
            for n in ir.walk(e):
                if isinstance(n, ir.Lookahead) and n.width not in seen:
                    seen.add(n.width)
                    nbytes = (n.width + 7) // 8
                    self.emit(f"/* lookahead<bit<{n.width}>> */",
                              f"p = ebp_hdr(data, data_end, off, {nbytes});",
                              "if (!p)", "\tgoto reject;",
                              f"la_{n.width} = {_read('p', 0, n.width)};")

    def emit(self, *lines: str) -> None:
        self.lines += ["\t" + ln for ln in lines]

    # -- statements ---------------------------------------------------------------------
    def extract(self, s: ir.Extract) -> None:
        inst = self.g.instances[s.instance]
        t = inst.type
        slot = f"EBP_HDR_{inst.name.upper()}"
        size = str(t.byte_size)
        self.emit(f"/* extract {inst.name}{'.next' if s.next else ''} "
                  f"({t.byte_size} bytes{', varbit' if s.varbit_bits is not None else ''}) */")
        if s.next:
            self.emit(f"if (c_{inst.name} >= {inst.stack})",
                      "\tgoto reject; /* StackOutOfBounds */",
                      f"i = c_{inst.name};")
        if s.varbit_bits is not None:
            vb = t.varbit_field
            self.emit(f"n = {self.expr(s.varbit_bits)};",
                      f"if (n > {vb.width} || (n & 7))", "\tgoto reject; /* HeaderTooShort */")
            size = f"{t.byte_size} + (n >> 3)"
        self.emit(f"p = ebp_hdr(data, data_end, off, {size});", "if (!p)",
                  "\tgoto reject; /* PacketTooShort */")
        self.emit(f"pkt->hdr_off[{slot}{' + i' if s.next else ''}] = off;")
        need = set(self.g.needed.get(inst.name, ()))
        for f in t.fields:
            if (inst.name, f.name) in self.expr_fields:
                self.emit(f"{_var(inst.name, f.name)} = "
                          f"{_read('p', t.bit_offset(f.name), f.width)};")
        self.bind(inst, need)
        for uf in self.user.fields:
            if uf.path.instance == inst.name:
                self.user_store(uf, t, s.next)
        if s.next:
            self.emit(f"c_{inst.name}++;")
        self.emit(f"off += {size};")
        self.after_extract(inst)

    def user_store(self, uf: UserField, t: ir.HeaderType, stacked: bool) -> None:
        bit, width = t.bit_offset(uf.path.field), uf.path.width
        body: list[str] = []
        if bit % 8 == 0 and width % 8 == 0:
            body.append(f"__builtin_memcpy(&pkt->user[{uf.offset}], p + {bit // 8}, {uf.size});")
        else:
            body.append(f"n = {_read('p', bit, width)};")
            body += [f"pkt->user[{uf.offset + k}] = n >> {8 * (uf.size - 1 - k)};"
                     if k < uf.size - 1 else f"pkt->user[{uf.offset + k}] = n;"
                     for k in range(uf.size)]
        body.append(f"pkt->user_valid |= {1 << uf.bit}; /* {uf.name} */")
        if stacked:
            self.emit(f"if (i == {uf.path.index or 0}) {{", *("\t" + b for b in body), "}")
        else:
            self.emit(*body)

    def bind(self, inst: ir.Instance, need: set[str]) -> None:
        """Fill the ebp_pkt members bound to this header (library header names)."""
        t = inst.type
        name = inst.name

        def val(fname: str) -> str:
            if (name, fname) in self.expr_fields:
                return _var(name, fname)
            return _read("p", t.bit_offset(fname), t.field(fname).width)

        if name in ("ethernet", "vlan") and t.field("etherType"):
            self.emit(f"pkt->eth_proto = {val('etherType')};")
        if name == "vlan" and "vid" in need and "vlan" in self.wants:
            self.emit("if (i == 0)", f"\tpkt->vlan = {val('vid')};")
        if name == "ipv4":
            self.emit("pkt->family = 4;")
            if "srcAddr" in need and "ipv4" in self.wants:
                self.emit(f"__builtin_memcpy(pkt->src, p + {t.bit_offset('srcAddr') // 8}, 4);",
                          f"__builtin_memcpy(pkt->dst, p + {t.bit_offset('dstAddr') // 8}, 4);")
            if "flags" in need:
                self.emit(f"if (({val('flags')} & 1) || {val('fragOffset')})",
                          "\tpkt->flags |= EBP_PKT_FRAG; /* more fragments, or offset != 0 */")
        if name == "ipv6":
            self.emit("pkt->family = 6;")
            if "srcAddr" in need and "ipv6" in self.wants:
                self.emit(f"__builtin_memcpy(pkt->src, p + {t.bit_offset('srcAddr') // 8}, 16);",
                          f"__builtin_memcpy(pkt->dst, p + {t.bit_offset('dstAddr') // 8}, 16);")
        if name == "ipv6_frag":
            self.emit("pkt->flags |= EBP_PKT_FRAG;")
        if name in ("tcp", "udp"):
            self.emit("pkt->l4_off = off;", "pkt->flags |= EBP_PKT_L4;")
            if "srcPort" in need and name in self.wants:
                self.emit(f"pkt->sport = {val('srcPort')};", f"pkt->dport = {val('dstPort')};")

    def after_extract(self, inst: ir.Instance) -> None:
        if inst.name in ("ethernet", "vlan"):
            self.emit("pkt->l3_off = off;")
        if inst.name == "vlan":
            self.emit("pkt->n_vlan = c_vlan;")

    def assign(self, s: ir.Assign) -> None:
        name = s.target.name
        w = _width(s.value)
        value = self.expr(s.value)
        if w is None or w > s.target.width:
            value = f"{value} & {_mask(s.target.width)}"
        self.emit(f"m_{name} = {value};")
        if name == "l4_proto":
            self.emit(f"pkt->proto = m_{name};")
        elif name == "later_fragment":
            self.emit(f"if (m_{name})", "\tpkt->flags |= EBP_PKT_LATER_FRAG;")

    def advance(self, s: ir.Advance) -> None:
        self.emit(f"/* advance {self.expr(s.bits)} bits */",
                  f"n = {self.expr(s.bits)};",
                  "if ((n & 7) || off + (n >> 3) > len)", "\tgoto reject; /* PacketTooShort */",
                  "off += n >> 3;")

    # -- transitions --------------------------------------------------------------------
    def goto(self, target: str) -> str:
        return f"goto {target};" if target in ir.FINAL_STATES else f"goto st_{target};"

    def transition(self, t: ir.Transition) -> None:
        if isinstance(t, ir.Direct):
            self.emit(self.goto(t.target))
            return
        self.lookaheads(t.keys)
        keys = [self.expr(k) for k in t.keys]
        for c in t.cases:
            if c.is_default:
                self.emit(self.goto(c.target))
                return
            conds = []
            for k, m in zip(keys, c.keys):
                if isinstance(m, ir.Exact):
                    conds.append(f"{k} == {_lit(m.value.value)}")
                elif isinstance(m, ir.Masked):
                    conds.append(f"({k} & {_lit(m.mask.value)}) == "
                                 f"{_lit(m.value.value & m.mask.value)}")
                elif isinstance(m, ir.Range):
                    lo = f"{k} >= {_lit(m.lo.value)} && " if m.lo.value else ""
                    conds.append(f"({lo}{k} <= {_lit(m.hi.value)})")
            self.emit(f"if ({' && '.join(conds)})", "\t" + self.goto(c.target))
        self.emit("goto reject; /* NoMatch */")

    # -- the function -------------------------------------------------------------------
    def state(self, st: ir.ParseState) -> None:
        loc = f" ({st.loc.file}:{st.loc.line})" if st.loc else ""
        self.lines.append(f"st_{st.name}: /* P4 state {st.name}, protocol {st.protocol}{loc} */")
        self.lookaheads(e for s in st.statements for e in
                        ([s.bits] if isinstance(s, ir.Advance) else
                         [s.value] if isinstance(s, ir.Assign) else
                         [s.varbit_bits] if s.varbit_bits is not None else []))
        for s in st.statements:
            if isinstance(s, ir.Extract):
                self.extract(s)
            elif isinstance(s, ir.Advance):
                self.advance(s)
            else:
                self.assign(s)
        self.transition(st.transition)

    def function(self) -> str:
        g = self.g
        decls = ["\tvoid *p;", "\t__u64 off = 0, len = data_end - data;",
                 "\t__u64 n = 0;", "\t__u32 i = 0;"]
        decls += [f"\t__u32 c_{inst.name} = 0; /* {inst.name}[{inst.stack}] extracted */"
                  for inst in g.instances.values() if inst.stack is not None]
        for (inst, fname), width in sorted(self.expr_fields.items()):
            decls.append(f"\t{'__u64' if width > 32 else '__u32'} {_var(inst, fname)} = 0;")
        for m in g.meta.values():
            if m.name in self.meta_used:
                decls.append(f"\t{'__u64' if m.width > 32 else '__u32'} m_{m.name} = 0;")
        widths = sorted({n.width for st in g.states.values() for e in ir.state_exprs(st)
                         for n in ir.walk(e) if isinstance(n, ir.Lookahead)}
                        | {n.width for st in g.states.values() for s in st.statements
                           for e in ([s.bits] if isinstance(s, ir.Advance) else
                                     [s.value] if isinstance(s, ir.Assign) else [])
                           for n in ir.walk(e) if isinstance(n, ir.Lookahead)})
        decls += [f"\t__u64 la_{w} = 0;" for w in widths]
        self.lines = []
        for st in g.states.values():
            self.state(st)
        head = [f"/* The parser for protocols {', '.join(g.protocols)}: generated by ebplane from",
                " * the P4 states below (ebplane parser export prints them as P4-16). */",
                "static __always_inline int ebp_parse(void *data, void *data_end, "
                "struct ebp_pkt *pkt)", "{", *decls, "",
                "\tpkt->len = len;",
                "\t__builtin_memset(pkt->hdr_off, 0xff, sizeof(pkt->hdr_off)); /* absent */",
                f"\tgoto st_{g.start};", ""]
        tail = ["accept:", "\treturn 0;", "reject:", "\treturn EBP_MALFORMED;", "}"]
        return "\n".join(head + self.lines + tail)

    def defines(self) -> list[str]:
        out = [f"#define EBP_NHDR {max(self.nhdr, 1)} /* header slots in ebp_pkt.hdr_off */",
               f"#define EBP_USER_BYTES {USER_BYTES} /* bytes of ebp_pkt.user */"]
        for inst in self.g.instances.values():
            stack = f" /* .. + {inst.stack - 1} */" if inst.stack else ""
            out.append(f"#define EBP_HDR_{inst.name.upper()} {self.slots[inst.name]}{stack}")
        return out


HELPERS = """\
/* packet bytes [off, off + size) of a header, or NULL when the packet is too short.
 * A header starting past 32 KiB counts as too short: the verifier accepts a packet access
 * only when offset + size stays below 64 KiB. */
static __always_inline void *ebp_hdr(void *data, void *data_end, __u64 off, __u64 size)
{
	void *p;

	if (off > 0x7fff || size > 0x7fff)
		return (void *)0;
	/* bound the very register the pointer is made from (clang may test a copy) */
	asm volatile("%[o] &= 0x7fff" : [o] "+r"(off));
	p = data + off;
	if (p + size > data_end)
		return (void *)0;
	return p;
}

/* big-endian value of n bytes (3, 5, 6, 7 or 8; n is a constant at every call) */
static __always_inline __u64 ebp_be(const __u8 *p, int n)
{
	__u64 v = 0;

#pragma unroll
	for (int k = 0; k < n; k++)
		v = v << 8 | p[k];
	return v;
}"""


@dataclass(frozen=True)
class ParserCode:
    """The generated parser: ``defines`` go before ``#include "ebplane.h"``, ``source`` after."""

    defines: str
    source: str
    header_slots: dict[str, int]


def generate_parser(graph: ParserGraph, wants: Iterable[str], user: UserLayout) -> ParserCode:
    """C for ``ebp_parse`` over ``graph``: ``wants`` are the Features flags (vlan, ipv4,
    ipv6, tcp, udp) whose bound ebp_pkt members stages read; ``user`` the match: fields."""
    gen = _Gen(graph, set(wants), user)
    body = gen.function()
    return ParserCode("\n".join(gen.defines()), HELPERS + "\n\n" + body, dict(gen.slots))



# -- separate and xdp parser modes: the parse-info handed over in the XDP metadata area ----------

META_MAX = 32  # bytes of XDP metadata the parse-info may take
# fixed members of struct ebp_pinfo: (C declaration, bytes); addresses are re-read by ip_off
PINFO_FIXED: tuple[tuple[str, int], ...] = (
    ("__u8  flags;      /* ebp_pkt.flags | EBP_PINFO_MALFORMED */", 1),
    ("__u8  family;", 1), ("__u8  proto;", 1), ("__u8  n_vlan;", 1),
    ("__u16 l3_off;", 2), ("__u16 l4_off;", 2), ("__u16 eth_proto;", 2), ("__u16 vlan;", 2),
    ("__u16 sport;", 2), ("__u16 dport;", 2),
    ("__u16 ip_off;     /* the IP header: stages' addresses are read from the packet */", 2),
    ("__u16 user_valid;", 2),
)


# parser mode xdp: the parse-info starts with a check word, EBP_PINFO_MAGIC (the layout's
# version) xor the frame length the parser saw.  A TC program meets whatever metadata an XDP
# program left (another one, or an ebplane parser of another layout), and the frame it sees may
# differ from the one XDP parsed (the kernel moves an outer VLAN tag to skb->vlan_tci, which
# shifts every offset): it trusts only its own layout on a frame of the length parsed.  A
# separate parser's stage program is reached by its tail call only, on the same frame.
PINFO_MAGIC: tuple[str, int] = ("__u32 magic;      /* EBP_PINFO_MAGIC ^ frame length */", 4)


def _pinfo_fixed(tagged: bool) -> tuple[tuple[str, int], ...]:
    return ((PINFO_MAGIC,) if tagged else ()) + PINFO_FIXED


def parse_info_size(user: UserLayout, tagged: bool = False) -> int:
    """Bytes of struct ebp_pinfo (rounded to 4, as bpf_xdp_adjust_meta requires); ``tagged``:
    with the magic word of parser mode xdp."""
    return (sum(n for _, n in _pinfo_fixed(tagged)) + user.size + 3) // 4 * 4


def check_parse_info(user: UserLayout, mode: str = "separate") -> None:
    """Refuse a parse-info that does not fit the XDP metadata area, naming what to drop;
    ``mode`` is the parser mode (separate, or xdp: tagged with the magic word)."""
    size = parse_info_size(user, tagged=mode == "xdp")
    if size <= META_MAX:
        return
    room = META_MAX - sum(n for _, n in _pinfo_fixed(mode == "xdp"))
    what = "a separate parser" if mode == "separate" else "an XDP parser (parser mode xdp)"
    raise SpecError(f"the parse-info of {what} needs {size} bytes, more than the "
                    f"{META_MAX} bytes of XDP metadata: the match: fields take {user.size} bytes "
                    f"({', '.join(f'{f.name}: {f.size}' for f in user.fields)}), {room} fit",
                    field="parser.mode",
                    hint="drop match: rules on some of these fields, or use parser: {mode: fused}")


def parse_info_c(graph: ParserGraph, user: UserLayout, magic: int | None = None) -> str:
    """struct ebp_pinfo and the two halves of the hand-over: ebp_pinfo_write (parser
    program) and ebp_pinfo_read (stage program: rebuilds the ebp_pkt the stages read).
    ``magic`` (parser mode xdp): the struct starts with a word the writer sets to it xor the
    frame length, which the reader checks before it trusts the metadata."""
    ips = [f"pkt->hdr_off[EBP_HDR_{n.upper()}]" for n in ("ipv4", "ipv6") if n in graph.instances]
    ip_off = ("pkt->family == 4 ? " + ips[0] + " : " + ips[-1]) if len(ips) == 2 else \
        (ips[0] if ips else "0xffff")
    members = [f"\t{decl}" for decl, _ in _pinfo_fixed(magic is not None)]
    if user.size:
        members.append(f"\t__u8  user[{user.size}];")
    copy = ["flags", "family", "proto", "n_vlan", "l3_off", "l4_off", "eth_proto", "vlan",
            "sport", "dport", "user_valid"]
    tag = [] if magic is None else [f"#define EBP_PINFO_MAGIC 0x{magic:08x}U"]
    return "\n".join([
        "#define EBP_PINFO_MALFORMED 0x80", *tag,
        f"/* parse-info: what the parser program hands the stage program "
        f"({parse_info_size(user, magic is not None)}"
        " bytes in the XDP metadata area in front of the packet) */",
        "struct ebp_pinfo {", *members, "} __attribute__((packed, aligned(4)));", "",
        "static __always_inline void ebp_pinfo_write(struct ebp_pinfo *pi, "
        "const struct ebp_pkt *pkt, int malformed)", "{",
        *(["\tpi->magic = EBP_PINFO_MAGIC ^ pkt->len;"] if magic is not None else []),
        *[f"\tpi->{m} = pkt->{m};" for m in copy],
        "\tif (malformed)", "\t\tpi->flags |= EBP_PINFO_MALFORMED;",
        f"\tpi->ip_off = {ip_off};",
        *([f"\t__builtin_memcpy(pi->user, pkt->user, {user.size});"] if user.size else []),
        "}", "",
        "/* rebuild @pkt from the parse-info; returns 1 when the parser found it malformed */",
        "static __always_inline int ebp_pinfo_read(const struct ebp_pinfo *pi, void *data, "
        "void *data_end, struct ebp_pkt *pkt)", "{",
        "\tvoid *ip;", "",
        "\tpkt->len = data_end - data;",
        "\t__builtin_memset(pkt->hdr_off, 0xff, sizeof(pkt->hdr_off)); /* fused mode only */",
        *[f"\tpkt->{m} = pi->{m};" for m in copy],
        "\tpkt->flags &= ~EBP_PINFO_MALFORMED;",
        *([f"\t__builtin_memcpy(pkt->user, pi->user, {user.size});"] if user.size else []),
        "\tif (pi->family == 4 && (ip = ebp_hdr(data, data_end, pi->ip_off, 20))) {",
        "\t\t__builtin_memcpy(pkt->src, ip + 12, 4);",
        "\t\t__builtin_memcpy(pkt->dst, ip + 16, 4);",
        "\t} else if (pi->family == 6 && (ip = ebp_hdr(data, data_end, pi->ip_off, 40))) {",
        "\t\t__builtin_memcpy(pkt->src, ip + 8, 16);",
        "\t\t__builtin_memcpy(pkt->dst, ip + 24, 16);",
        "\t}",
        "\treturn !!(pi->flags & EBP_PINFO_MALFORMED);", "}"])
