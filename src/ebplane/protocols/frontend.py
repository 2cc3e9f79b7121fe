"""From one P4 file's syntax tree to a checked :class:`ProtocolModule`.

A protocol file is a fragment of one P4-16 program (docs/p4-subset.md): header
types, constants, the part of the headers struct (``out`` parameter) and of the
parse-info struct (``inout`` parameter) it owns, and one ``parser`` whose states
extract its headers.  Everything that can be checked inside the file is checked
here, with the location of the offending token; what needs other files (states
of other protocols, hooks into them) is checked when protocols are composed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import lark

from ebplane.errors import shorten
from ebplane.protocols import ir
from ebplane.protocols.ir import Loc
from ebplane.protocols.source import Source, render

ANNOTATION_REACH = "ebplane_reach"
_RESERVED_STATES = set(ir.FINAL_STATES)
_INT_RE = re.compile(r"(?:(\d+)w)?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|\d[\d_]*)")
# Bounds on hostile files: the longest literal (a 128-bit value in binary is 130 characters),
# the deepest nesting of a file's syntax tree (expressions nest; the checks recurse), and the
# widest constant an expression may compute on its way (folding `1 << 99999999999999` would
# need terabytes)
MAX_LITERAL = 160
MAX_TREE_DEPTH = 150
MAX_CONST_BITS = 1024


@dataclass(frozen=True)
class Hook:
    """``@ebplane_reach("parent", keys...)`` on a state: add ``keys: target`` to ``parent``'s select.

    This is how a file reaches its own states from another protocol's state
    without editing that protocol's file (a tenant tag after UDP port 4789).
    """

    parent: str
    keys: tuple[ir.KeyMatch, ...]
    target: str
    loc: Loc


@dataclass
class ProtocolModule:
    """One protocol file, checked on its own."""

    name: str
    path: str
    header_types: dict[str, ir.HeaderType]
    consts: dict[str, ir.ConstDecl]
    instances: dict[str, ir.Instance]
    meta: dict[str, ir.MetaField]
    states: dict[str, ir.ParseState]
    entry: str
    hooks: tuple[Hook, ...] = ()
    external_targets: dict[str, Loc] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ProtocolModule({self.name!r}, states={list(self.states)})"


def parse_module(name: str, path: str, text: str) -> ProtocolModule:
    """Parse and check one protocol file (``name`` is the protocol's name, its file stem)."""
    source = Source(path, text)
    tree = source.parse()
    _check_depth(source, tree)
    return _Builder(name, source).module(tree)


def _check_depth(source: Source, tree: lark.Tree) -> None:
    """Refuse a tree nested deeper than MAX_TREE_DEPTH (a chain of thousands of terms), at
    the node where it gets too deep, before the recursive checks meet it."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise render(source.loc_of(node), f"nested more than {MAX_TREE_DEPTH} levels deep "
                         f"(an expression of too many terms or parentheses)",
                         hint="split it: declare parts as constants")
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))


def parse_int(token: str) -> ir.Const:
    """A P4 integer literal: ``42``, ``0x800``, ``0b101``, ``16w0x0800``; a decimal with
    leading zeros (``010``) is decimal.  Raises ValueError for a literal longer than
    MAX_LITERAL characters."""
    m = _INT_RE.fullmatch(token)
    if m is None:  # the grammar's INT pattern and this one agree, so only a bug lands here
        raise ValueError(token)
    if len(token) > MAX_LITERAL:
        raise ValueError(f"a literal of {len(token)} characters is too long (at most "
                         f"{MAX_LITERAL})")
    width, digits = m.groups()
    digits = digits.replace("_", "")
    if digits[:2].lower() in ("0x", "0b", "0o"):
        value = int(digits, 0) if len(digits) > 2 else 0
    else:
        value = int(digits, 10)
    return ir.Const(value, int(width, 10) if width else None)


def _hex(value: int) -> str:
    """A value for a message: whole when short, else its size."""
    return f"{value:#x}" if value.bit_length() <= 256 else f"<a {value.bit_length()}-bit value>"


class _Builder:
    """Turns the lark tree of one file into IR, checking names and widths."""

    def __init__(self, name: str, source: Source):
        self.name = name
        self.src = source
        self.header_types: dict[str, ir.HeaderType] = {}
        self.consts: dict[str, ir.ConstDecl] = {}
        self.structs: dict[str, tuple[lark.Tree, Loc]] = {}
        self.instances: dict[str, ir.Instance] = {}
        self.meta: dict[str, ir.MetaField] = {}
        self.pkt = self.hdr = self.info = None  # parser parameter names
        self.hooks: list[Hook] = []
        self.external: dict[str, Loc] = {}

    def error(self, node, message: str, hint: str | None = None):
        return render(self.src.loc_of(node), message, hint=hint)

    # -- declarations ---------------------------------------------------------

    def module(self, tree: lark.Tree) -> ProtocolModule:
        parsers = []
        for decl in tree.children:
            kind = decl.data
            if kind == "include":
                self.include(decl)
            elif kind == "header_decl":
                self.header(decl)
            elif kind == "struct_decl":
                self.struct(decl)
            elif kind == "const_decl":
                self.const(decl)
            else:
                parsers.append(decl)
        if not parsers:
            raise render(self.src.loc(1, 1), f"protocol file '{self.name}' has no parser block",
                         hint="add `parser NAME(packet_in pkt, out headers_t hdr, "
                              "inout parse_info_t info) { state ... }`")
        if len(parsers) > 1:
            raise self.error(parsers[1], "only one parser block per protocol file",
                             hint="move the states into the first parser, or into another file")
        states, entry = self.parser(parsers[0])
        return ProtocolModule(self.name, self.src.file, self.header_types, self.consts,
                              self.instances, self.meta, states, entry, tuple(self.hooks),
                              self.external)

    def include(self, node: lark.Tree) -> None:
        tok = node.children[0]
        target = re.sub(r"^#include\s*", "", str(tok))
        if target != "<core.p4>":
            raise self.error(tok, f"unsupported include {target}; expected #include <core.p4>",
                             hint="list other protocol files under protocols: instead of including them")

    def _annotations(self, children: list) -> tuple[list[lark.Tree], list]:
        i = 0
        while i < len(children) and isinstance(children[i], lark.Tree) and children[i].data == "annotation":
            i += 1
        return children[:i], children[i:]

    def _declare(self, table: dict, name_tok: lark.Token, what: str) -> None:
        if str(name_tok) in table:
            prev = table[str(name_tok)]
            where = getattr(prev, "loc", None) or (prev[1] if isinstance(prev, tuple) else None)
            raise self.error(name_tok, f"duplicate {what} '{name_tok}'"
                             + (f" (first declared at {where.file}:{where.line})" if where else ""),
                             hint=f"rename one of the two {what}s")

    def header(self, node: lark.Tree) -> None:
        _, (name, *fields) = self._annotations(node.children)
        self._declare(self.header_types, name, "header type")
        self._declare(self.structs, name, "type")
        out: list[ir.Field] = []
        for f in fields:
            _, (ftype, fname) = self._annotations(f.children)
            if any(x.name == fname for x in out):
                raise self.error(fname, f"duplicate field '{fname}' in header '{name}'")
            if out and out[-1].varbit:
                raise self.error(fname, f"field '{fname}' follows a varbit field",
                                 hint="a varbit field must be the last field of its header")
            width = self.width(ftype.children[0], 1, 2048)
            out.append(ir.Field(str(fname), width, ftype.data == "varbit_type"))
        if not out:
            raise self.error(name, f"header '{name}' has no fields")
        htype = ir.HeaderType(str(name), tuple(out), self.src.loc_of(name))
        if htype.fixed_bits % 8:
            raise self.error(name, f"header '{name}' is {htype.fixed_bits} bits long, "
                                   "not a whole number of bytes",
                             hint="pad it with a reserved field so the widths add up to a multiple of 8")
        self.header_types[str(name)] = htype

    def width(self, tok: lark.Token, lo: int, hi: int) -> int:
        try:
            c = parse_int(str(tok))
        except ValueError as e:
            raise self.error(tok, str(e)) from None
        if c.width is not None:
            raise self.error(tok, f"a width or index is a plain number, not {shorten(str(tok))}",
                             hint=f"write {c.value}")
        value = c.value
        if not lo <= value <= hi:
            raise self.error(tok, f"width {value} out of range; expected {lo}..{hi}")
        return value

    def struct(self, node: lark.Tree) -> None:
        _, (name, *_members) = self._annotations(node.children)
        self._declare(self.structs, name, "struct")
        self._declare(self.header_types, name, "type")
        self.structs[str(name)] = (node, self.src.loc_of(name))

    def const(self, node: lark.Tree) -> None:
        _, (ctype, name, value) = self._annotations(node.children)
        self._declare(self.consts, name, "constant")
        if ctype.data != "bit_type":
            raise self.error(ctype, "constants must have a bit<N> type")
        width = self.width(ctype.children[0], 1, 128)
        c = self.expr(value)
        if not isinstance(c, ir.Const):
            raise self.error(value, f"constant '{name}' needs a value known at compile time")
        self.fits(value, c.value, width)
        self.consts[str(name)] = ir.ConstDecl(str(name), width, c.value, self.src.loc_of(name))

    def fits(self, node, value: int, width: int) -> None:
        if not 0 <= value < (1 << width):
            raise self.error(node, f"value {_hex(value)} does not fit in bit<{width}>",
                             hint=f"use a value from 0 to {(1 << width) - 1:#x}")

    # -- the parser block -----------------------------------------------------

    def parser(self, node: lark.Tree) -> tuple[dict[str, ir.ParseState], str]:
        annotations, (pname, *rest) = self._annotations(node.children)
        params = [c for c in rest if c.data == "param"]
        state_nodes = [c for c in rest if c.data == "state"]
        for a in annotations:
            self.check_annotation(a, allowed=())
        self.params(pname, params)
        for sname, (_, sloc) in self.structs.items():
            if sname not in self.used_structs:
                raise render(sloc, f"struct '{sname}' is not a parameter of the parser",
                             hint="structs are the headers struct (out parameter) and the "
                                  "parse-info struct (inout parameter) only")
        if not state_nodes:
            raise self.error(pname, f"parser '{pname}' has no states")
        names: dict[str, lark.Token] = {}
        for s in state_nodes:
            _, (sname, *_x) = self._annotations(s.children)
            if str(sname) in _RESERVED_STATES:
                raise self.error(sname, f"'{sname}' is a final state and cannot be declared")
            if str(sname) in names:
                raise self.error(sname, f"duplicate state '{sname}' (first declared at line "
                                        f"{names[str(sname)].line})")
            names[str(sname)] = sname
        self.state_names = set(names)
        states = {}
        for s in state_nodes:
            st = self.state(s)
            states[st.name] = st
        entry = "start" if "start" in states else next(iter(states))
        self.check_reachable(states, entry)
        return states, entry

    def check_reachable(self, states: dict[str, ir.ParseState], entry: str) -> None:
        """Every state is reached from the entry state or from a hook (else it is dead code)."""
        seen: set[str] = set()
        todo = [entry, *(h.target for h in self.hooks)]
        while todo:
            name = todo.pop()
            if name in seen or name not in states:
                continue
            seen.add(name)
            todo.extend(ir.targets(states[name].transition))
        for st in states.values():
            if st.name not in seen:
                raise render(st.loc, f"state '{st.name}' is never reached from the entry state "
                                     f"'{entry}'",
                             hint="transition to it from another state, mark it with "
                                  f"@{ANNOTATION_REACH}, or remove it")

    def params(self, pname: lark.Token, params: list[lark.Tree]) -> None:
        self.used_structs: set[str] = set()
        usage = ("expected (packet_in pkt, out headers_t hdr[, inout parse_info_t info])")
        for p in params:
            direction = str(p.children[0].children[0]) if p.children[0].data == "direction" else ""
            ptype, pvar = p.children[-2], p.children[-1]
            tname = str(ptype.children[0]) if ptype.data == "named_type" else None
            if tname == "packet_in" and not direction and self.pkt is None:
                self.pkt = str(pvar)
            elif direction == "out" and tname in self.structs and self.hdr is None:
                self.hdr = str(pvar)
                self.used_structs.add(tname)
                self.headers_struct(self.structs[tname][0])
            elif direction == "inout" and tname in self.structs and self.info is None:
                self.info = str(pvar)
                self.used_structs.add(tname)
                self.info_struct(self.structs[tname][0])
            else:
                what = tname if tname else "bit<...>"
                if tname and tname not in self.structs and tname != "packet_in":
                    raise self.error(ptype, f"unknown type '{tname}'", hint=usage)
                raise self.error(p, f"unsupported parser parameter '{direction} {what} {pvar}'"
                                 .replace("  ", " "), hint=usage)
        if self.pkt is None or self.hdr is None:
            raise self.error(pname, f"parser '{pname}' needs a packet_in and an out headers "
                                    "parameter", hint=usage)

    def _members(self, node: lark.Tree):
        _, (_name, *members) = self._annotations(node.children)
        seen: set[str] = set()
        for m in members:
            _, (mtype, mname) = self._annotations(m.children)
            if str(mname) in seen:
                raise self.error(mname, f"duplicate struct member '{mname}'")
            seen.add(str(mname))
            yield mtype, mname

    def headers_struct(self, node: lark.Tree) -> None:
        for mtype, mname in self._members(node):
            if mtype.data == "bit_type":
                raise self.error(mtype, f"member '{mname}' of the headers struct must be a header",
                                 hint="put bit<N> values in the parse-info (inout) struct")
            tname = mtype.children[0]
            if str(tname) not in self.header_types:
                raise self.error(tname, f"unknown header type '{tname}'",
                                 hint=self.choices(self.header_types, "declared header types"))
            stack = self.width(mtype.children[1], 1, 64) if mtype.data == "stack_type" else None
            self.instances[str(mname)] = ir.Instance(str(mname), self.header_types[str(tname)],
                                                     stack, self.name, self.src.loc_of(mname))

    def info_struct(self, node: lark.Tree) -> None:
        for mtype, mname in self._members(node):
            if mtype.data != "bit_type":
                raise self.error(mtype, f"parse-info member '{mname}' must be bit<N>")
            self.meta[str(mname)] = ir.MetaField(str(mname), self.width(mtype.children[0], 1, 64),
                                                 self.src.loc_of(mname))

    @staticmethod
    def choices(names, what: str) -> str:
        names = sorted(names)
        return f"{what}: {', '.join(names)}" if names else f"no {what}"

    def check_annotation(self, a: lark.Tree, allowed: tuple[str, ...]) -> None:
        name = str(a.children[0])
        if name.startswith("ebplane_") and name not in allowed:
            raise self.error(a.children[0], f"unknown or misplaced annotation @{name}",
                             hint=f"@{ANNOTATION_REACH} goes on a parser state")

    # -- states ---------------------------------------------------------------

    def state(self, node: lark.Tree) -> ir.ParseState:
        annotations, (name, *body) = self._annotations(node.children)
        for a in annotations:
            self.check_annotation(a, allowed=(ANNOTATION_REACH,))
            if str(a.children[0]) == ANNOTATION_REACH:
                self.hook(a, str(name))
        statements = tuple(self.statement(s) for s in body[:-1])
        return ir.ParseState(str(name), statements, self.transition(body[-1]), self.name,
                             self.src.loc_of(name))

    def hook(self, a: lark.Tree, target: str) -> None:
        args = a.children[1:]
        usage = f'expected @{ANNOTATION_REACH}("parent_state", value[, value...])'
        if len(args) < 2 or args[0].data != "string_arg":
            raise self.error(a, f"@{ANNOTATION_REACH} needs a parent state and key values",
                             hint=usage)
        parent = str(args[0].children[0])[1:-1]
        keys = tuple(self.keyset_elem(k, None) for k in args[1:])
        if parent in self.state_names:
            raise self.error(args[0], f"@{ANNOTATION_REACH} names '{parent}', a state of this "
                                      "file", hint="write the case into that state's select instead")
        self.hooks.append(Hook(parent, keys, target, self.src.loc_of(a)))

    def statement(self, node: lark.Tree) -> ir.Statement:
        if node.data == "assign":
            target, value = node.children
            parts = target.children
            if self.info is None or str(parts[0]) != self.info or len(parts) != 2:
                raise self.error(target, "only parse-info fields can be assigned",
                                 hint=f"write `{self.info or 'info'}.FIELD = expression;`")
            ref = self.read(target)
            rhs = self.expr(value)
            self.same_width(value, ref.width, rhs, f"assignment to {self.info}.{parts[1]}")
            return ir.Assign(ref, rhs)
        path, *args = node.children
        parts = [str(p) for p in path.children]
        if len(parts) != 2 or parts[0] != self.pkt:
            raise self.error(path, f"unknown call '{'.'.join(parts)}'",
                             hint=f"statements are {self.pkt}.extract(...), {self.pkt}.advance(...) "
                                  "and parse-info assignments")
        method = parts[1]
        if method == "extract":
            return self.extract(node, args)
        if method == "advance":
            if len(args) != 1:
                raise self.error(node, "advance takes one argument: the number of bits to skip")
            bits = self.expr(args[0])
            self.same_width(args[0], 32, bits, "advance")
            return ir.Advance(bits)
        raise self.error(path.children[1], f"unknown packet method '{method}'",
                         hint="expected extract or advance (lookahead is an expression)")

    def extract(self, node: lark.Tree, args: list) -> ir.Extract:
        if not 1 <= len(args) <= 2 or not (isinstance(args[0], lark.Tree) and args[0].data == "path"):
            raise self.error(node, f"extract takes a header: {self.pkt}.extract({self.hdr}.NAME)")
        parts = args[0].children
        if str(parts[0]) != self.hdr or len(parts) not in (2, 3):
            raise self.error(args[0], f"extract needs {self.hdr}.HEADER or {self.hdr}.STACK.next")
        inst = self.instance(parts[1])
        is_next = len(parts) == 3
        if is_next and (str(parts[2]) != "next" or inst.stack is None):
            raise self.error(parts[2], f"expected {self.hdr}.{inst.name}"
                             + (".next" if inst.stack else ""),
                             hint="header stacks are extracted with .next")
        if inst.stack is not None and not is_next:
            raise self.error(args[0], f"'{inst.name}' is a header stack; extract "
                                      f"{self.hdr}.{inst.name}.next",
                             hint="each extract fills the next free slot of the stack")
        varbit = inst.type.varbit_field
        if varbit and len(args) != 2:
            raise self.error(node, f"header '{inst.type.name}' has varbit field '{varbit.name}': "
                                   "give its length in bits as the second argument")
        if not varbit and len(args) == 2:
            raise self.error(args[1], f"header '{inst.type.name}' has no varbit field; "
                                      "the length argument is for varbit headers")
        bits = None
        if varbit:
            bits = self.expr(args[1])
            self.same_width(args[1], 32, bits, "varbit length")
        return ir.Extract(inst.name, is_next, bits)

    def instance(self, tok: lark.Token) -> ir.Instance:
        if str(tok) not in self.instances:
            raise self.error(tok, f"unknown header '{tok}'",
                             hint=self.choices(self.instances, "headers of this file"))
        return self.instances[str(tok)]

    def transition(self, node: lark.Tree) -> ir.Transition:
        if node.data == "direct":
            return ir.Direct(self.target(node.children[0]))
        exprs = [c for c in node.children if c.data != "case"]
        keys = tuple(self.expr(k) for k in exprs)
        for k, e in zip(exprs, keys):
            if e.width is None:
                raise self.error(k, "select key has no width",
                                 hint="select on fields, parse-info, lookahead or a (bit<N>) cast")
        cases = []
        for c in (c for c in node.children if c.data == "case"):
            keyset, target = c.children
            cases.append(ir.Case(self.keyset(keyset, keys), self.target(target), self.src.loc_of(c)))
        return ir.Select(keys, tuple(cases))

    def target(self, tok: lark.Token) -> str:
        name = str(tok)
        if name not in self.state_names and name not in _RESERVED_STATES:
            self.external.setdefault(name, self.src.loc_of(tok))  # checked when composing
        return name

    def keyset(self, node: lark.Tree, keys: tuple[ir.Expr, ...]) -> tuple[ir.KeyMatch, ...] | None:
        elems = node.children if node.data == "tuple_keyset" else [node]
        if len(elems) == 1 and elems[0].data in ("ks_default", "ks_any"):
            return None
        if len(elems) != len(keys):
            raise self.error(node, f"case has {len(elems)} value(s) but select has {len(keys)} key(s)",
                             hint="write one value per key, as a tuple (a, b) for several keys")
        return tuple(self.keyset_elem(e, k.width) for e, k in zip(elems, keys))

    def keyset_elem(self, node: lark.Tree, width: int | None) -> ir.KeyMatch:
        if node.data in ("ks_default", "ks_any"):
            return ir.Any()
        values = [self.value(c, width) for c in node.children]
        if node.data == "ks_exact":
            return ir.Exact(values[0])
        if node.data == "ks_mask":
            return ir.Masked(*values)
        if values[0].value > values[1].value:
            raise self.error(node, f"empty range {_hex(values[0].value)} .. {_hex(values[1].value)}",
                             hint="write the lower bound first")
        return ir.Range(*values)

    def value(self, node, width: int | None) -> ir.Const:
        c = self.expr(node)
        if not isinstance(c, ir.Const):
            raise self.error(node, "case values must be constants")
        if width is not None:
            self.fits(node, c.value, width)
        return c

    # -- expressions ----------------------------------------------------------

    def expr(self, node) -> ir.Expr:
        kind = node.data
        if kind == "number":
            try:
                c = parse_int(str(node.children[0]))
            except ValueError as e:
                raise self.error(node, str(e)) from None
            if c.width is not None:
                if c.width == 0 or c.width > 128:
                    raise self.error(node, f"width {c.width} out of range; expected 1..128")
                self.fits(node, c.value, c.width)
            return c
        if kind == "path":
            return self.read(node)
        if kind == "generic_call":
            path, btype = node.children
            parts = [str(p) for p in path.children]
            if parts != [self.pkt, "lookahead"]:
                raise self.error(path, f"unknown generic call '{'.'.join(parts)}'",
                                 hint=f"expected {self.pkt}.lookahead<bit<N>>()")
            return ir.Lookahead(self.width(btype.children[0], 1, 64))
        if kind == "cast":
            btype, inner = node.children
            width = self.width(btype.children[0], 1, 64)
            e = self.expr(inner)
            if isinstance(e, ir.Const):
                return ir.Const(e.value & ((1 << width) - 1), width)
            return ir.Cast(width, e)
        if kind == "unop":
            op, inner = node.children
            e = self.expr(inner)
            if isinstance(e, ir.Const):
                v = -e.value if str(op) == "-" else ~e.value
                return ir.Const(v & ((1 << e.width) - 1) if e.width else v, e.width)
            return ir.UnOp(str(op), e, e.width)
        if kind == "binop":
            return self.binop(node)
        raise self.error(node, f"unsupported expression ({kind})")

    def binop(self, node: lark.Tree) -> ir.Expr:
        lnode, optok, rnode = node.children
        op = str(optok)
        left, right = self.expr(lnode), self.expr(rnode)
        if op in ("<<", ">>"):
            width = left.width
        elif left.width is not None and right.width is not None and left.width != right.width:
            raise self.error(optok, f"width mismatch: bit<{left.width}> {op} bit<{right.width}>",
                             hint=f"cast one side, e.g. (bit<{max(left.width, right.width)}>)")
        else:
            width = left.width if left.width is not None else right.width
            for side, snode in ((left, lnode), (right, rnode)):
                if isinstance(side, ir.Const) and side.width is None and width is not None:
                    self.fits(snode, side.value, width)
        if isinstance(left, ir.Const) and isinstance(right, ir.Const):
            if op in ("<<", ">>") and not 0 <= right.value <= MAX_CONST_BITS:
                raise self.error(rnode, f"shift by {_hex(right.value)}: a shift count is "
                                        f"0..{MAX_CONST_BITS}")
            v = _fold(op, left.value, right.value)
            if v.bit_length() > MAX_CONST_BITS:
                raise self.error(optok, f"constant expression of more than {MAX_CONST_BITS} "
                                        f"bits", hint="values are at most 128 bits wide")
            return ir.Const(v & ((1 << width) - 1) if width else v, width)
        return ir.BinOp(op, left, right, width)

    def same_width(self, node, width: int, e: ir.Expr, what: str) -> None:
        if e.width is None:
            assert isinstance(e, ir.Const)
            self.fits(node, e.value, width)
        elif e.width != width:
            raise self.error(node, f"width mismatch in {what}: expected bit<{width}>, "
                                   f"got bit<{e.width}>", hint=f"cast it: (bit<{width}>)(...)")

    def read(self, node: lark.Tree) -> ir.Expr:
        parts = node.children
        head = str(parts[0])
        if len(parts) == 1:
            if head in self.consts:
                c = self.consts[head]
                return ir.Const(c.value, c.width, c.name)
            raise self.error(parts[0], f"unknown name '{head}'",
                             hint=f"expected a constant, {self.hdr}.HEADER.FIELD or "
                                  f"{self.info or 'info'}.FIELD")
        if head == self.info:
            if len(parts) != 2 or str(parts[1]) not in self.meta:
                raise self.error(parts[1], f"unknown parse-info field '{parts[1]}'",
                                 hint=self.choices(self.meta, "parse-info fields"))
            m = self.meta[str(parts[1])]
            return ir.MetaRef(m.name, m.width)
        if head != self.hdr:
            raise self.error(parts[0], f"unknown name '{head}'",
                             hint=f"expected {self.hdr}.HEADER.FIELD, {self.info or 'info'}.FIELD "
                                  "or a constant")
        inst = self.instance(parts[1])
        rest = list(parts[2:])
        index: int | str | None = None
        if inst.stack is not None:
            if not rest or not (str(rest[0]) == "last" or rest[0].type == "INT"):
                raise self.error(rest[0] if rest else parts[1],
                                 f"'{inst.name}' is a header stack: expected .last or [index]")
            sel = rest.pop(0)
            index = "last" if str(sel) == "last" else self.width(sel, 0, inst.stack - 1)
        if len(rest) != 1:
            raise self.error(rest[1] if len(rest) > 1 else node,
                             f"expected {self.hdr}.{inst.name}{'' if index is None else '.last'}.FIELD")
        f = inst.type.field(str(rest[0]))
        if f is None:
            raise self.error(rest[0], f"header type '{inst.type.name}' has no field '{rest[0]}'",
                             hint=self.choices([x.name for x in inst.type.fields], "fields"))
        if f.varbit:
            raise self.error(rest[0], f"varbit field '{f.name}' cannot be read in the parser")
        return ir.FieldRef(inst.name, f.name, f.width, index)


def _fold(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "<<": a << b, ">>": a >> b,
            "&": a & b, "|": a | b, "^": a ^ b}[op]


def module_name(path: Path) -> str:
    """A protocol's name is its file's stem (``tenant.p4`` -> ``tenant``)."""
    return path.stem
