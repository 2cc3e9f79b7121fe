"""The intermediate representation of a parser: what code generators walk.

Everything here is plain, immutable data.  Names are already resolved: an
expression refers to an instance and a field by name, never to a P4 parameter
(``hdr``/``info``/``pkt``), constants are folded to :class:`Const` (keeping the
constant's name so the P4 export can print it), and each node carries the
:class:`Loc` it came from so later checks can point at the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACCEPT = "accept"
REJECT = "reject"
FINAL_STATES = (ACCEPT, REJECT)


@dataclass(frozen=True)
class Loc:
    """Where a declaration came from (1-based line and column).

    ``text`` is the source line itself, kept so that an error found long after
    parsing (while composing protocols) can still show the line and a caret.
    """

    file: str
    line: int
    column: int
    text: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# -- types ----------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One field of a header type; ``varbit`` fields have ``width`` as their maximum."""

    name: str
    width: int
    varbit: bool = False


@dataclass(frozen=True)
class HeaderType:
    """A P4 ``header``: fields in wire order, big-endian, no padding."""

    name: str
    fields: tuple[Field, ...]
    loc: Loc | None = field(default=None, compare=False)

    @property
    def fixed_bits(self) -> int:
        """Bits of the fixed part (everything but a trailing varbit)."""
        return sum(f.width for f in self.fields if not f.varbit)

    @property
    def byte_size(self) -> int:
        """Bytes the fixed part occupies on the wire."""
        return (self.fixed_bits + 7) // 8

    @property
    def varbit_field(self) -> Field | None:
        return next((f for f in self.fields if f.varbit), None)

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def bit_offset(self, name: str) -> int:
        """Offset in bits of field ``name`` from the header's start."""
        off = 0
        for f in self.fields:
            if f.name == name:
                return off
            off += f.width
        raise KeyError(name)


@dataclass(frozen=True)
class Instance:
    """A member of the headers struct: one header, or a stack of ``stack`` headers."""

    name: str
    type: HeaderType
    stack: int | None = None
    protocol: str = ""
    loc: Loc | None = field(default=None, compare=False)

    @property
    def elements(self) -> tuple[str, ...]:
        """Display names of the slots: ``ipv4`` or ``vlan[0]``, ``vlan[1]``."""
        if self.stack is None:
            return (self.name,)
        return tuple(f"{self.name}[{i}]" for i in range(self.stack))


@dataclass(frozen=True)
class MetaField:
    """A member of the parse-info struct (``inout`` parameter): ``bit<width>``."""

    name: str
    width: int
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ConstDecl:
    name: str
    width: int | None
    value: int
    loc: Loc | None = field(default=None, compare=False)


# -- expressions ---------------------------------------------------------------

@dataclass(frozen=True)
class Const:
    """An integer; ``width`` None means an unsized literal (P4's ``int``)."""

    value: int
    width: int | None = None
    name: str | None = None  # the const declaration it came from, if any


@dataclass(frozen=True)
class FieldRef:
    """``hdr.inst.field``; ``index`` is None (plain header), ``"last"`` or a slot number."""

    instance: str
    field: str
    width: int
    index: int | str | None = None


@dataclass(frozen=True)
class MetaRef:
    """``info.name``: a parse-info field."""

    name: str
    width: int


@dataclass(frozen=True)
class Lookahead:
    """``pkt.lookahead<bit<width>>()``: the next ``width`` bits, not consumed."""

    width: int


@dataclass(frozen=True)
class Cast:
    width: int
    expr: "Expr"


@dataclass(frozen=True)
class BinOp:
    """``op`` is one of + - * << >> & | ^; ``width`` None if both sides are unsized."""

    op: str
    left: "Expr"
    right: "Expr"
    width: int | None


@dataclass(frozen=True)
class UnOp:
    op: str  # "-" or "~"
    expr: "Expr"
    width: int | None


Expr = Const | FieldRef | MetaRef | Lookahead | Cast | BinOp | UnOp


