"""The control plane of applied pipelines: apply (all or nothing), detach, status, stats,
and run-time rule edits.

Apply, in order, so that a failure at any step leaves the previous state in force:
1. validate the spec and check its interfaces exist; compile every filter's rules (a rule
   set that cannot be classified fails here);
2. generate, compile and load the program, reusing the pipeline's pinned maps whose
   definition is unchanged (rules and counters carry over);
3. fill tables that are new; then attach (first apply) or atomically replace the program on
   each interface (re-apply), rolling back the interfaces already done if one fails (with
   parser mode xdp, each interface has two attachments: the TC program and the XDP parser);
4. install changed rule sets into reused tables (atomic generation flip);
5. pin maps, links and the program, and write the state file.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ebplane.codegen.pipeline import (HANDOFF_COUNTERS, Features, spec_features,
                                      user_layout_for)
from ebplane.errors import EbplaneError, KeyNotFound, NotFound, UsageError
from ebplane.kernel import bpffs
from ebplane.kernel.links import Link
from ebplane.kernel.maps import Map
from ebplane.kernel.programs import Program
from ebplane.net import attach as att
from ebplane.net import iface
from ebplane.net.probe import netns_enter
from ebplane.runtime.build import Built, build, compile_filter
from ebplane.runtime.stages import runtime_for
from ebplane.runtime.state import PipelineState, all_names, locked, pin_dir
from ebplane.runtime.tables import RuleEntry, assign_ids, fresh_ids
from ebplane.stages.filter.gen import map_names, slots as filter_slots, tree_group
from ebplane.stages.filter.plan import CompiledTable, FilterPlan
from ebplane.stages.filter.table import FilterTable
from ebplane.spec.located import Where
from ebplane.spec import CountStage, FilterStage, PipelineSpec, Rule, load_spec, parse_rule, parse_spec
from ebplane.kernel.codec import COUNT, U32
from ebplane.spec.rules import PROTO_NUMBERS

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass
class ApplyResult:
    name: str
    created: bool
    prog_id: int
    attachments: list[dict]
    compiled_from_cache: bool
    reused_maps: list[str]
    rules: dict[str, int]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# -- helpers ----------------------------------------------------------------------------------

def _filters(spec: PipelineSpec) -> list[FilterStage]:
    return [s for s in spec.stages if isinstance(s, FilterStage)]


def _entries_from_state(items: list[dict], protocols: Sequence[str]) -> list[RuleEntry]:
    """Rules as the state file keeps them, checked against the pipeline's protocols (match:
    fields may belong to users' .p4 files)."""
    return [RuleEntry(d["id"], Rule.from_dict(d["rule"], protocols=protocols)) for d in items]


def _stored_entries(items: list[dict], protocols: Sequence[str]) -> list[RuleEntry]:
    """Rules as the state file keeps them, for an edit under the pipeline's lock: they were
    validated against these same protocols when stored (the state is root's only), so only
    their form is read back (about 8x faster than validating: 100k rules take 0.8 s instead
    of 6 s on every ``rules add``).  Rules with ``match:`` are validated as usual."""
    out = []
    for d in items:
        r = d["rule"]
        if "match" in r:
            out.append(RuleEntry(d["id"], Rule.from_dict(r, protocols=protocols)))
            continue
        out.append(RuleEntry(d["id"], Rule(
            action=r["action"],
            src=ipaddress.ip_network(r["src"]) if "src" in r else None,
            dst=ipaddress.ip_network(r["dst"]) if "dst" in r else None,
            proto=PROTO_NUMBERS.get(r["proto"], r["proto"]) if "proto" in r else None,
            sport=_port_range(r["sport"]) if "sport" in r else None,
            dport=_port_range(r["dport"]) if "dport" in r else None,
            vlan=r.get("vlan"))))
    return out


