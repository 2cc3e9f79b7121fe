"""A reference interpreter for a :class:`ParserGraph`, following P4-16 parser semantics.

It is slow and simple on purpose: it is the oracle against which generated C
parsers are checked (same packet in, same headers, offsets and verdict out).
Errors are P4's: ``PacketTooShort`` (extract, advance or lookahead past the
end), ``StackOutOfBounds`` (``.next`` of a full stack), ``NoMatch`` (no select
case matches); an explicit ``transition reject`` reports ``Reject``.
"""

from __future__ import annotations

from ebplane.protocols import ir
from ebplane.protocols.graph import ParserGraph


class _Reject(Exception):
    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


class _Run:
    def __init__(self, graph: ParserGraph, pkt: bytes):
        self.g = graph
        self.pkt = int.from_bytes(pkt, "big") if pkt else 0
        self.total = len(pkt) * 8
        self.pos = 0  # bits consumed
        self.headers: dict[str, dict] = {}
        self.count = {name: 0 for name, inst in graph.instances.items() if inst.stack is not None}
        self.info = {name: 0 for name in graph.meta}

    def bits(self, offset: int, width: int) -> int:
        """``width`` bits at bit ``offset`` of the packet, big-endian."""
        if offset + width > self.total:
            raise _Reject("PacketTooShort")
        return (self.pkt >> (self.total - offset - width)) & ((1 << width) - 1)

    def element(self, ref: ir.FieldRef) -> str:
        if ref.index is None:
            return ref.instance
        idx = self.count.get(ref.instance, 0) - 1 if ref.index == "last" else ref.index
        return f"{ref.instance}[{idx}]"

    def eval(self, e: ir.Expr) -> int:
        if isinstance(e, ir.Const):
            return e.value
        if isinstance(e, ir.FieldRef):
            # reading a header that is not valid is undefined in P4; 0 here
            return self.headers.get(self.element(e), {}).get("fields", {}).get(e.field, 0)
        if isinstance(e, ir.MetaRef):
            return self.info[e.name]
        if isinstance(e, ir.Lookahead):
            return self.bits(self.pos, e.width)
        if isinstance(e, ir.Cast):
            return self.eval(e.expr) & ((1 << e.width) - 1)
        if isinstance(e, ir.UnOp):
            v = self.eval(e.expr)
            v = -v if e.op == "-" else ~v
        else:
            a, b = self.eval(e.left), self.eval(e.right)
            v = {"+": a + b, "-": a - b, "*": a * b, "<<": a << b, ">>": a >> b,
                 "&": a & b, "|": a | b, "^": a ^ b}[e.op]
        return v & ((1 << e.width) - 1) if e.width is not None else v

    def extract(self, s: ir.Extract) -> None:
        inst = self.g.instances[s.instance]
        name = inst.name
        if s.next:
            idx = self.count[inst.name]
            if idx >= inst.stack:
                raise _Reject("StackOutOfBounds")
            name = f"{inst.name}[{idx}]"
        extra = self.eval(s.varbit_bits) if s.varbit_bits is not None else 0
        varbit = inst.type.varbit_field
        if varbit is not None and (extra > varbit.width or extra % 8):
            raise _Reject("HeaderTooShort")  # P4: varbit length beyond its maximum
        size = inst.type.fixed_bits + extra
        self.bits(self.pos, size)  # bounds check before reading fields
        fields: dict[str, int | bytes] = {}
        off = self.pos
        for f in inst.type.fields:
            if f.varbit:
                fields[f.name] = self.bits(off, extra).to_bytes(extra // 8, "big")
                off += extra
            else:
                fields[f.name] = self.bits(off, f.width)
                off += f.width
        self.headers[name] = {"offset": self.pos // 8, "fields": fields}
        if s.next:
            self.count[inst.name] += 1
        self.pos += size

    def step(self, st: ir.ParseState) -> str:
        for s in st.statements:
            if isinstance(s, ir.Extract):
                self.extract(s)
            elif isinstance(s, ir.Advance):
                n = self.eval(s.bits)
                self.bits(self.pos, n)
                self.pos += n
            else:
                self.info[s.target.name] = self.eval(s.value) & ((1 << s.target.width) - 1)
        t = st.transition
        if isinstance(t, ir.Direct):
            return t.target
        values = [self.eval(k) for k in t.keys]
        for case in t.cases:
            if case.keys is None or all(ir.matches(k, v) for k, v in zip(case.keys, values)):
                return case.target
        raise _Reject("NoMatch")


def run(graph: ParserGraph, pkt: bytes) -> dict:
    """Parse ``pkt``; returns verdict, error, the states visited, headers, parse-info, end offset.

    ``headers`` maps ``ipv4`` / ``vlan[0]`` to ``{"offset": bytes, "fields": {name: int}}``.
    """
    r = _Run(graph, pkt)
    path: list[str] = []
    state, error = graph.start, None
    try:
        while state not in ir.FINAL_STATES:
            path.append(state)
            state = r.step(graph.states[state])
        if state == ir.REJECT:
            error = "Reject"
    except _Reject as e:
        state, error = ir.REJECT, e.error
    return {"verdict": state, "error": error, "path": path, "headers": r.headers,
            "info": r.info, "end": r.pos // 8}
