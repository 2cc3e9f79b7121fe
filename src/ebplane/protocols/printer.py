"""IR back to text: P4-16 source for ``parser export``, readable conditions for ``parser show``.

The P4 printer is the inverse of the front end: printing a graph, parsing the
text and printing again gives the same text (tests check this round trip).
"""

from __future__ import annotations

from ebplane.protocols import ir

_PREC = {"|": 1, "^": 2, "&": 3, "<<": 4, ">>": 4, "+": 5, "-": 5, "*": 6}
_INDENT = "    "


def number(value: int, width: int | None) -> str:
    """Hex for 16 bits and wider (ethertypes, masks), decimal for small fields."""
    if width is not None and width >= 16 and value > 9:
        return f"0x{value:0{(width + 3) // 4}x}"
    return str(value)


def expr(e: ir.Expr, *, hdr: str = "hdr.", info: str = "info.", pkt: str = "pkt") -> str:
    """P4 text of an expression; ``hdr``/``info`` prefixes are '' for human text."""
    def p(x: ir.Expr, parent: int = 0, right: bool = False) -> str:
        if isinstance(x, ir.Const):
            if x.name:
                return x.name
            text = number(x.value, x.width)
            return f"{x.width}w{text}" if x.width is not None else text
        if isinstance(x, ir.FieldRef):
            if x.index is None:
                return f"{hdr}{x.instance}.{x.field}"
            sel = ".last" if x.index == "last" else f"[{x.index}]"
            return f"{hdr}{x.instance}{sel}.{x.field}"
        if isinstance(x, ir.MetaRef):
            return f"{info}{x.name}"
        if isinstance(x, ir.Lookahead):
            return f"{pkt}.lookahead<bit<{x.width}>>()"
        if isinstance(x, ir.Cast):
            return f"(bit<{x.width}>){p(x.expr, 7)}"
        if isinstance(x, ir.UnOp):
            return f"{x.op}{p(x.expr, 7)}"
        prec = _PREC[x.op]
        text = f"{p(x.left, prec)} {x.op} {p(x.right, prec, True)}"
        return f"({text})" if prec < parent or (right and prec == parent) else text
    return p(e)


def keymatch(k: ir.KeyMatch, width: int | None) -> str:
    if isinstance(k, ir.Any):
        return "_"
    if isinstance(k, ir.Exact):
        return _value(k.value, width)
    if isinstance(k, ir.Masked):
        return f"{_value(k.value, width)} &&& {_value(k.mask, width)}"
    return f"{_value(k.lo, width)} .. {_value(k.hi, width)}"


def _value(c: ir.Const, key_width: int | None) -> str:
    if c.name:
        return c.name
    if c.width is not None:
        return f"{c.width}w{number(c.value, c.width)}"
    return number(c.value, key_width)


def keyset(case: ir.Case, keys: tuple[ir.Expr, ...]) -> str:
    if case.keys is None:
        return "default"
    parts = [keymatch(k, key.width) for k, key in zip(case.keys, keys)]
    return parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


def condition(case: ir.Case, keys: tuple[ir.Expr, ...]) -> str:
    """Human text for when a case is taken: ``ipv4.protocol == 6 && ipv4.fragOffset == 0``."""
    terms = []
    for k, key in zip(case.keys or (), keys):
        name = expr(key, hdr="", info="info.")
        if isinstance(k, ir.Exact):
            terms.append(f"{name} == {_value(k.value, key.width)}")
        elif isinstance(k, ir.Masked):
            terms.append(f"{name} & {_value(k.mask, key.width)} == {_value(k.value, key.width)}")
        elif isinstance(k, ir.Range):
            terms.append(f"{name} in {_value(k.lo, key.width)}..{_value(k.hi, key.width)}")
    return " && ".join(terms) if terms else "otherwise"


def statement(s: ir.Statement) -> str:
    if isinstance(s, ir.Extract):
        target = f"hdr.{s.instance}{'.next' if s.next else ''}"
        extra = f", {expr(s.varbit_bits)}" if s.varbit_bits is not None else ""
        return f"pkt.extract({target}{extra});"
    if isinstance(s, ir.Advance):
        return f"pkt.advance({expr(s.bits)});"
    return f"info.{s.target.name} = {expr(s.value)};"


def state(st: ir.ParseState) -> list[str]:
    lines = [f"state {st.name} {{"]
    lines += [_INDENT + statement(s) for s in st.statements]
    t = st.transition
    if isinstance(t, ir.Direct):
        lines.append(f"{_INDENT}transition {t.target};")
    else:
        lines.append(f"{_INDENT}transition select({', '.join(expr(k) for k in t.keys)}) {{")
        lines += [f"{_INDENT * 2}{keyset(c, t.keys)}: {c.target};" for c in t.cases]
        lines.append(f"{_INDENT}}}")
    lines.append("}")
    return lines


def header_type(h: ir.HeaderType) -> list[str]:
    def ftype(f: ir.Field) -> str:
        return f"varbit<{f.width}>" if f.varbit else f"bit<{f.width}>"
    return [f"header {h.name} {{", *(f"{_INDENT}{ftype(f)} {f.name};" for f in h.fields), "}"]
