"""Pipeline spec -> one restricted-C program (or two, with a separate or an XDP parser).

The reviewed C lives in ``codegen/bpf/*.h``; this module writes what differs per pipeline:
the parser, generated from the pipeline's protocols (:mod:`ebplane.codegen.p4c`), the maps of
each stage and the main function that calls the stages in order.  Only what the pipeline uses
is generated: a protocol not listed has no parser state, a header field no stage reads is
skipped by offset, a stage kind the pipeline lacks has no code.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Iterable

from ebplane import __version__
from ebplane.codegen import dispatch, p4c
from ebplane.codegen.capture import (CAP_RATE, CAP_REC, CAPTURE_COUNTERS, CAPTURE_MAPS,
                                     CaptureSpec, capture_c)
from ebplane.codegen.layout import COUNT, Field, Layout
from ebplane.protocols import ParserGraph, build_parser
from ebplane.spec import PipelineSpec, Rule
from ebplane.spec.protocol_set import parser_graph
from ebplane.stages import kind_part

# hook -> (section, context type, pass verdict, drop verdict)
HOOKS = {
    "xdp": ("xdp", "struct xdp_md *ctx", "XDP_PASS", "XDP_DROP"),
    "tc-ingress": ("tc", "struct __sk_buff *ctx", "TC_ACT_OK", "TC_ACT_SHOT"),
    "tc-egress": ("tc", "struct __sk_buff *ctx", "TC_ACT_OK", "TC_ACT_SHOT"),
}
TC_PULL_LEN = 128  # bytes of headers a TC program makes linear before parsing
# An interface MTU above this needs an XDP program that accepts multi-buffer frames
# (``xdp.frags``): drivers keep a frame in one page only up to about 3000-3500 bytes
# (veth: 4096 - 256 headroom - 320 shared info - 14); native attach of a single-buffer
# program to a larger MTU fails with ERANGE.
FRAGS_MTU = 3000
XDP_PROLOGUE = ["\tvoid *data = (void *)(long)ctx->data;",
                "\tvoid *data_end = (void *)(long)ctx->data_end;"]
# parser mode xdp: slots of map ebp_handoff, counted by the TC program per packet
HANDOFF_COUNTERS = ("parse_info_from_xdp", "parsed_in_tc")
# XDP pipelines that set marks: slots of map ebp_marks, counted by ebp_tc_marks
MARK_COUNTERS = ("set_from_xdp",)
MAX_VERDICTS = 8
# role -> C name of the pipeline's own maps (stage == None in the manifest); the one place
# these names are made (stage kinds make theirs in their gen.py)
PIPELINE_MAPS: dict[str, str] = {"verdicts": "ebp_verdicts", "marks": "ebp_marks",
                                 "handoff": "ebp_handoff", "progs": "ebp_progs",
                                 "trace": "ebp_trace", **CAPTURE_MAPS}
M = PIPELINE_MAPS
TRACE_NONE = 0xFF
# the value of map ebp_trace (replay and trace read it)
TRACE = Layout("ebp_trace", [Field("stage", "__u32", comment="0xff: no stage decided"),
                             Field("slot", "__u32", comment="counter slot: rule id, default "
                                                            "or malformed slot")],
               "replay only: which stage and counter slot decided the last packet")
# the verdicts a program returns (slots of map ebp_verdicts), per hook family: the kernel's
# constant name -> value.  The one place they are written (stats, trace, the manifest)
VERDICTS: dict[str, dict[str, int]] = {
    "xdp": {"XDP_ABORTED": 0, "XDP_DROP": 1, "XDP_PASS": 2, "XDP_TX": 3, "XDP_REDIRECT": 4},
    "tc": {"TC_ACT_OK": 0, "TC_ACT_SHOT": 2, "TC_ACT_REDIRECT": 7},
}
MANIFEST_VERSION = 1


def verdict_family(hook: str) -> str:
    """``xdp`` or ``tc``: whose return codes a program at ``hook`` uses."""
    return "xdp" if hook == "xdp" else "tc"


_FLAGS = ("vlan", "ipv4", "ipv6", "tcp", "udp")


@dataclass(frozen=True)
class Features:
    """What the stages read of the parse, derived from the rules (and the protocols listed).

    The flags say which bound ``ebp_pkt`` members are filled (vlan id, addresses, ports;
    ``WANTED_FIELDS`` in p4c); ``fields`` are the header fields ``match:`` rules read, copied
    into ``ebp_pkt.user`` (their layout follows from the sorted names).
    """
    vlan: bool = False
    ipv4: bool = False
    ipv6: bool = False
    tcp: bool = False
    udp: bool = False
    fields: tuple[str, ...] = ()
    marks: bool = False  # a rule sets a mark or class (XDP: a TC program applies them)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(sorted(set(self.fields))))

    def defines(self) -> list[str]:
        """``EBP_PARSE_<FLAG>`` for stage headers that compile code per address family."""
        return [f"EBP_PARSE_{n.upper()}" for n in _FLAGS if getattr(self, n)]

    def flags(self) -> list[str]:
        return [n for n in _FLAGS if getattr(self, n)]

    def merge(self, other: "Features") -> "Features":
        return Features(**{n: getattr(self, n) or getattr(other, n) for n in _FLAGS},
                        fields=self.fields + other.fields, marks=self.marks or other.marks)

    def covers(self, other: "Features") -> bool:
        """Whether a program built for ``self`` serves ``other``: same user-area layout too."""
        return (all(getattr(self, n) or not getattr(other, n) for n in _FLAGS)
                and set(other.fields) <= set(self.fields) and (self.marks or not other.marks))

    def to_dict(self) -> dict:
        return {**{n: getattr(self, n) for n in _FLAGS}, "fields": list(self.fields),
                "marks": self.marks}


def rule_features(rules: Iterable[Rule], protocols: Iterable[str]) -> Features:
    """The parsing the rules need, limited to the protocols listed."""
    listed = set(protocols)
    v4 = v6 = tcp = udp = False
    fields: set[str] = set()
    marks = False
    for r in rules:
        marks |= r.sets_skb
        fields.update(str(m.field) for m in r.match)
        fam = (r.src or r.dst).version if (r.src or r.dst) else 0
        needs_ip = fam or r.proto is not None or r.sport or r.dport
        if needs_ip:
            v4 |= fam in (0, 4)
            v6 |= fam in (0, 6)
        if r.sport or r.dport:
            tcp |= r.proto in (None, 6)
            udp |= r.proto in (None, 17)
    # VLAN tags are always skipped when vlan is listed: IP behind a tag is still IP
    return Features(vlan="vlan" in listed, ipv4=v4 and "ipv4" in listed,
                    ipv6=v6 and "ipv6" in listed, tcp=tcp and "tcp" in listed,
                    udp=udp and "udp" in listed, fields=tuple(fields), marks=marks)


def spec_features(spec: PipelineSpec, live_rules: dict[str, list[Rule]] | None = None) -> Features:
    """What the parser must read for all stages (stages with rules: their live rules when
    given)."""
    total = Features(vlan="vlan" in spec.protocols)
    for st in spec.stages:
        if st.has_rules and live_rules and st.name in live_rules:
            st = dataclasses.replace(st, rules=tuple(live_rules[st.name]))
        total = total.merge(generator(st.kind).features(st, spec.protocols))
    return total


@dataclass
class MapRole:
    """What a map of the generated program is for, so the control plane can find it."""
    cname: str
    stage: str | None      # stage (table) name, None for pipeline-wide maps
    role: str              # rules | shapes | config | counters | verdicts | trace | progs
    pinned: bool = True
    # a re-apply may reuse the pinned map (state carries over); never for a PROG_ARRAY,
    # whose entries belong to one version of the program
    reusable: bool = True
    # maps of one group are reused together or not at all (a filter's tree arrays and the
    # root that indexes them must come from one version)
    group: str | None = None
    # the layout, as declared in the C (BPF_MAP_TYPE_*, key and value types, entries, flags)
    mtype: str = ""
    key: str = ""
    value: str = ""
    max_entries: int | str = 0
    flags: str | None = None
    # names of the counter slots of a map with fixed slots (index = slot)
    slots: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        d = {"cname": self.cname, "stage": self.stage, "role": self.role, "pinned": self.pinned,
             "reusable": self.reusable, "group": self.group, "type": self.mtype,
             "key": self.key, "value": self.value, "max_entries": self.max_entries,
             "flags": self.flags}
        if self.slots is not None:
            d["slots"] = list(self.slots)
        return d


@dataclass
class GeneratedProgram:
    name: str              # program (function) name
    section: str
    source: str
    features: Features
    maps: list[MapRole] = field(default_factory=list)
    stage_names: list[str] = field(default_factory=list)
    # separate parser: the program the parser (``name``) tail-calls through map ebp_progs
    stage_prog: str | None = None
    # parser mode xdp: the XDP program that parses and leaves the parse-info for the TC
    # program (``name``), which apply attaches next to it
    xdp_parser: str | None = None
    # an XDP pipeline whose rules set marks: the TC ingress program that copies them from the
    # metadata area to the skb, which apply attaches next to the XDP program
    tc_marks: str | None = None
    # a tc-egress pipeline whose stage also works before routing (nat): the TC ingress
    # program apply attaches next to it on the same interfaces
    tc_ingress: str | None = None
    # where `match:` fields sit in ebp_pkt.user: the control plane packs rule keys the same way
    user_layout: p4c.UserLayout = field(default_factory=p4c.UserLayout)
    graph: ParserGraph | None = None  # the specialised parse graph the parser comes from
    filters: dict = field(default_factory=dict)  # table -> FilterPlan the program was built for
    # tables the generator compiled itself from the spec's rules (no plan given): table ->
    # CompiledTable, so a loader installs them without compiling twice
    compiled_filters: dict = field(default_factory=dict)
    hook: str = "xdp"      # the spec's hook (xdp, tc-ingress, tc-egress)
    # struct name -> Layout of the structs generated from Python (Emit.struct)
    types: dict = field(default_factory=dict)

    def map_for(self, stage: str | None, role: str) -> str:
        for m in self.maps:
            if m.stage == stage and m.role == role:
                return m.cname
        raise KeyError((stage, role))

    def manifest(self) -> dict:
        """What the control plane needs to know of this program, made by generation and
        stored with the pipeline's state: every map by (stage, role) with its C name,
        layout and counter slot names, the features, the parse-info (user area) layout,
        the hook, the programs and the verdict names.  See :class:`Manifest`."""
        return {"version": MANIFEST_VERSION, "hook": self.hook, "section": self.section,
                "programs": {"main": self.name, "stages": self.stage_prog,
                             "xdp_parser": self.xdp_parser, "tc_marks": self.tc_marks},
                "stages": list(self.stage_names),
                "features": self.features.to_dict(),
                "user_layout": self.user_layout.to_dict(),
                "verdicts": VERDICTS[verdict_family(self.hook)],
                "maps": [m.to_dict() for m in self.maps],
                "types": {n: t.to_dict() for n, t in self.types.items()}}


class Manifest:
    """A generation manifest read back (from :meth:`GeneratedProgram.manifest`, as a state
    file keeps it): the names the control plane resolves instead of spelling them."""

    def __init__(self, data: dict):
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r}, this ebplane reads "
                             f"{MANIFEST_VERSION}")
        self.data = data
        self.maps = data["maps"]

    def map(self, stage: str | None, role: str) -> dict:
        """The map of ``stage`` (None: the pipeline's own) in ``role``."""
        for m in self.maps:
            if m["stage"] == stage and m["role"] == role:
                return m
        raise KeyError((stage, role))

    def cname(self, stage: str | None, role: str) -> str:
        return self.map(stage, role)["cname"]

    def maps_in_role(self, role: str) -> list[dict]:
        return [m for m in self.maps if m["role"] == role]

    def roles(self) -> dict[str, tuple[str | None, str]]:
        """C name -> (stage, role) of every map."""
        return {m["cname"]: (m["stage"], m["role"]) for m in self.maps}

    def verdicts(self) -> dict[int, str]:
        """Slot of ebp_verdicts -> the verdict's name."""
        return {v: k for k, v in self.data["verdicts"].items()}


def _map(cname: str, mtype: str, key: str, value: str, entries, comment: str,
         flags: str | None = None) -> str:
    """The C declaration of a map (the layout the manifest records beside it)."""
    lines = [f"/* {comment} */", "struct {", f"\t__uint(type, {mtype});",
             f"\t__uint(max_entries, {entries});", f"\t__type(key, {key});",
             f"\t__type(value, {value});"]
    if flags:
        lines.append(f"\t__uint(map_flags, {flags});")
    lines.append(f"}} {cname} SEC(\".maps\");")
    return "\n".join(lines)


@dataclass
class Emit:
    """What stage generators add to the program being generated."""
    spec: PipelineSpec
    prog: GeneratedProgram
    maps: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    # name -> value of the #defines a stage's reviewed header reads, generated from the
    # Python tables that are their one definition (before the headers are included)
    defines: dict[str, str] = field(default_factory=dict)

    @property
    def hook(self) -> str:
        return self.spec.hook

    def map(self, cname: str, mtype: str, key: str, value: str, entries, comment: str, *,
            stage: str | None, role: str, flags: str | None = None, pinned: bool = True,
            reusable: bool = True, group: str | None = None,
            slots: tuple[str, ...] | None = None) -> None:
        """Declare a map in the C and in the manifest (``slots``: names of its counter
        slots, when they are fixed)."""
        self.maps.append(_map(cname, mtype, key, value, entries, comment, flags))
        self.prog.maps.append(MapRole(cname, stage, role, pinned, reusable, group, mtype, key,
                                      value, entries, flags,
                                      tuple(slots) if slots is not None else None))

    def include(self, header: str) -> None:
        if header not in self.includes:
            self.includes.append(header)

    def define(self, name: str, value) -> None:
        """``#define name value`` ahead of the stage headers (the same name twice must have
        the same value: two stages of one kind share their header)."""
        if self.defines.setdefault(name, str(value)) != str(value):
            raise ValueError(f"#define {name}: {self.defines[name]} and {value}")

    def struct(self, layout: Layout) -> None:
        """Write the C of a struct defined as a :class:`~ebplane.codegen.layout.Layout`
        (and of the structs it nests) ahead of the stage headers, which use it; the control
        plane's codec is made from the same object (``kernel.codec.Packed``)."""
        for t in layout.nested() + [layout]:
            have = self.prog.types.setdefault(t.name, t)
            if have != t:
                raise ValueError(f"struct {t.name} defined twice, differently")


class StageGen:
    """Code generator of one stage kind.  ``emit`` adds the stage's maps and its function
    ``stage_<idx>_<kind>(EBP_CTX *ctx, struct ebp_pkt *pkt, int malformed)``, which returns
    the hook's action (XDP_* / TC_ACT_*) when it decides, or EBP_NEXT."""
    kind = ""

    def emit(self, idx: int, stage, out: Emit) -> None:
        raise NotImplementedError

    def features(self, stage, protocols) -> Features:
        return Features()

    def call(self, idx: int, stage) -> str:
        """The call of the stage's function in ``main`` (a kind whose stages change the packet
        and parse it again passes ``&malformed`` instead)."""
        return f"stage_{idx}_{stage.kind}(ctx, &pkt, malformed)"


# generators added at run time (register_generator); a kind of ebplane exports GENERATORS
# from its package's gen.py, found through ebplane.stages.KINDS
STAGE_GENERATORS: dict[str, StageGen] = {}


def register_generator(gen: StageGen) -> StageGen:
    STAGE_GENERATORS[gen.kind] = gen
    return gen


def generator(kind: str) -> StageGen:
    """The code generator of a stage kind."""
    gen = STAGE_GENERATORS.get(kind) or kind_part(kind, "gen")
    if gen is None:  # the spec layer only accepts kinds that are registered
        raise NotImplementedError(f"no code generator for stage kind '{kind}'")
    return gen


def user_layout_for(protocols, features: Features) -> p4c.UserLayout:
    """Where a program built for ``features`` keeps the match: fields (the control plane
    packs rule keys with it)."""
    return p4c.user_layout(parser_graph(protocols), features.fields)


def spec_parser(protocols, features: Features) -> tuple[ParserGraph, p4c.UserLayout,
                                                        p4c.ParserCode]:
    """The parser of a pipeline: its protocols' graph, specialised to the fields the stages
    read (``features``), the user-area layout of its match: fields, and the C."""
    user = user_layout_for(protocols, features)
    needed = p4c.needed_fields(parser_graph(protocols), features.flags(), user)
    graph = build_parser(list(protocols), needed)
    return graph, user, p4c.generate_parser(graph, features.flags(), user)


def generate(spec: PipelineSpec, features: Features | None = None, *, trace: bool = False,
             filters: dict | None = None, frags: bool = False,
             capture: CaptureSpec | None = None, chain: bool = False,
             chain_base: int | None = None) -> GeneratedProgram:
    """The C source of ``spec``.  ``trace`` adds a per-CPU record of which stage and rule
    decided the last packet (for ``replay``; never in an applied program).  ``filters``:
    table -> ``FilterPlan`` of each filter (default: planned from the spec's rules).
    ``frags``: XDP programs are built as ``xdp.frags`` (they accept multi-buffer frames;
    the parser reads the headers in the first buffer, counters count the whole frame).
    ``capture``: the capture hooks of a running ``ebplane trace`` (see
    :mod:`ebplane.codegen.capture`); without it the program has no capture code at all.
    ``chain``: the program is a member of a composition (the spec has a priority): a packet
    it passes goes on to the next member (:mod:`ebplane.codegen.dispatch`); replay builds
    without it (the pipeline alone); ``chain_base``: its one interface's base in the
    dispatcher (constant slots), None to look it up per packet."""
    features = features or spec_features(spec)
    section, ctx_decl, pass_v, drop_v = HOOKS[spec.hook]
    chain = chain and spec.priority is not None
    xdp_chain = chain and spec.hook == "xdp"
    if xdp_chain:  # every program of a chain must agree on multi-buffer: all are frags
        frags = True
    parser_frags = frags  # parser mode xdp: the XDP parser program next to a TC program
    frags = frags and spec.hook == "xdp"
    if frags:
        section = "xdp.frags"
    prog_name = "ebp_" + spec.name.replace("-", "_")
    prog = GeneratedProgram(prog_name[:15], section, "", features)
    prog.hook = spec.hook
    prog.graph, prog.user_layout, parser = spec_parser(spec.protocols, features)
    separate = spec.parser_mode == "separate"
    handoff = spec.parser_mode == "xdp"
    if separate or handoff:
        p4c.check_parse_info(prog.user_layout, spec.parser_mode)
    if separate:
        prog.stage_prog = "ebp_stages"
    if handoff:
        prog.xdp_parser = "ebp_xdp_parser"
    prog.filters = dict(filters or {})
    out = Emit(spec, prog)
    out.struct(COUNT)  # the value of every counters map (ebplane.h's ebp_count() bumps it)
    if spec.hook == "xdp" and features.marks:
        prog.tc_marks = "ebp_tc_marks"
        out.map(M["marks"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                len(MARK_COUNTERS), "TC program ebp_tc_marks: packets whose mark/class it set "
                "from the XDP program's metadata", stage=None, role="marks", slots=MARK_COUNTERS)
    if separate:
        out.map(M["progs"], "BPF_MAP_TYPE_PROG_ARRAY", "__u32", "__u32", 1,
                "slot 0: the stage program the parser program tail-calls",
                stage=None, role="progs", reusable=False)
    if handoff:
        out.map(M["handoff"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                len(HANDOFF_COUNTERS), "packets whose parse the XDP parser left, packets "
                "parsed here (no valid parse-info)", stage=None, role="handoff",
                slots=HANDOFF_COUNTERS)
    if xdp_chain:  # the shared maps of the namespace's dispatcher, reused at load
        out.maps.append(dispatch.chain_maps_c())
        prog.maps += [MapRole(dispatch.CHAIN_MAP, None, "chain", False, False, None,
                              "BPF_MAP_TYPE_PROG_ARRAY", "__u32", "__u32", dispatch.CHAIN_ENTRIES),
                      MapRole(dispatch.BASE_MAP, None, "chain-base", False, False, None,
                              "BPF_MAP_TYPE_HASH", "__u32", "struct ebp_chain_if",
                              dispatch.MAX_INTERFACES)]
    out.map(M["verdicts"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count", MAX_VERDICTS,
            "packets and bytes per returned verdict", stage=None, role="verdicts",
            slots=_verdict_slots(spec.hook))
    if trace or capture:
        out.map(M["trace"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_trace", 1,
                "which stage and counter slot decided the last packet (replay, trace)",
                stage=None, role="trace", pinned=False)
    if capture:
        out.maps.append("\n".join([
            f"/* frames captured by a running trace ({capture.ring_bytes} bytes) */",
            "struct {", "\t__uint(type, BPF_MAP_TYPE_RINGBUF);",
            f"\t__uint(max_entries, {capture.ring_bytes});", f"}} {M['capture']} SEC(\".maps\");"]))
        prog.maps.append(MapRole(M["capture"], None, "capture", reusable=False,
                                 mtype="BPF_MAP_TYPE_RINGBUF", max_entries=capture.ring_bytes))
        out.map(M["capture-counters"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                len(CAPTURE_COUNTERS), "capture: " + ", ".join(CAPTURE_COUNTERS),
                stage=None, role="capture-counters", reusable=False, slots=CAPTURE_COUNTERS)
        out.map(M["capture-rate"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_cap_rate", 1,
                "capture: frames of the current second, per CPU (rate limit)",
                stage=None, role="capture-rate", pinned=False)
    for idx, st in enumerate(spec.stages):
        prog.stage_names.append(st.name)
        gen = generator(st.kind)
        gen.emit(idx, st, out)
        out.calls.append(f"\t/* stage {idx}: {st.kind} '{st.name}' */\n"
                         f"\taction = {gen.call(idx, st)};\n"
                         f"\tif (action != EBP_NEXT)\n\t\tgoto out;")

    if spec.hook == "xdp":
        prologue = XDP_PROLOGUE
    else:
        prologue = [f"\t/* make the headers linear: parsing reads at most {TC_PULL_LEN} bytes */",
                    # compared as packet pointers: the verifier refuses arithmetic on the
                    # __u32 ctx fields; a pull invalidates pointers, so data is read after it
                    f"\t__u32 linear_want = ctx->len < {TC_PULL_LEN} ? ctx->len : {TC_PULL_LEN};",
                    "\tif ((void *)(long)ctx->data + linear_want > (void *)(long)ctx->data_end)",
                    "\t\tbpf_skb_pull_data(ctx, linear_want);",
                    "\tvoid *data = (void *)(long)ctx->data;",
                    "\tvoid *data_end = (void *)(long)ctx->data_end;"]
    stage_list = ", ".join(f"{s.kind} '{s.name}'" for s in spec.stages)
    head = [
        "// SPDX-License-Identifier: GPL-2.0",
        f"/* Pipeline '{spec.name}', generated by ebplane {__version__}.",
        " * Regenerate it (ebplane apply / replay); do not edit.",
        f" * hook: {spec.hook}; parser: {spec.parser_mode}; "
        f"protocols listed: {' '.join(spec.protocols)}",
        f" * fields the stages read: {' '.join(sorted(f'{i}.{f}' for i, fs in prog.graph.needed.items() for f in fs)) or '-'}",
        f" * stages: {stage_list}",
        " */",
    ]
    head += [f"#define {d} 1" for d in features.defines()]
    if trace or capture:
        head.append("#define EBP_TRACE 1")
    if capture:
        head.append(f"#define EBP_CAP_SNAPLEN {capture.snaplen}")
    head += [f"#define EBP_CTX {ctx_decl.rsplit(' ', 1)[0].rstrip(' *')}",
             f"#define EBP_V_PASS {pass_v}", f"#define EBP_V_DROP {drop_v}",
             parser.defines, '#include "ebplane.h"']
    head += [f"#define {k} {v}" for k, v in out.defines.items()]
    head += [t.c() + "\n" for t in prog.types.values()]
    head += [f'#include "{h}"' for h in out.includes]
    trace_part = [TRACE.c(), ""]
    if capture:
        trace_part += [CAP_REC.c(), CAP_RATE.c(), ""]
        out.struct(CAP_REC)
        out.struct(CAP_RATE)
    out.struct(TRACE)
    trace_macro = ("#ifdef EBP_TRACE\n#define EBP_TRACE_SET(st, sl) do { __u32 z_ = 0; "
                   f"struct ebp_trace *t_ = bpf_map_lookup_elem(&{M['trace']}, &z_); "
                   "if (t_) { t_->stage = (st); t_->slot = (sl); } } while (0)\n"
                   "#else\n#define EBP_TRACE_SET(st, sl) do { } while (0)\n#endif")
    main = [f'SEC("{section}")', f"int {prog.stage_prog or prog.name}({ctx_decl})", "{",
            *prologue, "\tstruct ebp_pkt pkt = {};"]
    if separate:
        main += ["\tstruct ebp_pinfo *pi = (void *)(long)ctx->data_meta;",
                 "\tint malformed, action;", "",
                 "\tif ((void *)(pi + 1) > data)",
                 "\t\treturn XDP_PASS; /* not called by the parser program */",
                 "\tmalformed = ebp_pinfo_read(pi, data, data_end, &pkt);"]
    elif handoff:
        # trust only the XDP parser's parse-info of this layout, for a frame of the length
        # it parsed (p4c.PINFO_MAGIC); otherwise (the frame skipped XDP, the metadata was
        # lost, the kernel took a VLAN tag off) parse here: correctness first
        main += ["\tstruct ebp_pinfo *pi = (void *)(long)ctx->data_meta;",
                 "\tint malformed, action;", "",
                 "\tif ((void *)(pi + 1) <= data && pi->magic == (EBP_PINFO_MAGIC ^ ctx->len)) {",
                 "\t\tmalformed = ebp_pinfo_read(pi, data, data_end, &pkt);",
                 f"\t\tebp_count(&{M['handoff']}, {HANDOFF_COUNTERS.index('parse_info_from_xdp')}, "
                 "ctx->len);",
                 "\t} else {",
                 "\t\tmalformed = ebp_parse(data, data_end, &pkt) == EBP_MALFORMED;",
                 f"\t\tebp_count(&{M['handoff']}, {HANDOFF_COUNTERS.index('parsed_in_tc')}, "
                 "ctx->len);",
                 "\t}"]
    else:
        main += ["\tint malformed = ebp_parse(data, data_end, &pkt) == EBP_MALFORMED;",
                 "\tint action;", ""]
    if spec.hook != "xdp":
        main.append("\tpkt.len = ctx->len; /* count the whole frame, not only the linear part */")
    elif frags:
        main.append("\tpkt.len = bpf_xdp_get_buff_len(ctx); /* all buffers of the frame */")
    if trace or capture:
        main.append(f"\tEBP_TRACE_SET({TRACE_NONE}, 0);")
    main += out.calls
    if xdp_chain:
        end = ["\tif (action == XDP_PASS)", "\t\tebp_chain_next(ctx); /* returns if none follows */",
               "\treturn action;"]
    elif chain:  # tcx: the next program of the hook runs (TCX_NEXT)
        end = ["\treturn action == TC_ACT_OK ? TC_ACT_UNSPEC : action; /* pass: next member */"]
    else:
        end = ["\treturn action;"]
    main += ["\taction = EBP_V_PASS; /* after the last stage the packet passes */",
             "out:", f"\tebp_count(&{M['verdicts']}, action, pkt.len);",
             *(["\tebp_capture(ctx, &pkt, action);"] if capture else []),
             *end, "}"]
    parts = ["\n".join(head), "\n".join(trace_part) + "\n".join(out.maps), trace_macro,
             parser.source, *out.functions]
    if capture:
        parts.append(capture_c(capture, spec.hook))
    if xdp_chain:
        parts.append(dispatch.member_next_c(spec.priority, chain_base))
    if separate:
        parts.append(p4c.parse_info_c(prog.graph, prog.user_layout))
    if handoff:
        # the magic word changes with the parser and its layout: during a re-apply, a TC
        # program never reads the parse-info of an XDP parser built for another layout
        magic = zlib.crc32(f"{__version__}\n{parser.source}".encode()) or 1
        parts.append(p4c.parse_info_c(prog.graph, prog.user_layout, magic))
    parts.append("\n".join(main))
    if separate:
        parts.append(_parser_program(prog.name, tail_call=True, frags=frags))
    if handoff:
        parts.append(_parser_program(prog.xdp_parser, tail_call=False, frags=parser_frags))
    if prog.tc_marks:
        parts.append(_tc_marks_program(prog.tc_marks))
    parts.append('char LICENSE[] SEC("license") = "GPL";')
    prog.source = "\n\n".join(parts) + "\n"
    return prog


def _verdict_slots(hook: str) -> tuple[str, ...]:
    """Names of the slots of ebp_verdicts (``""``: a value no verdict has)."""
    names = {v: k for k, v in VERDICTS[verdict_family(hook)].items()}
    return tuple(names.get(i, "") for i in range(MAX_VERDICTS))


def _parser_program(name: str, *, tail_call: bool, frags: bool = False) -> str:
    """The XDP program that parses and leaves the parse-info in front of the packet, then
    tail-calls the stage program (separate mode) or passes the frame on to the TC program
    that reads it (parser mode xdp)."""
    _, ctx_decl, _, _ = HOOKS["xdp"]
    if tail_call:
        what = "continue in the stage program"
        end = [f"\tbpf_tail_call(ctx, &{M['progs']}, 0);",
               f"\treturn XDP_PASS; /* no stage program in {M['progs']} */"]
    else:
        what = "the TC program reads it (or parses itself when it is missing)"
        end = ["\treturn XDP_PASS;"]
    return "\n".join([
        "/* the parser program: parse, hand the parse-info over in front of the packet,",
        f" * {what} */",
        f'SEC("{"xdp.frags" if frags else "xdp"}")', f"int {name}({ctx_decl})", "{",
        *XDP_PROLOGUE,
        "\tstruct ebp_pkt pkt = {};", "\tstruct ebp_pinfo *pi;",
        "\tint malformed = ebp_parse(data, data_end, &pkt) == EBP_MALFORMED;", "",
        "\tif (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*pi)))",
        "\t\treturn XDP_PASS; /* the driver leaves no room for metadata */",
        "\tpi = (void *)(long)ctx->data_meta;",
        "\tif ((void *)(pi + 1) > (void *)(long)ctx->data)", "\t\treturn XDP_PASS;",
        "\tebp_pinfo_write(pi, &pkt, malformed);", *end, "}"])


def _tc_marks_program(name: str) -> str:
    """The TC ingress program next to an XDP program whose rules set marks: it copies the
    mark and class the XDP program left in the metadata area (``ebp_xdp_leave_marks``) to
    the skb, and lets the packet go on to whatever runs after it (TC_ACT_UNSPEC: tcx next)."""
    return "\n".join([
        "/* marks from XDP: the mark/class a rule set, copied from the metadata to the skb */",
        'SEC("tc")', f"int {name}(struct __sk_buff *ctx)", "{",
        "\tvoid *data = (void *)(long)ctx->data;",
        "\tstruct ebp_mark_meta *m = (void *)(long)ctx->data_meta;", "",
        "\tif ((void *)(m + 1) > data || m->magic != (EBP_MARK_MAGIC ^ ctx->len))",
        "\t\treturn TC_ACT_UNSPEC; /* no record for this frame */",
        "\tif (m->flags & EBP_ACT_MARK)", "\t\tctx->mark = m->mark;",
        "\tif (m->flags & EBP_ACT_CLASS)", "\t\tctx->priority = m->klass;",
        f"\tebp_count(&{M['marks']}, {MARK_COUNTERS.index('set_from_xdp')}, ctx->len);",
        "\treturn TC_ACT_UNSPEC;", "}"])