def walk(e: Expr):
    """Yield ``e`` and every expression inside it."""
    yield e
    if isinstance(e, Cast | UnOp):
        yield from walk(e.expr)
    elif isinstance(e, BinOp):
        yield from walk(e.left)
        yield from walk(e.right)


# -- statements ----------------------------------------------------------------

@dataclass(frozen=True)
class Extract:
    """``pkt.extract(hdr.inst)`` or ``(hdr.inst.next)``; ``varbit_bits`` for the 2-argument form."""

    instance: str
    next: bool = False
    varbit_bits: Expr | None = None


@dataclass(frozen=True)
class Advance:
    """``pkt.advance(bits)``: skip ``bits`` (a bit<32> expression) of the packet."""

    bits: Expr


@dataclass(frozen=True)
class Assign:
    """``info.target = value``."""

    target: MetaRef
    value: Expr


Statement = Extract | Advance | Assign


# -- transitions ---------------------------------------------------------------

@dataclass(frozen=True)
class Exact:
    value: Const


@dataclass(frozen=True)
class Masked:
    """Matches when ``key & mask == value & mask`` (P4 ``value &&& mask``)."""

    value: Const
    mask: Const


@dataclass(frozen=True)
class Range:
    """Matches ``lo <= key <= hi`` (P4 ``lo .. hi``)."""

    lo: Const
    hi: Const


@dataclass(frozen=True)
class Any:
    """``_`` or ``default`` inside a tuple: matches everything."""


KeyMatch = Exact | Masked | Range | Any


@dataclass(frozen=True)
class Case:
    """One select case; ``keys`` None is the whole-keyset ``default``."""

    keys: tuple[KeyMatch, ...] | None
    target: str
    loc: Loc | None = field(default=None, compare=False)

    @property
    def is_default(self) -> bool:
        return self.keys is None or all(isinstance(k, Any) for k in self.keys)


@dataclass(frozen=True)
class Select:
    """``transition select(keys) { cases }``; no case matching means reject (P4 NoMatch)."""

    keys: tuple[Expr, ...]
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class Direct:
    target: str


Transition = Select | Direct


def targets(t: Transition) -> tuple[str, ...]:
    """Successor state names of a transition, in case order, without repeats."""
    names = [t.target] if isinstance(t, Direct) else [c.target for c in t.cases]
    return tuple(dict.fromkeys(names))


def matches(k: KeyMatch, value: int) -> bool:
    """Whether one key value satisfies one keyset element."""
    if isinstance(k, Any):
        return True
    if isinstance(k, Exact):
        return value == k.value.value
    if isinstance(k, Masked):
        return value & k.mask.value == k.value.value & k.mask.value
    return k.lo.value <= value <= k.hi.value


def same_keys(a: tuple[KeyMatch, ...] | None, b: tuple[KeyMatch, ...] | None) -> bool:
    """Whether two keysets match the same values (constants compared by value, not by name)."""
    def norm(keys):
        if keys is None:
            return None
        return tuple((type(k).__name__, *(getattr(k, f).value for f in ("value", "mask", "lo", "hi")
                                          if hasattr(k, f))) for k in keys)
    return norm(a) == norm(b)


@dataclass(frozen=True)
class ParseState:
    name: str
    statements: tuple[Statement, ...]
    transition: Transition
    protocol: str = ""
    loc: Loc | None = field(default=None, compare=False)

    @property
    def extracts_stack(self) -> bool:
        """True if every pass through this state consumes a header-stack slot."""
        return any(isinstance(s, Extract) and s.next for s in self.statements)


def state_exprs(st: ParseState):
    """Yield every top-level expression of a state: statements, select keys, case values."""
    for s in st.statements:
        if isinstance(s, Advance):
            yield s.bits
        elif isinstance(s, Assign):
            yield s.value
        elif s.varbit_bits is not None:
            yield s.varbit_bits
    t = st.transition
    if isinstance(t, Select):
        yield from t.keys
        for c in t.cases:
            for k in c.keys or ():
                if isinstance(k, Exact):
                    yield k.value
                elif isinstance(k, Masked):
                    yield from (k.value, k.mask)
                elif isinstance(k, Range):
                    yield from (k.lo, k.hi)
