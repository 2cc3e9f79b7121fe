"""Composing protocol files into one specialised parser.

Steps (docs/p4-subset.md, "Composition"): merge the selected files'
declarations; add the cases their ``@ebplane_reach`` hooks ask for; prune every
transition to a protocol that is not selected (a case is dropped, a direct
transition becomes ``accept``); keep the states reachable from the start; refuse
loops that no header stack bounds; and record which fields must be loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ebplane.errors import SpecError
from ebplane.protocols import ir
from ebplane.protocols.frontend import ProtocolModule
from ebplane.protocols.graph import ParserGraph, resolve_field
from ebplane.protocols.library import ProtocolLibrary, load_library, load_protocol_file
from ebplane.protocols.source import render


def build_parser(protocols: Iterable[str | Path | ProtocolModule],
                 needed_fields: Iterable[str] | None = None) -> ParserGraph:
    """Compose the listed protocols into a :class:`ParserGraph`.

    ``protocols`` are library names (``"ipv4"``), paths of users' ``.p4``
    files, or already parsed modules (:func:`parse_protocol_text`).  ``needed_fields`` names the fields the pipeline's stages read
    (``"ipv4.dstAddr"``); the parser loads those and the ones it selects on,
    and skips the rest of each header by offset.  None means "all fields".
    """
    lib = load_library()
    modules = _select(protocols, lib)
    if not modules:
        raise SpecError("no protocols listed", field="protocols",
                        allowed=", ".join(lib.names()), hint="list at least ethernet")
    selected = {m.name for m in modules}
    owner = lib.state_owner()
    for m in modules:
        owner.update(dict.fromkeys(m.states, m.name))
    states: dict[str, ir.ParseState] = {}
    for m in modules:
        states.update(m.states)
    _apply_hooks(modules, states, owner, selected)
    live = set(states) | set(ir.FINAL_STATES)
    states = {name: replace(st, transition=_prune(st.transition, live))
              for name, st in states.items()}
    start = _start(modules, states)
    states = _reachable(start, states)
    _check_reached(modules, start, states, lib)
    check_cycles(states)
    header_types, instances, meta, consts = _merge(modules, states)
    needed = _needed(states, instances, needed_fields)
    return ParserGraph(tuple(m.name for m in modules), start, states, header_types,
                       instances, meta, consts, needed)


def _select(protocols: Iterable[str | Path | ProtocolModule],
            lib: ProtocolLibrary) -> list[ProtocolModule]:
    out: dict[str, ProtocolModule] = {}
    for p in protocols:
        if isinstance(p, ProtocolModule):
            out[p.name] = p
            continue
        is_file = isinstance(p, Path) or str(p).endswith(".p4") or "/" in str(p)
        if not is_file and str(p) not in lib:
            raise SpecError(f"unknown protocol '{p}'", field="protocols", given=str(p),
                            allowed=", ".join(lib.names()),
                            hint="use a library protocol or the path of a .p4 file")
        m = load_protocol_file(p) if is_file else lib[str(p)]
        if m.name in out:
            raise SpecError(f"protocol '{m.name}' is listed twice", field="protocols",
                            hint="list each protocol once")
        out[m.name] = m
    return list(out.values())


def _apply_hooks(modules: list[ProtocolModule], states: dict[str, ir.ParseState],
                 owner: dict[str, str], selected: set[str]) -> None:
    """Put each hook's case first in its parent's select (if the parent is selected)."""
    for m in modules:
        for hook in m.hooks:
            if owner.get(hook.parent) not in selected:
                continue
            parent = states[hook.parent]
            t = parent.transition
            if not isinstance(t, ir.Select):
                raise render(hook.loc, f"state '{hook.parent}' has no select to add a case to",
                             hint="hook into a state that ends with transition select(...)")
            if len(hook.keys) != len(t.keys):
                raise render(hook.loc, f"'{hook.parent}' selects on {len(t.keys)} key(s) but "
                                       f"the hook gives {len(hook.keys)} value(s)",
                             hint="give one value per select key")
            for k, key in zip(hook.keys, t.keys):
                for c in (getattr(k, a, None) for a in ("value", "mask", "lo", "hi")):
                    if c is not None and not 0 <= c.value < (1 << key.width):
                        raise render(hook.loc, f"value {c.value:#x} does not fit the key "
                                               f"bit<{key.width}> of '{hook.parent}'")
            clash = next((c for c in t.cases
                          if ir.same_keys(c.keys, hook.keys) and c.target in states), None)
            if clash is not None:
                raise render(hook.loc, f"'{hook.parent}' already goes to '{clash.target}' "
                                       "for these values",
                             hint=f"leave protocol '{owner[clash.target]}' out of protocols:, "
                                  "or hook on other values")
            case = ir.Case(hook.keys, hook.target, hook.loc)
            states[hook.parent] = replace(parent, transition=ir.Select(t.keys, (case, *t.cases)))


def _prune(t: ir.Transition, live: set[str]) -> ir.Transition:
    """Drop cases to unselected protocols and cases after a catch-all default."""
    if isinstance(t, ir.Direct):
        return t if t.target in live else ir.Direct(ir.ACCEPT)
    cases: list[ir.Case] = []
    for c in t.cases:
        if c.target in live:
            cases.append(c)
            if c.is_default:
                break
    if not cases:
        return ir.Direct(ir.REJECT)  # P4: no case matches -> reject
    if len(cases) == 1 and cases[0].is_default:
        return ir.Direct(cases[0].target)
    return ir.Select(t.keys, tuple(cases))


def _start(modules: list[ProtocolModule], states: dict[str, ir.ParseState]) -> str:
    """The entry of the one protocol no other listed protocol reaches (else the first listed)."""
    reached = {m.name: False for m in modules}
    entries = {m.entry: m.name for m in modules}
    for st in states.values():
        for target in ir.targets(st.transition):
            if target in entries and entries[target] != st.protocol:
                reached[entries[target]] = True
    roots = [m for m in modules if not reached[m.name]]
    if len(roots) == 1:
        return roots[0].entry
    return modules[0].entry


def _reachable(start: str, states: dict[str, ir.ParseState]) -> dict[str, ir.ParseState]:
    seen: dict[str, None] = {}
    todo = [start]
    while todo:
        name = todo.pop(0)
        if name in seen or name in ir.FINAL_STATES:
            continue
        seen[name] = None
        todo.extend(ir.targets(states[name].transition))
    return {name: states[name] for name in states if name in seen}


def _check_reached(modules: list[ProtocolModule], start: str,
                   states: dict[str, ir.ParseState], lib: ProtocolLibrary) -> None:
    for m in modules:
        if m.entry in states:
            continue
        parents = [p.name for p in lib.modules.values()
                   if any(m.entry in ir.targets(st.transition) for st in p.states.values())]
        hooked = [h.parent for h in m.hooks]
        how = (f"it is reached from {', '.join(parents)}" if parents else
               f"it hooks into {', '.join(hooked)}" if hooked else "nothing reaches it")
        raise SpecError(f"protocol '{m.name}' is never reached from the start state "
                        f"'{start}' with the protocols listed ({how})", field="protocols",
                        hint=f"add {' or '.join(parents)} to protocols:" if parents else
                        "list the protocol that leads to it")


def check_cycles(states: dict[str, ir.ParseState]) -> None:
    """Refuse a loop unless every way round it extracts into a header stack.

    Each pass through a state that extracts ``stack.next`` uses one slot of a
    bounded stack, so a loop through such a state ends; a loop avoiding all of
    them could run forever.  Remove those states and look for a cycle in the rest.
    """
    free = {n: st for n, st in states.items() if not st.extracts_stack}
    color: dict[str, int] = {}  # 1 = on the DFS path, 2 = done
    path: list[str] = []

    def dfs(name: str) -> list[str] | None:
        color[name] = 1
        path.append(name)
        for nxt in ir.targets(free[name].transition):
            if nxt not in free:
                continue
            if color.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in color:
                found = dfs(nxt)
                if found:
                    return found
        color[name] = 2
        path.pop()
        return None

    for name in free:
        if name not in color:
            cycle = dfs(name)
            if cycle:
                raise render(states[cycle[0]].loc, "parser loop that nothing bounds: "
                             + " -> ".join(cycle),
                             hint="extract into a header stack (hdr.NAME.next) in one of these "
                                  "states, so the stack's size bounds the loop")


def _merge(modules: list[ProtocolModule], states: dict[str, ir.ParseState]):
    """Header types, instances, parse-info fields and constants the kept states use."""
    header_types: dict[str, ir.HeaderType] = {}
    instances: dict[str, ir.Instance] = {}
    meta: dict[str, ir.MetaField] = {}
    consts: dict[str, ir.ConstDecl] = {}
    for m in modules:
        for table, items, what in ((header_types, m.header_types, "header type"),
                                   (meta, m.meta, "parse-info field"),
                                   (consts, m.consts, "constant"),
                                   (instances, m.instances, "header")):
            for name, item in items.items():
                prev = table.setdefault(name, item)
                if prev is not item and (what == "header" or prev != item):
                    raise render(item.loc, f"{what} '{name}' is also declared by another "
                                           f"protocol ({prev.loc}) " +
                                 ("" if what == "header" else "differently"),
                                 hint="rename it, or declare it identically in both files")
    used_inst = {s.instance for st in states.values() for s in st.statements
                 if isinstance(s, ir.Extract)}
    used_meta = {n.name for st in states.values() for e in ir.state_exprs(st)
                 for n in ir.walk(e) if isinstance(n, ir.MetaRef)}
    used_meta |= {s.target.name for st in states.values() for s in st.statements
                  if isinstance(s, ir.Assign)}
    instances = {n: i for n, i in instances.items() if n in used_inst}
    meta = {n: f for n, f in meta.items() if n in used_meta}
    types = {i.type.name for i in instances.values()}
    return ({n: t for n, t in header_types.items() if n in types}, instances, meta, consts)


def _needed(states: dict[str, ir.ParseState], instances: dict[str, ir.Instance],
            wanted: Iterable[str] | None) -> dict[str, tuple[str, ...]]:
    """Fields to load per instance: the parser's own reads plus what the stages asked for."""
    names: dict[str, set[str]] = {n: set() for n in instances}
    for st in states.values():
        for e in ir.state_exprs(st):
            for n in ir.walk(e):
                if isinstance(n, ir.FieldRef):
                    names[n.instance].add(n.field)
    if wanted is None:
        for inst in instances.values():
            names[inst.name] |= {f.name for f in inst.type.fields if not f.varbit}
    else:
        for w in wanted:
            fp = resolve_field(instances, w)
            names[fp.instance].add(fp.field)
    return {inst.name: tuple(f.name for f in inst.type.fields if f.name in names[inst.name])
            for inst in instances.values()}
