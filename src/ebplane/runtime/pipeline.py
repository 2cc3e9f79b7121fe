"""The control plane of applied pipelines: apply (all or nothing), detach, status, stats,
and run-time rule edits.

Apply, in order, so that a failure at any step leaves the previous state in force:
1. validate the spec and check its interfaces exist; compile every filter's rules (a rule
   set that cannot be classified fails here);
2. generate, compile and load the program, reusing the pipeline's pinned maps whose
   definition is unchanged (rules and counters carry over);
3. fill tables that are new; pin the new maps and programs under temporary names; write the
   intent record (the new state, ``pending``) before the first kernel commit;
4. attach (first apply, or an attachment found DEAD) or atomically replace the program on
   each interface (re-apply), rolling back the interfaces already done if one fails (with
   parser mode xdp, each interface has two attachments: the TC program and the XDP parser);
5. install changed rule sets into reused tables (atomic generation flip);
6. rename the staged pins over the old ones and write the final state (:func:`_finish`).

A command killed between 3 and 6 leaves the intent record: :func:`load_state`, through
which every command reads the state, settles it against the kernel (roll forward or back).
Pins found without any state are adopted by apply (:func:`_adopt`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import functools
import itertools
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ebplane.codegen.capture import CAPTURE_MAPS, CaptureSpec
from ebplane.codegen.p4c import UserLayout
from ebplane.codegen.pipeline import (HANDOFF_COUNTERS, MANIFEST_VERSION, MARK_COUNTERS, PIPELINE_MAPS,
                                      VERDICTS,
                                      Features, Manifest, spec_features, user_layout_for,
                                      verdict_family)
from ebplane.errors import EbplaneError, KeyNotFound, NotFound, UsageError
from ebplane.kernel import bpffs
from ebplane.kernel.links import Link
from ebplane.kernel.maps import Map
from ebplane.kernel.programs import Program
from ebplane.net import attach as att
from ebplane.net import iface
from ebplane.net.probe import netns_enter
from ebplane.runtime import dispatch
from ebplane.runtime.build import Built, build, compile_filter, jumbo_interfaces
from ebplane.runtime import drivers
from ebplane.stages.control import control_for, undo_to
from ebplane.runtime.state import PipelineState, all_names, locked, pin_dir, state_dir
from ebplane.runtime.tables import RuleEntry, assign_ids, fresh_ids
from ebplane.stages.filter.gen import map_names, tree_group
from ebplane.stages.filter.plan import CompiledTable, FilterPlan
from ebplane.stages.filter.table import FilterTable, NeedRebuild
from ebplane.spec.located import Where
from ebplane.spec import FilterStage, PipelineSpec, Rule, load_spec, parse_rule, parse_spec
from ebplane.kernel.codec import COUNT, U32
from ebplane.spec.rules import PROTO_NUMBERS, stored_network

Progress = Callable[[str], None]
log = logging.getLogger("ebplane.apply")

# called as f("apply" | "rules", pipeline, table or None, seconds) after each apply and rule
# change of this process (ebplane.runtime.metrics observes latencies through it)
OBSERVERS: list[Callable[[str, str, str | None, float], None]] = []


def _observe(what: str, name: str, table: str | None, seconds: float) -> None:
    for f in OBSERVERS:
        with contextlib.suppress(Exception):
            f(what, name, table, seconds)


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

CRASH_ENV = "EBPLANE_TEST_CRASH_AT"


def _crash_point(step: str) -> None:
    """Test hook: the process SIGKILLs itself at the named step when ``$EBPLANE_TEST_CRASH_AT``
    names it (tests/test_crash.py stops apply and rule edits there; unset, it does nothing)."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)