def _port_range(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    lo, hi = v.split("-")
    return int(lo), int(hi)


def _spec_of(state: PipelineState) -> PipelineSpec:
    return _parsed_spec(state.spec_text, state.spec_file)


@functools.lru_cache(maxsize=8)
def _parsed_spec(text: str, file: str) -> PipelineSpec:
    """One parse per spec text and process: a command reads the state several times, and a
    spec with 100k rules takes seconds to validate (the model is frozen, so sharing is safe)."""
    return parse_spec(text, file)


def _attach_key(a: dict) -> tuple[str, str]:
    return a["ifname"], a["hook"]


def _link_pin(name: str, ifname: str, hook: str) -> Path:
    # bpffs refuses names with dots (reserved), which interface names may have (eth0.100)
    return pin_dir(name) / "links" / f"{ifname.replace('.', '%2e')}@{hook}"


# -- apply ------------------------------------------------------------------------------------

def apply(spec_path: str | Path, *, progress: Progress = _quiet) -> ApplyResult:
    spec = load_spec(spec_path)
    text = Path(spec_path).read_text()
    with locked(spec.name):
        return _apply(spec, text, str(spec_path), progress=progress)


def _apply(spec: PipelineSpec, spec_text: str, spec_file: str, *, progress: Progress = _quiet,
           live_override: dict[str, list[RuleEntry]] | None = None) -> ApplyResult:
    t0 = time.monotonic()
    bpffs.ensure_mounted()
    old = PipelineState.load(spec.name)
    notes: list[str] = []
    if old and old.netns != spec.netns:
        raise UsageError(f"pipeline '{spec.name}' is applied in network namespace "
                         f"{old.netns or '(current)'}; the spec now says {spec.netns or '(current)'}",
                         hint=f"detach it first: ebplane detach {spec.name}")

    # 1. interfaces exist; decide each table's rules and check they classify
    if spec.netns and not _netns_exists(spec.netns):  # errors name the spec's field
        raise NotFound(f"{spec.source}: netns: network namespace '{spec.netns}' does not exist",
                       hint="see `ip netns list`; the lab's namespaces are created by "
                            "`ebplane lab up`")
    with netns_enter(spec.netns):
        for i, ifname in enumerate(spec.interfaces):
            try:
                iface.ifindex(ifname)
            except UsageError as e:
                raise type(e)(f"{spec.source}: interfaces[{i}]: {e.message}",
                              hint=e.hint) from None
        for st in spec.stages:
            rt = runtime_for(st.kind)
            if rt:
                notes += rt.check(spec, st)
    live: dict[str, list[RuleEntry]] = {}
    previous_of: dict[str, list[RuleEntry]] = {}  # what the kernel holds now, per filter
    for st in _filters(spec):
        previous = _entries_from_state(old.live_rules.get(st.name, []), spec.protocols) if old else []
        previous_of[st.name] = previous
        spec_rules = [r.to_dict() for r in st.rules]
        if live_override and st.name in live_override:
            live[st.name] = live_override[st.name]
        elif old and st.name in old.live_rules and old.spec_rules.get(st.name) == spec_rules:
            live[st.name] = previous   # spec unchanged: keep run-time edits
        else:
            if old and st.name in old.live_rules:
                notes.append(f"filter '{st.name}': the spec's rules changed; they replace the live rules")
            live[st.name] = assign_ids(st.rules, previous, st.capacity)
    features = spec_features(spec, {k: [e.rule for e in v] for k, v in live.items()})
    # compile every table for the program's user-area layout: a rule set that cannot be
    # classified fails here, before anything changes
    layout = user_layout_for(spec.protocols, features)
    same_layout = old is not None and \
        user_layout_for(spec.protocols, Features(**old.features)) == layout
    compiled: dict[str, CompiledTable] = {}
    keep_groups: set[str] = set()  # tree arrays the new program shares with the running one
    for st in _filters(spec):
        running = _running_plan(old, st.name, previous_of[st.name]) if same_layout else None
        compiled[st.name] = compile_filter(st, live[st.name], layout, running)
        if compiled[st.name].plan.form == "tree" and compiled[st.name].plan.same_code(running):
            keep_groups.add(tree_group(st.name))

    # 2. build, reusing compatible pinned maps
    progress(f"compiling pipeline '{spec.name}' ({spec.hook}, {len(spec.stages)} stages)")
    maps_dir = pin_dir(spec.name) / "maps"
    built = build(spec, features, reuse_pins=maps_dir if old else None,
                  filters={k: c.plan for k, c in compiled.items()}, keep_groups=keep_groups)
    notes += built.notes
    new_links: list[tuple[dict, Link | None]] = []
    replaced: list[tuple[dict, Program]] = []  # (attachment, its new program)
    try:
        # 3a. tables the program does not share with the running version get their rules
        # now; shared tree arrays get a changed rule set after the swap (same plan, so
        # both versions read them alike)
        deferred: list[tuple[FilterTable, CompiledTable, list[int]]] = []
        for st in _filters(spec):
            table = built.table(st)
            names = map_names(st.name)
            counters_kept = names["counters"] in built.reused_maps
            fresh = fresh_ids(live[st.name], previous_of[st.name]) if counters_kept \
                else [e.id for e in live[st.name]]
            if tree_group(st.name) in keep_groups and names["config"] in built.reused_maps:
                if live[st.name] != previous_of[st.name]:
                    deferred.append((table, compiled[st.name], fresh))
            else:
                table.install(compiled[st.name], fresh)
        # 3b. stage kinds with their own control plane fill their maps; then attach / replace
        with netns_enter(spec.netns):
            for st in spec.stages:
                rt = runtime_for(st.kind)
                if rt:
                    notes += rt.prepare(built, spec, st)
            old_atts = {_attach_key(a): a for a in (old.attachments if old else [])}
            for ifname in spec.interfaces:
                for _, prog in _pinned_progs(built):  # parser mode xdp: two per interface
                    hook = _hook_of(prog, spec)
                    key = (ifname, hook)
                    if key in old_atts:
                        progress(f"replacing program on {ifname} ({hook})")
                        _replace(old_atts[key], prog, old_atts[key]["prog_id"])
                        replaced.append((old_atts[key], prog))
                    else:
                        progress(f"attaching to {ifname} ({hook})")
                        rec, link = _attach(prog, ifname, spec)
                        notes += rec.get("notes", [])
                        new_links.append((rec, link))
        # 4. changed rules into shared tables, now that the new program is in place
        for table, ct, fresh in deferred:
            table.install(ct, fresh)
        # 5. pin: new objects under temporary names first, renamed over the old pins at the end
        root = pin_dir(spec.name)
        staged: list[tuple[Path, Path]] = []
        for role in built.gen.maps:
            if role.pinned and role.cname not in built.reused_maps:
                tmp = maps_dir / f"{role.cname}-new"
                bpffs.unpin(tmp)
                built.map(role.cname).pin(tmp)
                staged.append((tmp, maps_dir / role.cname))
        # the programs too: a link's reference is all an XDP parser has, and a failed
        # re-apply must find the previous one to put it back
        for pin, prog in _pinned_progs(built):
            bpffs.unpin(root / f"{pin}-new")
            prog.pin(root / f"{pin}-new")
            staged.append((root / f"{pin}-new", root / pin))
        for rec, link in new_links:
            if link is not None:
                path = _link_pin(spec.name, rec["ifname"], rec["hook"])
                bpffs.unpin(path)
                link.pin(path)
                rec["link_pin"] = str(path)
    except BaseException:
        with netns_enter(spec.netns):
            for rec, link in new_links:
                with contextlib.suppress(Exception):
                    _detach_one(rec, link)
                if rec.get("link_pin"):
                    bpffs.unpin(rec["link_pin"])
            for rec, prog in replaced:  # put the previous program back
                with contextlib.suppress(Exception):
                    _replace(rec, Program.from_id(rec["prog_id"]), prog.id)
        if old is None:
            bpffs.unpin(pin_dir(spec.name))
        else:
            for role in built.gen.maps:
                bpffs.unpin(maps_dir / f"{role.cname}-new")
            for pin, _ in _pinned_progs(built):
                bpffs.unpin(pin_dir(spec.name) / f"{pin}-new")
        built.close()
        raise

    # 6. commit: rename the staged pins over the old ones, drop what is no longer used, record
    for tmp, final in staged:
        os.replace(tmp, final)
    keep = {r.cname for r in built.gen.maps if r.pinned}
    for p in maps_dir.iterdir():
        if p.name not in keep:
            bpffs.unpin(p)
    if built.xdp_parser is None:  # parser mode xdp no longer
        bpffs.unpin(root / "xdp-parser")
    attachments = []
    for rec, link in new_links:
        if link is not None:
            link.close()  # the pin holds it now
        attachments.append(rec)
    kept = {(a["ifname"], a["hook"]) for a in attachments}
    for a, prog in replaced:
        a["prog_id"] = prog.id
        attachments.append(a)
        kept.add(_attach_key(a))
    if old:
        with netns_enter(spec.netns):
            for a in old.attachments:
                if _attach_key(a) not in kept:
                    progress(f"detaching from {a['ifname']} ({a['hook']}): no longer in the spec")
                    with contextlib.suppress(EbplaneError):
                        _detach_one(a, None, prog_id=a["prog_id"])
    state = PipelineState(
        name=spec.name, spec_text=spec_text, spec_file=spec_file, hook=spec.hook,
        netns=spec.netns, prog_id=built.program.id, features=features.to_dict(),
        attachments=attachments,
        live_rules={k: [e.to_state() for e in v] for k, v in live.items()},
        spec_rules={st.name: [r.to_dict() for r in st.rules] for st in _filters(spec)},
        filters={k: c.plan.to_dict() for k, c in compiled.items()},
        applied_at=time.time(), notes=notes)
    state.save()
    result = ApplyResult(spec.name, old is None, built.program.id, attachments, built.cached,
                         sorted(built.reused_maps), {k: len(v) for k, v in live.items()}, notes,
                         round(time.monotonic() - t0, 3))
    built.close()  # pins and links keep everything alive
    return result


def _running_plan(state: PipelineState | None, table: str,
                  entries: list[RuleEntry]) -> FilterPlan | None:
    """The plan the running program was built with for ``table`` (None: unknown)."""
    if state is None or table not in state.filters:
        return None
    return FilterPlan.from_dict(state.filters[table], inline=tuple((e.rule, e.id) for e in entries))


def _pinned_progs(built: Built) -> list[tuple[str, Program]]:
    """(pin name, program) of every program apply pins: the one at the spec's hook and the
    XDP parser of parser mode xdp."""
    return [("prog", built.program)] + ([("xdp-parser", built.xdp_parser)]
                                        if built.xdp_parser is not None else [])


def _hook_of(prog: Program, spec: PipelineSpec) -> str:
    """Where a program of the pipeline attaches: an XDP program (an xdp pipeline's, or the
    XDP parser of parser mode xdp) at XDP, a sched_cls program at the spec's TC hook."""
    return "xdp" if prog.type_name == "xdp" else spec.hook


def _attach(prog: Program, ifname: str, spec: PipelineSpec) -> tuple[dict, Link | None]:
    """Attach ``prog`` (see :func:`_hook_of`); XDP native first unless the spec says a mode."""
    hook = _hook_of(prog, spec)
    try:
        if hook == "xdp":
            a = att.attach_xdp(prog.fd, ifname, mode=spec.mode or "auto", use_link=True)
        else:
            a = att.attach_tc(prog.fd, ifname, spec.hook.split("-", 1)[1])
    except EbplaneError as e:
        # name the ebplane pipeline in the way, if it is one of ours
        for other in all_names():
            st = PipelineState.load(other)
            if st and st.netns == spec.netns and any(
                    a["ifname"] == ifname and a["hook"] == hook for a in st.attachments):
                e.hint = f"pipeline '{other}' is attached to {ifname} ({hook}): " \
                         f"ebplane detach {other}"
        raise
    rec = a.to_dict()
    rec["prog_id"] = prog.id
    return rec, a.link


def _replace(rec: dict, prog: Program, old_prog_id: int) -> None:
    if rec.get("link_pin"):
        link = Link.from_pin(rec["link_pin"])
        try:
            link.update(prog.fd)
        finally:
            link.close()
    elif rec["method"] == "netlink":
        old = Program.from_id(old_prog_id)
        try:
            att.replace_xdp(rec["ifname"], prog.fd, old.fd, rec["mode"])
        finally:
            old.close()
    elif rec["method"] == "clsact":
        att.replace_clsact(prog.fd, rec["ifname"], rec["hook"].split("-", 1)[1],
                           rec["tc_priority"], rec["tc_handle"])
    else:
        raise EbplaneError(f"cannot replace attachment {rec}")


def _detach_one(rec: dict, link: Link | None, *, prog_id: int | None = None) -> None:
    if link is not None:
        link.detach()
        link.close()
        return
    if rec.get("link_pin"):
        with contextlib.suppress(NotFound):
            l2 = Link.from_pin(rec["link_pin"])
            with contextlib.suppress(EbplaneError):
                l2.detach()
            l2.close()
        bpffs.unpin(rec["link_pin"])
    elif rec["method"] == "netlink":
        with contextlib.suppress(EbplaneError):
            q = att.query_xdp(rec["ifname"])
            if prog_id is None or q["prog_id"] == prog_id:
                att.detach_xdp(rec["ifname"], rec["mode"])
    elif rec["method"] == "clsact":
        with contextlib.suppress(EbplaneError):
            att.detach_clsact(rec["ifname"], rec["hook"].split("-", 1)[1], rec["tc_priority"],
                              rec["tc_handle"])


# -- detach / status --------------------------------------------------------------------------

def detach(name: str, *, progress: Progress = _quiet) -> dict:
    with locked(name):
        st = PipelineState.require(name)
        done = []
        ctx = netns_enter(st.netns) if st.netns and _netns_exists(st.netns) else contextlib.nullcontext()
        with ctx:
            for a in st.attachments:
                progress(f"detaching from {a['ifname']} ({a['hook']})")
                if st.netns and not _netns_exists(st.netns):
                    bpffs.unpin(a.get("link_pin") or "/nonexistent")
                else:
                    _detach_one(a, None, prog_id=a["prog_id"])
                if a["ifname"] not in done:  # parser mode xdp: two attachments each
                    done.append(a["ifname"])
        bpffs.unpin(pin_dir(name))
        st.delete()
        return {"name": name, "detached": done}


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def status(name: str | None = None) -> list[dict]:
    names = [name] if name is not None else all_names()
    out = []
    for n in names:
        st = PipelineState.require(n)
        prog = None
        with contextlib.suppress(EbplaneError):
            p = Program.from_pin(pin_dir(n) / "prog")
            prog = p.info()
            p.close()
        atts = []
        for a in st.attachments:
            alive = None
            if a.get("link_pin"):
                with contextlib.suppress(EbplaneError):
                    link = Link.from_pin(a["link_pin"])
                    alive = link.prog_id() == a["prog_id"]
                    link.close()
            atts.append({**a, "alive": alive})
        out.append({"name": n, "hook": st.hook, "netns": st.netns, "prog_id": st.prog_id,
                    "program": prog, "attachments": atts, "features": st.features,
                    "rules": {k: len(v) for k, v in st.live_rules.items()},
                    "filters": st.filters,
                    "applied_at": st.applied_at, "spec_file": st.spec_file, "notes": st.notes})
    return out


# -- stats ------------------------------------------------------------------------------------

VERDICT_NAMES = {"xdp": {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"},
                 "tc": {0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT"}}


def _pinned_map(name: str, cname: str) -> Map:
    return Map.from_pin(pin_dir(name) / "maps" / cname)


def read_stats(maps: Callable[[str], Map], spec: PipelineSpec, live: dict[str, list[dict]]) -> dict:
    """Counters of a pipeline from its maps (``maps(cname)``): per verdict, per rule, per stage.
    ``live``: per filter, its rules as the state file keeps them (``{"id", "rule"}``)."""
    vmap = maps("ebp_verdicts").with_codecs(U32, COUNT)
    names = VERDICT_NAMES["xdp" if spec.hook == "xdp" else "tc"]
    verdicts = {}
    for i, vname in names.items():
        c = vmap.lookup_sum(i)
        verdicts[vname] = {"packets": c.packets, "bytes": c.bytes}
    stages = []
    for st in spec.stages:
        if isinstance(st, FilterStage):
            cm = maps(map_names(st.name)["counters"]).with_codecs(U32, COUNT)
            rules = []
            for pos, e in enumerate(live.get(st.name, [])):
                c = cm.lookup_sum(e["id"])
                rules.append({"index": pos, "id": e["id"], "rule": e["rule"],
                              "packets": c.packets, "bytes": c.bytes})
            d_slot, m_slot = filter_slots(st)
            d, m = cm.lookup_sum(d_slot), cm.lookup_sum(m_slot)
            stages.append({"stage": st.name, "kind": "filter", "rules": rules,
                           "default": {"action": st.default, "packets": d.packets, "bytes": d.bytes},
                           "malformed": {"action": st.malformed, "packets": m.packets, "bytes": m.bytes}})
        elif isinstance(st, CountStage):
            cm = maps(f"cnt_{st.name}").with_codecs(U32, COUNT)
            vals = {k: cm.lookup_sum(i) for i, k in enumerate(("all", "ipv4", "ipv6", "other"))}
            stages.append({"stage": st.name, "kind": "count",
                           "counts": {k: {"packets": v.packets, "bytes": v.bytes} for k, v in vals.items()}})
        elif (rt := runtime_for(st.kind)) is not None:
            stages.append({"stage": st.name, "kind": st.kind, **rt.stats(maps, spec, st)})
    out = {"verdicts": verdicts, "stages": stages}
    if spec.parser_mode == "xdp":  # how often the XDP parser's parse-info reached TC
        hm = maps("ebp_handoff").with_codecs(U32, COUNT)
        out["handoff"] = {}
        for i, what in enumerate(HANDOFF_COUNTERS):
            c = hm.lookup_sum(i)
            out["handoff"][what] = {"packets": c.packets, "bytes": c.bytes}
    return out


def stats(name: str | None = None) -> list[dict]:
    out = []
    for n in ([name] if name is not None else all_names()):
        st = PipelineState.require(n)
        spec = _spec_of(st)
        opened: list[Map] = []

        def maps(cname: str) -> Map:
            m = _pinned_map(n, cname)
            opened.append(m)
            return m
        try:
            d = read_stats(maps, spec, st.live_rules)
        finally:
            for m in opened:
                m.close()
        out.append({"name": n, **d})
    return out


# -- run-time rule edits ----------------------------------------------------------------------

class RuleTable:
    """The live rules of one filter of an applied pipeline.

    Every change is one atomic install (see ``ebplane.runtime.tables``).  Group several
    changes into one install with :meth:`batch`.  A rule that needs parsing the running program
    does not do (say, the first port rule) regenerates the program and replaces it atomically,
    keeping the maps.
    """

    def __init__(self, pipeline: str, table: str | None = None):
        self.pipeline = pipeline
        st = PipelineState.require(pipeline)
        spec = _spec_of(st)
        # what parse() checks rules against; an edit re-reads the state under the lock
        self._protocols = spec.protocols
        filters = _filters(spec)
        if not filters:
            raise UsageError(f"pipeline '{pipeline}' has no filter stage")
        if table is None:
            if len(filters) > 1:
                raise UsageError(f"pipeline '{pipeline}' has several filters "
                                 f"({', '.join(f.name for f in filters)})", hint="name one with --table")
            table = filters[0].name
        match = [f for f in filters if f.name == table]
        if not match:
            raise NotFound(f"pipeline '{pipeline}' has no filter '{table}' "
                           f"(filters: {', '.join(f.name for f in filters)})")
        self.stage = match[0]
        self.name = table

    def _spec(self) -> tuple[PipelineState, PipelineSpec]:
        st = PipelineState.require(self.pipeline)
        return st, _spec_of(st)

    def list(self) -> list[dict]:
        st, _ = self._spec()
        return [{"index": i, **e} for i, e in enumerate(st.live_rules.get(self.name, []))]

    def parse(self, obj, where: str | Where = "rule") -> Rule:
        """Validate a rule against the pipeline's protocols; ``where`` locates errors.

        The protocols are those of the state read when the table was opened: parsing N rules
        reads the state file once, not N times (``rules replace`` of 5k rules onto a table of
        5k took minutes).  An edit installs rules only after re-reading the state under the
        pipeline's lock, and refuses them if the pipeline was re-applied with other protocols
        meanwhile."""
        return parse_rule(obj, protocols=self._protocols, where=where)

    def _edit(self, change: Callable[[list[Rule]], list[Rule]]) -> dict:
        """Read the live rules once, under the pipeline's lock, let ``change`` turn them into
        the new rule list, and install that atomically: a map update when the new rules fit
        the running program's compiled form, else a new program swapped in (respecialised)."""
        with locked(self.pipeline):
            st, spec = self._spec()
            if spec.protocols != self._protocols:
                raise UsageError(f"pipeline '{self.pipeline}' was re-applied with other "
                                 f"protocols while the rules were being prepared",
                                 hint="run the command again")
            entries = _stored_entries(st.live_rules.get(self.name, []), spec.protocols)
            new = assign_ids(change([e.rule for e in entries]), entries, self.stage.capacity)
            all_live = {k: _stored_entries(v, spec.protocols)
                        for k, v in st.live_rules.items() if k != self.name}
            all_live[self.name] = new
            need = spec_features(spec, {k: [e.rule for e in v] for k, v in all_live.items()})
            running = Features(**st.features)
            running_plan = _running_plan(st, self.name, entries)
            compiled = None
            if running.covers(need):
                # fails before any change when the rules cannot be classified
                compiled = compile_filter(self.stage, new, user_layout_for(spec.protocols, running),
                                          running_plan)
            if compiled is None or not compiled.plan.same_code(running_plan):
                res = _apply(spec, st.spec_text, st.spec_file, live_override=all_live)
                plan = PipelineState.require(self.pipeline).filters.get(self.name, {})
                return {"table": self.name, "rules": len(new), "regenerated": True,
                        "prog_id": res.prog_id, "form": plan.get("form"), "why": plan.get("why")}
            opened: list[Map] = []

            def maps(cname: str) -> Map:
                opened.append(_pinned_map(self.pipeline, cname))
                return opened[-1]
            try:
                info = FilterTable(self.name, self.stage.capacity, maps).install(
                    compiled, fresh_ids(new, entries))
            finally:
                for m in opened:
                    m.close()
            st.live_rules[self.name] = [e.to_state() for e in new]
            st.filters[self.name] = compiled.plan.to_dict()
            st.save()
            return {"table": self.name, "rules": len(new), "regenerated": False,
                    "why": compiled.plan.why, **info}

    def replace(self, rules: Sequence[Rule]) -> dict:
        """Install ``rules`` as the whole rule set, atomically."""
        return self._edit(lambda _current: list(rules))

    def add(self, rule: Rule, at: int | None = None) -> dict:
        def insert(rules: list[Rule]) -> list[Rule]:
            pos = len(rules) if at is None else at
            if not 0 <= pos <= len(rules):
                raise UsageError(f"position {pos} is out of range (0..{len(rules)})")
            return rules[:pos] + [rule] + rules[pos:]
        return self._edit(insert)

    def delete(self, indexes: Sequence[int]) -> dict:
        def remove(rules: list[Rule]) -> list[Rule]:
            bad = [i for i in indexes if not 0 <= i < len(rules)]
            if bad:
                raise KeyNotFound(f"filter '{self.name}' has no rule at index {bad[0]} "
                                  f"({len(rules)} rules)")
            drop = set(indexes)
            return [r for i, r in enumerate(rules) if i not in drop]
        return self._edit(remove)

    @contextlib.contextmanager
    def batch(self):
        """``with table.batch() as rules: rules.append(...); del rules[0]`` -> one install."""
        st, spec = self._spec()
        rules = [e.rule for e in _entries_from_state(st.live_rules.get(self.name, []),
                                                      spec.protocols)]
        yield rules
        self.replace(rules)