def _filters(spec: PipelineSpec) -> list[FilterStage]:
    """The stages with rule tables (filter)."""
    return [s for s in spec.stages if s.has_rules]


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
        if "match" in r or "mark" in r or "class" in r or "state" in r:  # all its fields
            out.append(RuleEntry(d["id"], Rule.from_dict(r, protocols=protocols)))
            continue
        out.append(RuleEntry(d["id"], Rule(
            action=r["action"],
            src=stored_network(r["src"]) if "src" in r else None,
            dst=stored_network(r["dst"]) if "dst" in r else None,
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


def _rec_from_link(path: str | Path, ifname: str, hook: str) -> dict | None:
    """The attachment record of a live pinned link (None when nothing, or a detached link,
    is pinned there), as :func:`_attach` would have written it."""
    try:
        link = Link.from_pin(path)
    except EbplaneError:
        return None
    with link:
        idx, prog_id, link_id = link.ifindex(), link.prog_id(), link.id
    if idx == 0:
        return None
    mode = None
    if hook == "xdp":
        with contextlib.suppress(EbplaneError):
            mode = att.query_xdp(ifname)["mode"]
    return {"ifname": ifname, "ifindex": idx, "hook": hook,
            "method": "link" if hook == "xdp" else "tcx", "mode": mode, "link_id": link_id,
            "notes": [], "tc_handle": 0, "tc_priority": 0, "prog_id": prog_id,
            "link_pin": str(path)}


def _adopt(name: str, netns: str | None) -> list[dict]:
    """Attachments of a pipeline whose pins exist without a state file (a first apply killed
    before it wrote the state, or a lost state directory): every live link pinned under its
    pin directory.  apply replaces their program through the link (bpf_link_update), as a
    re-apply does, instead of failing with EBUSY on an interface the pipeline holds."""
    d = pin_dir(name) / "links"
    if not d.is_dir():
        return []
    out = []
    with netns_enter(netns if netns and _netns_exists(netns) else None):
        for p in sorted(d.iterdir()):
            ifname, _, hook = p.name.replace("%2e", ".").rpartition("@")
            rec = _rec_from_link(p, ifname, hook)
            if rec is not None:
                out.append(rec)
    return out


# -- apply ------------------------------------------------------------------------------------

def apply(spec_path: str | Path, *, progress: Progress = _quiet,
          replace_foreign: bool = False) -> ApplyResult:
    """``replace_foreign``: an XDP program that is not ebplane's, attached by netlink where
    the pipeline attaches, is detached (else the apply fails, naming it)."""
    spec = load_spec(spec_path)
    text = Path(spec_path).read_text()
    with _locked(spec.name):
        return _apply(spec, text, str(spec_path), progress=progress,
                      replace_foreign=replace_foreign)


def apply_text(spec_text: str, spec_file: str, *, rules: dict[str, list[dict]] | None = None,
               progress: Progress = _quiet, replace_foreign: bool = False) -> ApplyResult:
    """:func:`apply` of a spec given as text (``spec_file`` names it in errors and status);
    ``rules``: per filter, the rules to install as they are kept (``{"id", "rule"}``, ids
    kept) instead of the spec's or the live ones (the agent restores its desired state so)."""
    spec = _parsed_spec(spec_text, spec_file)
    with _locked(spec.name):
        live = None
        if rules is not None:
            live = {k: _stored_entries(v, spec.protocols) for k, v in rules.items()
                    if any(f.name == k for f in _filters(spec))}
        return _apply(spec, spec_text, spec_file, progress=progress, live_override=live,
                      replace_foreign=replace_foreign)


def spec_of_text(spec_text: str, spec_file: str) -> PipelineSpec:
    """The validated spec of a text (one parse per text and process)."""
    return _parsed_spec(spec_text, spec_file)


KEEP = "keep"  # _apply(capture=KEEP): the running trace's capture hooks stay, if it lives


def capture_alive(cap: dict | None) -> bool:
    """Whether the trace that recorded ``cap`` (state ``capture``) still runs: its pid exists
    and is the same process (its start time, so a reused pid does not count)."""
    return bool(cap) and _proc_start(cap["pid"]) == cap.get("pid_start")


def _proc_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class ApplyPlan:
    """Everything an apply decides before it changes anything (:func:`plan_apply`), computed
    once: the rules of each table, the features and user-area layout the program is built
    for, each table compiled for that layout, the tree arrays it shares with the running
    program, the notes."""
    spec: PipelineSpec
    old: PipelineState | None
    adopted: list[dict]           # attachments pinned without a state file (taken over)
    created_dir: bool             # the pin directory is new: a failure removes it whole
    capture: dict | None          # the capture hooks the program carries (ebplane trace)
    jumbo: list[tuple[str, int]]  # interfaces whose MTU needs xdp.frags
    live: dict[str, list[RuleEntry]]         # table -> the rules the kernel will hold
    previous_of: dict[str, list[RuleEntry]]  # table -> the rules it holds now
    features: Features
    compiled: dict[str, CompiledTable]
    keep_groups: set[str]         # tree arrays the new program shares with the running one
    notes: list[str] = field(default_factory=list)


def plan_apply(spec: PipelineSpec, *, live_override: dict[str, list[RuleEntry]] | None = None,
               capture: dict | None | str = KEEP) -> ApplyPlan:
    """Decide an apply of ``spec`` against the current state: read the state, check the
    interfaces and each stage kind against the system, decide each table's rules and
    compile them.  Changes nothing; bad input and rule sets that cannot be classified fail
    here."""
    bpffs.ensure_mounted()
    old = load_state(spec.name)
    notes: list[str] = []
    if capture == KEEP:
        capture = old.capture if old and capture_alive(old.capture) else None
        if old and old.capture and capture is None:
            notes.append(f"capture of trace pid {old.capture['pid']} removed: the trace "
                         f"is gone")
    if old and old.netns != spec.netns:
        raise UsageError(f"pipeline '{spec.name}' is applied in network namespace "
                         f"{old.netns or '(current)'}; the spec now says {spec.netns or '(current)'}",
                         hint=f"detach it first: ebplane detach {spec.name}")
    _check_composition(spec, old)
    root = pin_dir(spec.name)
    created_dir = not root.exists()  # then a failure removes the whole directory
    adopted = _adopt(spec.name, spec.netns) if old is None and not created_dir else []
    if adopted:
        notes.append(f"adopted {len(adopted)} attachment(s) pinned under {root} without a "
                     f"state file (an interrupted apply or a lost state directory): their "
                     f"program is replaced through the pinned link")

    # interfaces exist; decide each table's rules and check they classify
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
        jumbo = jumbo_interfaces(spec)
        notes += drivers.check(spec, jumbo)  # per interface: the features its blocks need
        for st in spec.stages:
            notes += control_for(st.kind).check(spec, st)
    if jumbo:
        notes.append("multi-buffer: " + ", ".join(f"{n} has MTU {m}" for n, m in jumbo)
                     + ": the XDP program is built as xdp.frags, so native XDP takes jumbo "
                       "frames (the headers are read in the first buffer)")
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
        running_user_layout(old, spec).to_dict() == layout.to_dict()
    compiled: dict[str, CompiledTable] = {}
    keep_groups: set[str] = set()
    for st in _filters(spec):
        running = _running_plan(old, st.name, previous_of[st.name]) if same_layout else None
        compiled[st.name] = compile_filter(st, live[st.name], layout, running)
        if compiled[st.name].plan.form == "tree" and compiled[st.name].plan.same_code(running):
            keep_groups.add(tree_group(st.name))
    return ApplyPlan(spec, old, adopted, created_dir, capture, jumbo, live, previous_of,
                     features, compiled, keep_groups, notes)


class Rollback:
    """The undo of each step a commit has taken, registered as it takes it; :meth:`run`
    undoes them newest first.  A failed undo is logged and returned (the caller reports
    it with the error that made it roll back), never swallowed."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, undo: Callable[[], None]) -> None:
        self.steps.append((what, undo))

    def run(self) -> list[str]:
        failed: list[str] = []
        for what, undo in reversed(self.steps):
            _undo(failed, what, undo)
        self.steps.clear()
        return failed


def _apply(spec: PipelineSpec, spec_text: str, spec_file: str, *, progress: Progress = _quiet,
           live_override: dict[str, list[RuleEntry]] | None = None,
           capture: dict | None | str = KEEP, replace_foreign: bool = False) -> ApplyResult:
    """Apply ``spec`` (see the module's docstring): plan (:func:`plan_apply`), then commit
    (:func:`_commit`).  ``capture``: the record of the capture hooks the program carries
    (``ebplane trace``), None for none, KEEP (default) for those of the running program if
    their trace still runs (an orphaned capture is dropped here).  ``replace_foreign``: see
    :func:`apply`."""
    t0 = time.monotonic()
    plan = plan_apply(spec, live_override=live_override, capture=capture)
    return _commit(plan, spec_text, spec_file, progress=progress, t0=t0,
                   replace_foreign=replace_foreign)


def _commit(plan: ApplyPlan, spec_text: str, spec_file: str, *, progress: Progress,
            t0: float, replace_foreign: bool = False) -> ApplyResult:
    """Carry out an apply plan: build (reusing compatible pinned maps), fill the tables,
    stage the pins, prepare the stage kinds, write the intent record, attach or replace,
    then rename the pins (:func:`_finish`).  Each step registers its undo; a failure rolls
    back what this apply did, and only that."""
    spec, old, adopted = plan.spec, plan.old, plan.adopted
    live, previous_of, compiled = plan.live, plan.previous_of, plan.compiled
    notes = plan.notes
    root = pin_dir(spec.name)
    progress(f"compiling pipeline '{spec.name}' ({spec.hook}, {len(spec.stages)} stages)")
    maps_dir = root / "maps"
    with contextlib.ExitStack() as chain_stack:
        chain_maps, chain_base = None, None  # composed (priority:): XDP members share the
        if spec.priority is not None:          # dispatcher's maps
            chain_maps = {}
            if spec.hook == "xdp":
                chain_stack.enter_context(netns_enter(spec.netns))
                chain_maps, chain_base = chain_stack.enter_context(
                    dispatch.chain_maps(spec.netns, spec.interfaces))
        built = build(spec, plan.features, reuse_pins=maps_dir if old else None,
                      filters={k: c.plan for k, c in compiled.items()},
                      keep_groups=plan.keep_groups, frags=bool(plan.jumbo),
                      capture=CaptureSpec.from_dict(plan.capture["spec"]) if plan.capture
                      else None, chain_maps=chain_maps, chain_base=chain_base)
    notes += built.notes
    new_links: list[tuple[dict, Link | None]] = []
    replaced: list[tuple[dict, Program]] = []  # (attachment, its new program)
    undo = Rollback()
    state: PipelineState | None = None  # the intent record, once written

    def restore_record() -> None:  # the record says what is in force again
        if state is not None:
            if old is not None:
                old.save()
            else:
                state.delete()

    # registered first, so run last: the record, then the directory, once the rest is undone
    undo.add("restore the previous state record", restore_record)
    if plan.created_dir:
        undo.add(f"remove {root}", lambda: bpffs.unpin(root))
    if spec.priority is not None and spec.hook == "xdp":  # runs after the detaches
        undo.add("remove a dispatcher root made for nothing",
                 functools.partial(_in_netns, spec.netns, dispatch.tidy, spec.netns))

    def created(path: Path) -> None:
        """A pin this apply made: the only kind a failure removes (pins found here, of a
        running pipeline without state say, are not this apply's to remove)."""
        undo.add(f"remove pin {path}", lambda: bpffs.unpin(path))

    try:
        # tables the program does not share with the running version get their rules
        # now; shared tree arrays get a changed rule set after the swap (same plan, so
        # both versions read them alike)
        deferred: list[tuple[FilterTable, CompiledTable, list[int]]] = []
        for st in _filters(spec):
            table = built.table(st)
            names = map_names(st.name)
            counters_kept = names["counters"] in built.reused_maps
            fresh = fresh_ids(live[st.name], previous_of[st.name]) if counters_kept \
                else [e.id for e in live[st.name]]
            if tree_group(st.name) in plan.keep_groups and names["config"] in built.reused_maps:
                if live[st.name] != previous_of[st.name]:
                    deferred.append((table, compiled[st.name], fresh))
            else:
                table.install(compiled[st.name], fresh)
        # pin the new objects under temporary names (renamed over the old pins at the end),
        # so that a command that finds this apply interrupted can finish it; the programs too:
        # a link's reference is all an XDP parser has, and a failed re-apply must find the
        # previous one to put it back
        staged: list[tuple[Path, Path]] = []
        for role in built.gen.maps:
            if role.pinned and role.cname not in built.reused_maps:
                tmp = maps_dir / f"{role.cname}-new"
                bpffs.unpin(tmp)
                built.map(role.cname).pin(tmp)
                created(tmp)
                staged.append((tmp, maps_dir / role.cname))
        for pin, prog in _pinned_progs(built):
            bpffs.unpin(root / f"{pin}-new")
            prog.pin(root / f"{pin}-new")
            created(root / f"{pin}-new")
            staged.append((root / f"{pin}-new", root / pin))
        # stage kinds with their own control plane fill their maps; plan the attachments
        attach_plan: list[tuple[str, str, Program, dict | None]] = []
        with netns_enter(spec.netns):
            with undo_to(undo.add):
                for st in spec.stages:
                    notes += control_for(st.kind).prepare(built, spec, st)
            old_atts = {}
            for a in (old.attachments if old else adopted):
                health, why = _health(a, spec.netns)
                if health == "DEAD":  # re-apply repairs it: attached anew
                    notes.append(f"{why}; attached again")
                else:
                    old_atts[_attach_key(a)] = a
            moved = []  # XDP members whose priority changed: a new slot, the old one emptied
            for ifname in spec.interfaces:
                for pin, prog in _pinned_progs(built):  # parser mode xdp: two per interface
                    hook = _hook_of(pin, prog, spec)
                    o = old_atts.get((ifname, hook))
                    if o is not None and o.get("method") == "dispatch" and \
                            o.get("priority") != spec.priority:
                        moved.append(o)
                        o = None
                    attach_plan.append((ifname, hook, prog, o))
        planned_keys = {(i, h) for i, h, _, _ in attach_plan}
        # the intent record, before the first kernel commit (see load_state)
        state = PipelineState(
            name=spec.name, spec_text=spec_text, spec_file=spec_file, hook=spec.hook,
            netns=spec.netns, prog_id=built.program.id, features=plan.features.to_dict(),
            attachments=[{**o, "prog_id": p.id, **({"base": chain_base}
                                                   if o.get("method") == "dispatch" else {})}
                         if o else _planned(spec, i, h, p, chain_base)
                         for i, h, p, o in attach_plan],
            live_rules={k: [e.to_state() for e in v] for k, v in live.items()},
            spec_rules={st.name: [r.to_dict() for r in st.rules] for st in _filters(spec)},
            filters={k: c.plan.to_dict() for k, c in compiled.items()},
            applied_at=time.time(), notes=notes, capture=plan.capture,
            manifest=built.gen.manifest(),
            pending={"op": "apply", "previous": asdict(old) if old else None,
                     "created_dir": plan.created_dir,
                     "staged": [[str(t), str(f)] for t, f in staged],
                     "keep_maps": sorted(r.cname for r in built.gen.maps if r.pinned),
                     "xdp_parser": built.xdp_parser is not None,
                     "tc_marks": built.tc_marks is not None,
                     "tc_ingress": built.tc_ingress is not None,
                     "installs": {t.name: {"generation": t.generation(), "fresh": fresh}
                                  for t, _, fresh in deferred},
                     "detach": [a for a in (old.attachments if old else adopted)
                                if _attach_key(a) not in planned_keys] + moved})
        state.save()
        _crash_point("apply-intent")
        # attach / replace: the kernel commit points
        with netns_enter(spec.netns):
            for ifname, hook, prog, old_a in attach_plan:
                if old_a is not None:
                    progress(f"replacing program on {ifname} ({hook})")
                    _replace(old_a, prog, old_a["prog_id"])
                    replaced.append((old_a, prog))
                    undo.add(f"put program {old_a['prog_id']} back on {ifname} ({hook})",
                             functools.partial(_in_netns, spec.netns, _put_back, old_a, prog))
                    _crash_point("apply-replaced")
                else:
                    progress(f"attaching to {ifname} ({hook})")
                    # keywords only when they say something (tests stand in for _attach)
                    kw: dict = {"replace_foreign": True} if replace_foreign else {}
                    if chain_base is not None:
                        kw["base"] = chain_base
                    rec, link = _attach(prog, ifname, spec, hook=hook, **kw)
                    notes += rec.get("notes", [])
                    new_links.append((rec, link))
                    undo.add(f"detach the new attachment on {ifname} ({hook})",
                             functools.partial(_in_netns, spec.netns, _detach_one, rec, link))
                    if rec["method"] == "dispatch":
                        _crash_point("apply-joined")
                    if link is not None:  # pinned at once: the pin is what a crash leaves
                        path = _link_pin(spec.name, rec["ifname"], rec["hook"])
                        bpffs.unpin(path)
                        link.pin(path)
                        created(path)
                        rec["link_pin"] = str(path)
                        _crash_point("apply-link-pinned")
        # changed rules into shared tables, now that the new program is in place
        for table, ct, fresh in deferred:
            table.install(ct, fresh)
            _crash_point("apply-installed")
    except BaseException as exc:
        for what in undo.run():  # reported with the error that made the apply fail
            exc.add_note(f"rollback: could not {what}")
        built.close()
        raise

    # commit: rename the staged pins over the old ones, drop what is no longer used, record
    by_key = {}
    for rec, link in new_links:
        if link is not None:
            link.close()  # the pin holds it now
        by_key[_attach_key(rec)] = rec
    for a, prog in replaced:
        by_key[_attach_key(a)] = {**a, "prog_id": prog.id}
    state.attachments = [by_key[(i, h)] for i, h, _, _ in attach_plan]
    state.apply_seconds = round(time.monotonic() - t0, 3)
    _finish(state, progress)
    _observe("apply", spec.name, None, time.monotonic() - t0)
    result = ApplyResult(spec.name, old is None and not adopted, built.program.id,
                         state.attachments, built.cached, sorted(built.reused_maps),
                         {k: len(v) for k, v in live.items()}, notes,
                         round(time.monotonic() - t0, 3))
    built.close()  # pins and links keep everything alive
    return result


def _in_netns(netns: str | None, fn: Callable, *args) -> None:
    with netns_enter(netns):
        fn(*args)


def _put_back(rec: dict, new_prog: Program) -> None:
    """Undo a replace: the attachment runs its previous program (``rec["prog_id"]``) again."""
    prev = Program.from_id(rec["prog_id"])
    try:
        _replace(rec, prev, new_prog.id)
    finally:
        prev.close()


def drop_orphan_capture(name: str) -> bool:
    """Respecialise the pipeline back to its trace-free program if it carries the capture
    hooks of a trace that is gone (killed with SIGKILL, say).  Returns whether it did.  Called
    by ``trace``, ``status`` and ``stats`` (and any apply or regenerating rule edit drops it)."""
    st = load_state(name)
    if st is None or not st.capture or capture_alive(st.capture):
        return False
    with _locked(name):
        st = load_state(name)
        if st is None or not st.capture or capture_alive(st.capture):
            return False
        _apply(_spec_of(st), st.spec_text, st.spec_file, capture=None)
        return True


def _running_plan(state: PipelineState | None, table: str,
                  entries: list[RuleEntry]) -> FilterPlan | None:
    """The plan the running program was built with for ``table`` (None: unknown)."""
    if state is None or table not in state.filters:
        return None
    return FilterPlan.from_dict(state.filters[table], inline=tuple((e.rule, e.id) for e in entries))


def _finish(state: PipelineState, progress: Progress = _quiet) -> None:
    """The end of an apply whose kernel commits are done (also how a command that finds the
    apply interrupted rolls it forward; every step may have run already): rename the staged
    pins over the old ones, drop pins no longer used, detach what the spec no longer has,
    and write the final record."""
    p = state.pending
    root = pin_dir(state.name)
    for tmp, final in p["staged"]:
        if os.path.lexists(tmp):
            os.replace(tmp, final)
    _crash_point("apply-renamed")
    maps_dir = root / "maps"
    if maps_dir.is_dir():
        for m in maps_dir.iterdir():
            if m.name not in p["keep_maps"]:
                bpffs.unpin(m)
    if not p["xdp_parser"]:  # parser mode xdp no longer
        bpffs.unpin(root / "xdp-parser")
    if not p.get("tc_marks"):  # no rule sets a mark from XDP any more
        bpffs.unpin(root / "tc-marks")
    if not p.get("tc_ingress"):  # no nat stage any more
        bpffs.unpin(root / "tc-ingress")
    if p["detach"]:
        with _netns_of(state):
            for a in p["detach"]:
                progress(f"detaching from {a['ifname']} ({a['hook']}): no longer in the spec")
                with contextlib.suppress(EbplaneError):
                    _detach_one(a, None, prog_id=a["prog_id"])
    state.pending = None
    state.save()


# -- the record and the kernel ----------------------------------------------------------------
#
# apply and rule edits write their record twice: an intent record (the new state, with
# ``pending`` saying what to compare) before the first kernel commit, the final one after the
# last.  A command killed in between leaves the intent record; the next command that reads
# the state (every one goes through load_state) compares it with the kernel, under the
# pipeline's lock, and rolls it forward (finishing the operation) or back.

_held_by = threading.local()  # per thread: the pipelines whose lock it holds


@contextlib.contextmanager
def _locked(name: str):
    """The pipeline's lock, re-entrant within this thread (a rule edit that regenerates
    the program applies under the lock it holds).  Per thread, not per process: another
    thread of the same process (the agent's) waits for the lock like another process."""
    held = _held_by.__dict__.setdefault("names", set())
    if name in held:
        yield
        return
    with locked(name):
        held.add(name)
        try:
            yield
        finally:
            held.discard(name)


def _netns_of(st: PipelineState):
    return netns_enter(st.netns if st.netns and _netns_exists(st.netns) else None)


def load_state(name: str) -> PipelineState | None:
    """The pipeline's record, in agreement with the kernel: a pending record (a command died
    between its kernel commit and its last write) is settled first, under the lock."""
    st = PipelineState.load(name)
    if st is None or not st.pending:
        return st
    with _locked(name):  # waits for a command still running; the lock of a dead one is free
        st = PipelineState.load(name)
        if st is not None and st.pending:
            st = _settle(st)
    return st


def require_state(name: str) -> PipelineState:
    st = load_state(name)
    return st if st is not None else PipelineState.require(name)


def _kernel_prog(a: dict) -> int | None:
    """The program the kernel runs for attachment record ``a`` (in the pipeline's netns), or
    None when nothing runs there (link gone or detached, filter gone)."""
    try:
        return att.attached(a).running()
    except EbplaneError:
        return None


def _health(a: dict, netns: str | None) -> tuple[str, str]:
    """What the kernel has for attachment record ``a``: ("ok" | "DEAD" | "DRIFTED", why).
    Call in the pipeline's network namespace."""
    where = f"{a['ifname']} ({a['hook']})"
    if netns and not _netns_exists(netns):
        return "DEAD", f"network namespace {netns} is gone"
    if a.get("link_pin") and not os.path.lexists(a["link_pin"]):
        return "DEAD", f"{where}: its link is no longer pinned ({a['link_pin']}): filtering stopped"
    have = _kernel_prog(a)
    if have is None:
        return "DEAD", f"{where}: no program of the pipeline runs there (link detached or filter gone)"
    if have != a["prog_id"]:
        return "DRIFTED", f"{where} runs program {have}, not the pipeline's {a['prog_id']}"
    return "ok", ""


def _repair_hint(name: str, spec_file: str | None) -> str:
    return (f"re-apply the spec to attach and fill it again (ebplane apply "
            f"{spec_file or 'SPEC'}), or remove it (ebplane detach {name})")


def _state_key(name: str) -> tuple | None:
    """What changes whenever a pipeline's state file is written (a cache of it is valid
    while this stays the same)."""
    try:
        s = (state_dir() / f"{name}.json").stat()
    except OSError:
        return None
    return (s.st_ino, s.st_mtime_ns, s.st_size)


@contextlib.contextmanager
def _open_table(pipeline: str, stage: FilterStage, spec: PipelineSpec, features: Features):
    """The pinned maps of a filter of an applied pipeline, as a FilterTable (maps are opened
    on first use and closed on exit)."""
    opened: list[Map] = []

    def maps(cname: str) -> Map:
        opened.append(_pinned_map(pipeline, cname))
        return opened[-1]
    try:
        yield FilterTable(stage.name, stage.capacity, maps)
    finally:
        for m in opened:
            m.close()


def _generation(st: PipelineState, table: str) -> int | None:
    """The active generation of a filter's rules in the kernel; None if unreadable."""
    spec = _spec_of(st)
    stage = next((f for f in _filters(spec) if f.name == table), None)
    if stage is None:
        return None
    try:
        with _open_table(st.name, stage, spec, Features(**st.features)) as t:
            return t.generation()
    except EbplaneError:
        return None


def _undo_rules(items: list[dict], undo: dict) -> None:
    """Reverse an incremental edit of a table's stored rules (see ``RuleTable._fast``)."""
    if "delete" in undo:
        del items[undo["delete"]]
    for pos, item in undo.get("insert", []):
        items.insert(pos, item)


def _settle(st: PipelineState) -> PipelineState | None:
    """Compare a pending record with the kernel and roll it forward or back (lock held)."""
    p = st.pending
    if p["op"] == "rules":
        gen = _generation(st, p["table"])
        if gen is None or gen == p["generation"]:  # the flip did not happen: back
            if "undo" in p:  # an incremental edit: its inverse
                _undo_rules(st.live_rules[p["table"]], p["undo"])
            else:
                st.live_rules[p["table"]] = p["previous_rules"]
            if p.get("previous_plan") is not None:
                st.filters[p["table"]] = p["previous_plan"]
        st.pending = None
        st.save()
        return st
    # apply: forward if anything of the new version is in force in the kernel
    forward = any(not os.path.lexists(t) and os.path.lexists(f) for t, f in p["staged"])
    with _netns_of(st):
        forward = forward or any(_kernel_prog(a) == a["prog_id"] for a in st.attachments)
    forward = forward or any(
        (g := _generation(st, t)) is not None and g != i["generation"]
        for t, i in p["installs"].items())
    if forward:
        _roll_forward(st)
        return st
    for tmp, _ in p["staged"]:  # back: nothing of the new version runs
        bpffs.unpin(tmp)
    if st.hook == "xdp" and any(a.get("method") == "dispatch" for a in st.attachments):
        with _netns_of(st), contextlib.suppress(EbplaneError):  # a root made for nothing
            dispatch.tidy(st.netns)
    if p["previous"] is None:
        st.delete()
        if p["created_dir"]:
            bpffs.unpin(pin_dir(st.name))
        return None
    old = PipelineState(**p["previous"])
    old.save()
    return old


def _roll_forward(st: PipelineState) -> None:
    """Finish an interrupted apply: every attachment runs the new program, changed rules are
    in the shared tables, pins renamed, the final record written."""
    p = st.pending
    spec = _spec_of(st)
    try:
        with _netns_of(st):
            for i, a in enumerate(st.attachments):
                if _kernel_prog(a) == a["prog_id"]:
                    if a.get("planned") and a.get("method") == "dispatch":
                        st.attachments[i] = {k: v for k, v in a.items() if k != "planned"}
                    elif a.get("planned"):
                        rec = _rec_from_link(a["link_pin"], a["ifname"], a["hook"]) or {
                            "ifname": a["ifname"], "ifindex": iface.ifindex(a["ifname"]),
                            "hook": a["hook"], "method": "clsact", "mode": None,
                            "link_id": None, "notes": [], "tc_handle": 1, "tc_priority": 1,
                            "prog_id": a["prog_id"]}
                        st.attachments[i] = rec
                    continue
                prog = Program.from_id(a["prog_id"])  # pinned as staged, or held by a link
                try:
                    if a.get("planned"):
                        rec, link = _attach(prog, a["ifname"], spec, hook=a["hook"], **(
                            {"base": a["base"]} if a.get("base") is not None else {}))
                        if link is not None:
                            bpffs.unpin(a["link_pin"])
                            link.pin(a["link_pin"])
                            rec["link_pin"] = a["link_pin"]
                            link.close()
                        st.attachments[i] = rec
                    else:
                        _replace(a, prog, a["prog_id"])
                finally:
                    prog.close()
        for t, info in p["installs"].items():
            if _generation(st, t) == info["generation"]:
                stage = next(f for f in _filters(spec) if f.name == t)
                entries = _entries_from_state(st.live_rules[t], spec.protocols)
                ct = compile_filter(stage, entries, running_user_layout(st, spec),
                                    _running_plan(st, t, entries))
                with _open_table(st.name, stage, spec, Features(**st.features)) as table:
                    table.install(ct, info["fresh"])
    except EbplaneError as e:
        raise type(e)(f"pipeline '{st.name}': an interrupted apply could not be finished: "
                      f"{e.message}", hint=f"re-apply the spec (ebplane apply {st.spec_file}) "
                      f"or detach the pipeline (ebplane detach {st.name})") from e
    _finish(st)


def _pinned_progs(built: Built) -> list[tuple[str, Program]]:
    """(pin name, program) of every program apply pins: the one at the spec's hook, the
    XDP parser of parser mode xdp and the TC program that applies an XDP pipeline's marks."""
    return [("prog", built.program)] + ([("xdp-parser", built.xdp_parser)]
                                        if built.xdp_parser is not None else []) + \
        ([("tc-marks", built.tc_marks)] if built.tc_marks is not None else []) + \
        ([("tc-ingress", built.tc_ingress)] if built.tc_ingress is not None else [])


def _hook_of(pin: str, prog: Program, spec: PipelineSpec) -> str:
    """Where a program of the pipeline (pinned as ``pin``, see :func:`_pinned_progs`)
    attaches: an XDP program (an xdp pipeline's, or the XDP parser of parser mode xdp) at
    XDP, the companion a stage asked for at tc-ingress (a nat stage's destination
    translation, next to its tc-egress program) there, a sched_cls program at the spec's TC
    hook (an XDP pipeline's marks program: at tc-ingress)."""
    if prog.type_name == "xdp":
        return "xdp"
    if pin == "tc-ingress":
        return "tc-ingress"
    return "tc-ingress" if spec.hook == "xdp" else spec.hook


def _attach(prog: Program, ifname: str, spec: PipelineSpec, *, hook: str,
            replace_foreign: bool = False,
            base: int | None = None) -> tuple[dict, Link | None]:
    """Attach ``prog`` (see :func:`_hook_of`); XDP native first unless the spec says a mode.
    A pipeline with a priority joins the interface's composition (``runtime.dispatch``);
    ``base``: the interface's base compiled into an XDP member (None: looked up per packet)."""
    if spec.priority is not None and hook == spec.hook:
        if hook == "xdp":
            rec = dispatch.join(prog, ifname, spec.priority, netns=spec.netns,
                                base=base,
                                mode=spec.mode or "auto", replace_foreign=replace_foreign,
                                ours=_our_programs(spec.netns))
            return {**rec, "netns": spec.netns, "base": base}, None
        rec, link = dispatch.attach_tcx(prog, ifname, hook, spec.priority,
                                        _tcx_members(spec, ifname))
        return rec, link
    notes: list[str] = []
    try:
        if hook == "xdp":
            found = dispatch.foreign_xdp(ifname)
            if found is not None and found["id"] not in _our_programs(spec.netns):
                if not replace_foreign:  # named, and left alone
                    raise dispatch.foreign_error(ifname, found)
                notes.append(dispatch.evict_foreign(ifname, found))
            a = att.attach_xdp(prog.fd, ifname, mode=spec.mode or "auto", use_link=True)
        else:
            a = att.attach_tc(prog.fd, ifname, hook.split("-", 1)[1])
        a.notes += notes
    except EbplaneError as e:
        # name the ebplane pipeline in the way, if it is one of ours
        for other in all_names():
            if other == spec.name:  # its own intent record lists the attachment it tries
                continue
            st = PipelineState.load(other)
            if st and st.netns == spec.netns and any(
                    a["ifname"] == ifname and a["hook"] == hook for a in st.attachments):
                e.hint = f"pipeline '{other}' is attached to {ifname} ({hook}): " \
                         f"ebplane detach {other}"
        raise
    rec = a.to_dict()
    rec["prog_id"] = prog.id
    return rec, a.link


# -- composition: several pipelines on one interface and hook (runtime/dispatch.py) ----------

def _planned(spec: PipelineSpec, ifname: str, hook: str, prog: Program,
             base: int | None) -> dict:
    """The intent record's entry for an attachment apply is about to make (``base``: the
    interface base compiled into an XDP member)."""
    rec = {"ifname": ifname, "hook": hook, "prog_id": prog.id, "planned": True}
    if spec.priority is not None and hook == spec.hook:
        rec["priority"] = spec.priority
        if hook == "xdp":  # a slot in the interface's dispatcher, no link of its own
            return {**rec, "method": "dispatch", "netns": spec.netns, "base": base}
    return {**rec, "link_pin": str(_link_pin(spec.name, ifname, hook))}


def _others_on(spec: PipelineSpec) -> list[tuple[str, PipelineSpec, PipelineState]]:
    """The other applied pipelines of ``spec``'s namespace and hook that share one of its
    interfaces: (interface, spec, state) per shared interface."""
    out = []
    for other in all_names():
        if other == spec.name:
            continue
        with contextlib.suppress(EbplaneError):
            ost = PipelineState.load(other)
            if ost is None or ost.netns != spec.netns or ost.hook != spec.hook:
                continue
            ospec = _spec_of(ost)
            for ifname in spec.interfaces:
                if any(a["ifname"] == ifname and a["hook"] == spec.hook for a in ost.attachments):
                    out.append((ifname, ospec, ost))
    return out


def _check_composition(spec: PipelineSpec, old: PipelineState | None) -> None:
    """Bad input before anything changes: a priority tie on a shared interface, a pipeline
    with a priority meeting one without, a changed priority."""
    if old is not None:
        before = _spec_of(old).priority
        # at XDP a member moves to its new slot (filled before the old one is emptied); a tcx
        # link keeps its place, and a pipeline alone has no slot
        if before != spec.priority and not (spec.hook == "xdp" and None not in (before,
                                                                               spec.priority)):
            raise UsageError(f"pipeline '{spec.name}' is applied with priority "
                             f"{'none' if before is None else before}; the spec now says "
                             f"{'none' if spec.priority is None else spec.priority}",
                             hint=f"a priority changes with a new attachment: ebplane detach "
                                  f"{spec.name}, then apply the spec")
    for ifname, ospec, _ in _others_on(spec):
        where = f"{ifname} ({spec.hook})"
        if spec.priority is None and ospec.priority is None:
            continue  # as before composition: XDP refuses the second, tcx runs both
        if spec.priority is None or ospec.priority is None:
            alone = ospec.name if ospec.priority is None else spec.name
            raise UsageError(f"pipeline '{ospec.name}' is attached to {where}"
                             f"{' alone (no priority:)' if ospec.priority is None else f' with priority {ospec.priority}'}"
                             f"; pipeline '{spec.name}' has "
                             f"{'none' if spec.priority is None else f'priority {spec.priority}'}",
                             hint=f"pipelines that share an interface and hook all need a "
                                  f"priority: (docs/composition.md); add one to '{alone}'")
        if ospec.priority == spec.priority:
            raise UsageError(f"priority {spec.priority} on {where} is taken by pipeline "
                             f"'{ospec.name}'",
                             hint="pipelines on one interface and hook need distinct priorities "
                                  f"(0-{dispatch.SLOTS - 1}, lower runs first)")


def evict_foreign(spec_path: str | Path) -> list[str]:
    """``apply --replace-foreign`` through the agent: detach the foreign XDP programs (not
    ebplane's, attached by netlink) from the spec's interfaces first; what was done."""
    spec = load_spec(spec_path)
    if spec.hook != "xdp":
        return []
    out = []
    with netns_enter(spec.netns):
        ours = _our_programs(spec.netns)
        for ifname in spec.interfaces:
            found = dispatch.foreign_xdp(ifname)
            if found is not None and found["id"] not in ours and \
                    found["name"] != dispatch.ROOT_NAME:
                out.append(dispatch.evict_foreign(ifname, found))
    return out


def _our_programs(netns: str | None) -> dict[int, str]:
    """prog id -> pipeline of every program ebplane's pipelines attach in ``netns``."""
    out = {}
    for other in all_names():
        with contextlib.suppress(EbplaneError):
            ost = PipelineState.load(other)
            if ost is not None and ost.netns == netns:
                out[ost.prog_id] = other
                out.update({a["prog_id"]: other for a in ost.attachments})
    return out


def _tcx_members(spec: PipelineSpec, ifname: str) -> list[tuple[int, str]]:
    """(priority, link pin) of the other composed pipelines at ``spec``'s TC hook of ``ifname``."""
    return [(ospec.priority, a["link_pin"]) for i, ospec, ost in _others_on(spec) if i == ifname
            for a in ost.attachments
            if a["ifname"] == ifname and a["hook"] == spec.hook and a.get("link_pin")
            and ospec.priority is not None]


def composition(name: str | None = None) -> list[dict]:
    """Per interface and hook shared by composed pipelines: the members in run order,
    {"ifname", "hook", "netns", "members": [{"priority", "pipeline", "prog_id"}]}."""
    seen: dict[tuple, dict] = {}
    for n in all_names():
        st = load_state(n)
        if st is None:
            continue
        prio = _spec_of(st).priority
        if prio is None:
            continue
        for a in st.attachments:
            if a["hook"] != st.hook:
                continue
            key = (st.netns, a["ifname"], a["hook"])
            if key not in seen:
                seen[key] = {"ifname": a["ifname"], "hook": a["hook"], "netns": st.netns,
                             "members": [], "kernel": []}
                with _netns_of(st), contextlib.suppress(EbplaneError):
                    if a["hook"] == "xdp":
                        seen[key]["kernel"] = [m["prog_id"] for m in
                                               dispatch.members(a["ifname"], netns=st.netns)]
                    else:
                        seen[key]["kernel"] = att.query_tcx(a["ifname"], a["hook"].split("-")[1])
            seen[key]["members"].append({"priority": prio, "pipeline": n,
                                         "prog_id": a["prog_id"]})
    out = []
    for d in seen.values():
        d["members"].sort(key=lambda m: m["priority"])
        # the kernel's own order (dispatcher slots, tcx programs), of ebplane's members
        ids = {m["prog_id"] for m in d["members"]}
        d["kernel_order"] = [p for p in d.pop("kernel") if p in ids]
        d["in_order"] = d["kernel_order"] == [m["prog_id"] for m in d["members"]]
        if name is None or any(m["pipeline"] == name for m in d["members"]):
            out.append(d)
    return out


def _undo(failed: list[str], what: str, step: Callable[[], None]) -> None:
    """Run one rollback step; a failure is logged and kept in ``failed`` (the caller reports
    it with the error that made it roll back), never swallowed."""
    try:
        step()
    except Exception as e:  # noqa: BLE001 - every failure of an undo is reported
        log.warning("rollback: could not %s: %s", what, e)
        failed.append(f"{what}: {e}")


def _replace(rec: dict, prog: Program, old_prog_id: int) -> None:
    att.attached(rec).replace(prog.fd, old_prog_id)


def _detach_one(rec: dict, link: Link | None, *, prog_id: int | None = None) -> None:
    if link is not None:
        link.detach()
        link.close()
        return
    att.attached(rec).detach(prog_id=prog_id)


# -- detach / status --------------------------------------------------------------------------

def detach(name: str, *, progress: Progress = _quiet) -> dict:
    with _locked(name):
        st = PipelineState.load(name)  # as found: an interrupted command's record is not settled
        if st is None and pin_dir(name).is_dir():
            # pinned without state (an interrupted first apply, a lost state directory):
            # detach its pinned links, remove its pins
            done = []
            for rec in _adopt(name, None):
                progress(f"detaching from {rec['ifname']} ({rec['hook']}): pinned without state")
                _detach_one(rec, None)
                done.append(rec["ifname"])
            bpffs.unpin(pin_dir(name))
            return {"name": name, "detached": done}
        st = PipelineState.require(name)
        done = []
        atts = list(st.attachments)
        if st.pending and st.pending.get("previous"):  # either version may be attached
            keys = {_attach_key(a) for a in atts}
            atts += [a for a in st.pending["previous"]["attachments"] if _attach_key(a) not in keys]
            # an XDP member moving to another priority may hold its old slot too
            atts += [a for a in st.pending.get("detach", []) if a.get("method") == "dispatch"]
        with _netns_of(st):
            for a in atts:
                progress(f"detaching from {a['ifname']} ({a['hook']})")
                if st.netns and not _netns_exists(st.netns):
                    bpffs.unpin(a.get("link_pin") or "/nonexistent")
                    if a.get("method") == "dispatch":  # its roots went with the namespace
                        dispatch.forget(st.netns)
                else:
                    _detach_one(a, None, prog_id=a["prog_id"])
                if a["ifname"] not in done:  # parser mode xdp: two attachments each
                    done.append(a["ifname"])
        bpffs.unpin(pin_dir(name))
        st.delete()
        return {"name": name, "detached": done}


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def _reap(name: str) -> None:
    """Best effort: a read-only user (group ebplane) cannot respecialise; status shows it."""
    with contextlib.suppress(EbplaneError, PermissionError):
        drop_orphan_capture(name)


BPF_OBJ_NAME_LEN = 16  # the kernel keeps 15 characters of a map's or program's name


def kernel_objects(name: str) -> list[dict]:
    """The pipeline's pinned programs and maps as bpftool shows them: kernel id and name
    (cut to 15 characters), and what each is for (stage, role) by its pin, which
    ``bpftool -f prog|map show`` prints (``pinned <bpffs>/<pipeline>/...``)."""
    out = []
    root = pin_dir(name)
    for pin in ("prog", "xdp-parser"):
        with contextlib.suppress(EbplaneError):
            p = Program.from_pin(root / pin)
            with contextlib.closing(p):
                i = p.info()
            out.append({"kind": "prog", "id": i["id"], "name": i["name"], "pin": str(root / pin),
                        "stage": None, "role": "parser" if pin == "xdp-parser" else "program",
                        "type": i["type"], "truncated": False})
    st = load_state(name)
    roles: dict[str, tuple[str | None, str]] = {}
    if st is not None:
        with contextlib.suppress(Exception):
            roles.update(manifest_of(st).roles())
        if st.capture:
            roles.update({CAPTURE_MAPS[r]: (None, r) for r in ("capture", "capture-counters")})
    d = root / "maps"
    for pin in sorted(d.iterdir()) if d.is_dir() else []:
        with contextlib.suppress(EbplaneError):
            with Map.from_pin(pin) as m:
                stage, role = roles.get(pin.name, (None, "?"))
                out.append({"kind": "map", "id": m.id, "name": m.name, "pin": str(pin),
                            "stage": stage, "role": role, "type": m.type_name,
                            "max_entries": m.max_entries,
                            "truncated": len(pin.name) >= BPF_OBJ_NAME_LEN})
    return out


def running_user_layout(st: PipelineState, spec: PipelineSpec) -> UserLayout:
    """Where the running program keeps the match: fields: as its manifest records it, or
    (a state written before manifests were kept) computed from the features it was built
    for."""
    if st.manifest is not None and "user_layout" in st.manifest:
        return UserLayout.from_dict(st.manifest["user_layout"])
    return user_layout_for(spec.protocols, Features(**st.features))


def manifest_of(st: PipelineState) -> Manifest:
    """The generation manifest of an applied pipeline: as apply stored it, or (a state
    written before manifests were kept) the maps by the generators' naming conventions."""
    if st.manifest is not None:
        return Manifest(st.manifest)
    spec = _spec_of(st)
    return Manifest({"version": MANIFEST_VERSION, "hook": spec.hook,
                     "verdicts": VERDICTS[verdict_family(spec.hook)], "features": st.features,
                     "maps": [{"cname": c, "stage": stage, "role": role}
                              for c, (stage, role) in _map_roles(spec).items()]})


def _map_roles(spec: PipelineSpec) -> dict[str, tuple[str | None, str]]:
    """C (pin) name -> (stage, role) of the maps a pipeline's program may have, from the
    naming conventions of the generators (no code generation)."""
    from ebplane.stages.filter.gen import FRAG_TABLE
    roles: dict[str, tuple[str | None, str]] = {
        **{PIPELINE_MAPS[r]: (None, r) for r in ("verdicts", "handoff", "progs", "marks")},
        FRAG_TABLE: (None, "frags")}
    for st in spec.stages:
        roles.update({c: (st.name, r) for c, r in control_for(st.kind).map_roles(st).items()})
    return roles


def _target_warnings(spec: PipelineSpec) -> list[str]:
    """The interfaces the stages send to (mirror targets, multicast members) that no longer
    exist, in the current namespace: the program still runs (its attachments are healthy),
    but what it sends there fails, and the next apply of the spec is refused."""
    out = []
    for stage in spec.stages:
        for ifname in control_for(stage.kind).targets(spec, stage):
            try:
                iface.ifindex(ifname)
            except UsageError:  # InterfaceNotFound
                out.append(f"{stage.kind} '{stage.name}': {ifname} no longer exists (what the "
                           f"stage sends there fails; the spec cannot be applied again until "
                           f"{ifname} is back or out of the spec)")
    return out


def status(name: str | None = None, *, objects: bool = False) -> list[dict]:
    names = [name] if name is not None else all_names()
    out = []
    for n in names:
        _reap(n)
        st = require_state(n) if name else load_state(n)
        if st is None:  # an interrupted first apply, rolled back just now
            continue
        prog = None
        with contextlib.suppress(EbplaneError):
            p = Program.from_pin(pin_dir(n) / "prog")
            prog = p.info()
            p.close()
        atts = []
        with _netns_of(st):
            for a in st.attachments:
                health, why = _health(a, st.netns)
                atts.append({**a, "health": health, "why": why, "alive": health == "ok"})
            warnings = _target_warnings(_spec_of(st))
        problems = [a["why"] for a in atts if a["health"] != "ok"]
        if not (pin_dir(n) / "maps").is_dir():
            problems.append(f"its maps are no longer pinned under {pin_dir(n)}")
        health = "ok" if not problems else \
            "DEAD" if any(a["health"] == "DEAD" for a in atts) or len(problems) > \
            sum(a["health"] == "DRIFTED" for a in atts) else "DRIFTED"
        out.append({"name": n, "health": health, "problems": problems,
                    "repair": _repair_hint(n, st.spec_file) if problems else None,
                    "hook": st.hook, "netns": st.netns, "prog_id": st.prog_id,
                    "program": prog, "attachments": atts, "features": st.features,
                    "rules": {k: len(v) for k, v in st.live_rules.items()},
                    "filters": st.filters, "capture": st.capture,
                    "applied_at": st.applied_at, "spec_file": st.spec_file, "notes": st.notes,
                    "priority": _spec_of(st).priority, "warnings": warnings})
        if out[-1]["priority"] is not None:
            out[-1]["composition"] = composition(n)
        if objects:
            out[-1]["objects"] = kernel_objects(n)
    return out


# -- stats ------------------------------------------------------------------------------------

# slot of ebp_verdicts -> name, per hook family (from codegen's VERDICTS)
VERDICT_NAMES = {fam: {v: k for k, v in names.items()} for fam, names in VERDICTS.items()}


def _pinned_map(name: str, cname: str) -> Map:
    try:
        return Map.from_pin(pin_dir(name) / "maps" / cname)
    except NotFound as e:
        st = PipelineState.load(name)
        raise NotFound(f"pipeline '{name}' is DEAD: {e.message} (its pins were removed)",
                       hint=_repair_hint(name, st.spec_file if st else None)) from e


def read_stats(maps: Callable[[str], Map], spec: PipelineSpec, live: dict[str, list[dict]]) -> dict:
    """Counters of a pipeline from its maps (``maps(cname)``): per verdict, per rule, per stage.
    ``live``: per filter, its rules as the state file keeps them (``{"id", "rule"}``)."""
    vmap = maps(PIPELINE_MAPS["verdicts"]).with_codecs(U32, COUNT)
    names = VERDICT_NAMES[verdict_family(spec.hook)]
    verdicts = {}
    for i, vname in names.items():
        c = vmap.lookup_sum(i)
        verdicts[vname] = {"packets": c.packets, "bytes": c.bytes}
    stages = []
    for st in spec.stages:
        ctl = control_for(st.kind)
        extra = {"live": live.get(st.name, [])} if st.has_rules else {}
        stages.append({"stage": st.name, "kind": st.kind, **ctl.stats(maps, spec, st, **extra)})
    out = {"verdicts": verdicts, "stages": stages}
    if spec.hook == "xdp":  # marks set from XDP: how often the TC program applied them
        try:
            mm = maps(PIPELINE_MAPS["marks"]).with_codecs(U32, COUNT)
        except NotFound:
            mm = None  # no rule sets a mark
        if mm is not None:
            out["marks"] = {}
            for i, what in enumerate(MARK_COUNTERS):
                c = mm.lookup_sum(i)
                out["marks"][what] = {"packets": c.packets, "bytes": c.bytes}
    if spec.parser_mode == "xdp":  # how often the XDP parser's parse-info reached TC
        hm = maps(PIPELINE_MAPS["handoff"]).with_codecs(U32, COUNT)
        out["handoff"] = {}
        for i, what in enumerate(HANDOFF_COUNTERS):
            c = hm.lookup_sum(i)
            out["handoff"][what] = {"packets": c.packets, "bytes": c.bytes}
    return out


def stats(name: str | None = None, *, reap: bool = True) -> list[dict]:
    """Counters of one or every applied pipeline (``reap``: first remove an orphaned
    capture, see :func:`drop_orphan_capture`)."""
    out = []
    for n in ([name] if name is not None else all_names()):
        if reap:
            _reap(n)
        st = require_state(n) if name is not None else load_state(n)
        if st is None:
            continue
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
        st = require_state(pipeline)
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
        st = require_state(self.pipeline)
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
        t0 = time.monotonic()
        try:
            return self._edit_locked(change)
        finally:
            _observe("rules", self.pipeline, self.name, time.monotonic() - t0)

    def _edit_locked(self, change: Callable[[list[Rule]], list[Rule]]) -> dict:
        with _locked(self.pipeline):
            st, spec = self._spec()
            stage = [f for f in _filters(spec) if f.name == self.name]
            if not stage:
                raise NotFound(f"pipeline '{self.pipeline}' has no filter '{self.name}' any "
                               f"more (it was re-applied)")
            self.stage = stage[0]  # capacity and classifier as applied now
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
                compiled = compile_filter(self.stage, new, running_user_layout(st, spec),
                                          running_plan)
            self.last_entries = new  # what the agent persists
            if compiled is None or not compiled.plan.same_code(running_plan):
                res = _apply(spec, st.spec_text, st.spec_file, live_override=all_live)
                plan = PipelineState.require(self.pipeline).filters.get(self.name, {})
                return {"table": self.name, "rules": len(new), "regenerated": True,
                        "prog_id": res.prog_id, "form": plan.get("form"), "why": plan.get("why")}
            with _open_table(self.pipeline, self.stage, spec, running) as table:
                # the intent record first: the new rules, and the tree root they flip from
                previous_rules = st.live_rules.get(self.name, [])
                previous_plan = st.filters.get(self.name)
                st.live_rules[self.name] = [e.to_state() for e in new]
                st.filters[self.name] = compiled.plan.to_dict()
                st.pending = {"op": "rules", "table": self.name,
                              "generation": table.generation(), "previous_rules": previous_rules,
                              "previous_plan": previous_plan}
                st.save()
                _crash_point("rules-intent")
                try:
                    info = table.install(compiled, fresh_ids(new, entries), keep_mirror=True)
                except BaseException:
                    if table.generation() == st.pending["generation"]:  # not flipped
                        st.live_rules[self.name] = previous_rules
                        if previous_plan is not None:
                            st.filters[self.name] = previous_plan
                    st.pending = None
                    st.save()
                    raise
                _crash_point("rules-installed")
            st.pending = None
            st.save()
            self._remember(st, spec, new, running, table.mirror)
            return {"table": self.name, "rules": len(new), "regenerated": False,
                    "why": compiled.plan.why, **info}

    # -- incremental edits of a table in the tree form -------------------------------------
    # After an install this object keeps the parsed rules, the state it read and a mirror of
    # the tree arrays in force (ebplane.stages.filter.edit); the next add or delete, when the
    # state file and the kernel's root are still what it left, edits the tree in place (the
    # rule's leaves and their paths, copy-on-write, one root flip) instead of re-reading and
    # re-parsing every rule and rebuilding the forest.  Anything else takes the full path.
    _cache: dict | None = None
    fallback: str | None = None  # why the last edit could not be incremental

    def _remember(self, st: PipelineState, spec: PipelineSpec, entries: list[RuleEntry],
                  running: Features, mirror) -> None:
        self._cache = None
        if mirror is None:
            return
        self._cache = {"key": _state_key(self.pipeline), "st": st, "spec": spec,
                       "entries": entries, "running": running, "mirror": mirror,
                       "ids": {e.id for e in entries},
                       "rules": collections.Counter(e.rule for e in entries),
                       "layout": user_layout_for(spec.protocols, running)}

    def _fast(self, kind: str, arg) -> dict | None:
        """An add (``arg`` = (rule, position)) or delete (``arg`` = indexes) as an
        incremental tree edit; None when it does not apply (the caller takes the full path)."""
        c = self._cache
        self.fallback = None
        if c is None:
            return None
        if c["key"] != _state_key(self.pipeline):
            # written by someone else (a status or stats that settled or reaped, another
            # table's edit): still ours if this table's rules, plan and program are unchanged
            # (reading the record costs far less than re-parsing every rule)
            st2 = PipelineState.load(self.pipeline)
            old = c["st"]
            if st2 is None or st2.pending or st2.spec_text != old.spec_text \
                    or st2.features != old.features or st2.prog_id != old.prog_id \
                    or st2.filters.get(self.name) != old.filters.get(self.name) \
                    or st2.live_rules.get(self.name) != old.live_rules.get(self.name):
                self._cache = None
                return None
            c.update(st=st2, key=_state_key(self.pipeline))
        st, spec, entries, mirror = c["st"], c["spec"], c["entries"], c["mirror"]
        if spec.protocols != self._protocols or st.pending:
            return None
        if kind == "add":
            rule, pos = arg
            pos = len(entries) if pos is None else pos
            if not 0 <= pos <= len(entries) or len(entries) + 1 > self.stage.capacity \
                    or c["rules"][rule] or not c["running"].covers(
                        spec_features(spec, {self.name: [rule]})):
                return None  # the full path reports it, or keeps ids as assign_ids does
            rid = next(i for i in itertools.count() if i not in c["ids"])
            new = entries[:pos] + [RuleEntry(rid, rule)] + entries[pos:]
            remove: list[int] = []
            add = [(rid, rule, entries[pos - 1].id if pos else None,
                    entries[pos].id if pos < len(entries) else None)]
            fresh = [rid]
        else:
            drop = sorted(set(arg))
            if not drop or any(not 0 <= i < len(entries) for i in drop):
                return None
            gone = set(drop)
            new = [e for i, e in enumerate(entries) if i not in gone]
            remove, add, fresh = [entries[i].id for i in drop], [], []
        with _open_table(self.pipeline, self.stage, spec, c["running"]) as table:
            if table.root() != mirror.root:
                self._cache = None
                return None
            items = st.live_rules.setdefault(self.name, [])
            if kind == "add":
                items.insert(pos, new[pos].to_state())
                undo: dict = {"delete": pos}
            else:
                undo = {"insert": [[i, items[i]] for i in drop]}
                for i in reversed(drop):
                    del items[i]
            # the new rules with the intent record: the root before the flip and the inverse
            # edit (a command that finds it settles it: forward if the root moved, else back)
            st.pending = {"op": "rules", "table": self.name, "generation": mirror.root,
                          "undo": undo}
            self._cache = None  # stale from here on, until the edit is through
            st.save()
            _crash_point("rules-intent")
            try:
                info = table.install_edit(mirror, remove, add, c["layout"], fresh)
            except BaseException as e:
                if table.root() == st.pending["generation"]:  # not flipped
                    _undo_rules(items, undo)
                    st.pending = None
                    st.save()
                    if isinstance(e, NeedRebuild):
                        self.fallback = str(e)
                        return None
                    raise
                raise  # flipped: the record settles forward
            _crash_point("rules-installed")
        st.pending = None
        st.save()
        self.last_entries = new
        c.update(key=_state_key(self.pipeline), entries=new)
        if kind == "add":
            c["ids"].add(new[pos].id)
            c["rules"][rule] += 1
        else:
            for i in drop:
                c["ids"].discard(entries[i].id)
                c["rules"][entries[i].rule] -= 1
        self._cache = c
        return {"table": self.name, "rules": len(new), "regenerated": False, **info}

    def replace(self, rules: Sequence[Rule]) -> dict:
        """Install ``rules`` as the whole rule set, atomically."""
        return self._edit(lambda _current: list(rules))

    def add(self, rule: Rule, at: int | None = None) -> dict:
        t0 = time.monotonic()
        with _locked(self.pipeline):
            res = self._fast("add", (rule, at))
        if res is not None:
            _observe("rules", self.pipeline, self.name, time.monotonic() - t0)
            return res

        def insert(rules: list[Rule]) -> list[Rule]:
            pos = len(rules) if at is None else at
            if not 0 <= pos <= len(rules):
                raise UsageError(f"position {pos} is out of range (0..{len(rules)})")
            return rules[:pos] + [rule] + rules[pos:]
        return self._full(insert)

    def _full(self, change: Callable[[list[Rule]], list[Rule]]) -> dict:
        """The full path, saying why an incremental edit was refused (when it was)."""
        why = self.fallback
        res = self._edit(change)
        return {**res, "incremental_refused": why} if why else res

    def delete(self, indexes: Sequence[int]) -> dict:
        t0 = time.monotonic()
        with _locked(self.pipeline):
            res = self._fast("delete", list(indexes))
        if res is not None:
            _observe("rules", self.pipeline, self.name, time.monotonic() - t0)
            return res

        def remove(rules: list[Rule]) -> list[Rule]:
            bad = [i for i in indexes if not 0 <= i < len(rules)]
            if bad:
                raise KeyNotFound(f"filter '{self.name}' has no rule at index {bad[0]} "
                                  f"({len(rules)} rules)")
            drop = set(indexes)
            return [r for i, r in enumerate(rules) if i not in drop]
        return self._full(remove)

    @contextlib.contextmanager
    def batch(self):
        """``with table.batch() as rules: rules.append(...); del rules[0]`` -> one install."""
        st, spec = self._spec()
        rules = [e.rule for e in _entries_from_state(st.live_rules.get(self.name, []),
                                                      spec.protocols)]
        yield rules
        self.replace(rules)
