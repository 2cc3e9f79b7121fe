"""Pipeline spec -> one restricted-C program.

The reviewed C lives in ``codegen/bpf/*.h``; this module only writes what differs per
pipeline: the ``#define``s that select the parser's protocols, the maps of each stage and the
main function that calls the stages in order.  Only what the pipeline uses is generated: a
protocol no rule needs is not parsed, a stage kind the pipeline lacks has no code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ebplane import __version__
from ebplane.spec import CountStage, FilterStage, PipelineSpec, Rule

# hook -> (section, context type, pass verdict, drop verdict)
HOOKS = {
    "xdp": ("xdp", "struct xdp_md *ctx", "XDP_PASS", "XDP_DROP"),
    "tc-ingress": ("tc", "struct __sk_buff *skb", "TC_ACT_OK", "TC_ACT_SHOT"),
    "tc-egress": ("tc", "struct __sk_buff *skb", "TC_ACT_OK", "TC_ACT_SHOT"),
}
TC_PULL_LEN = 128  # bytes of headers a TC program makes linear before parsing
MAX_VERDICTS = 8
TRACE_NONE = 0xFF


@dataclass(frozen=True)
class Features:
    """What the parser must read, derived from the rules (and the protocols listed)."""
    vlan: bool = False
    ipv4: bool = False
    ipv6: bool = False
    tcp: bool = False
    udp: bool = False

    def defines(self) -> list[str]:
        return [f"EBP_PARSE_{n.upper()}" for n in ("vlan", "ipv4", "ipv6", "tcp", "udp")
                if getattr(self, n)]

    def covers(self, other: "Features") -> bool:
        return all(getattr(self, n) or not getattr(other, n)
                   for n in ("vlan", "ipv4", "ipv6", "tcp", "udp"))

    def to_dict(self) -> dict:
        return {n: getattr(self, n) for n in ("vlan", "ipv4", "ipv6", "tcp", "udp")}


def rule_features(rules: Iterable[Rule], protocols: Iterable[str]) -> Features:
    """The parsing the rules need, limited to the protocols listed."""
    listed = set(protocols)
    v4 = v6 = tcp = udp = False
    for r in rules:
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
                    udp=udp and "udp" in listed)


def spec_features(spec: PipelineSpec, live_rules: dict[str, list[Rule]] | None = None) -> Features:
    rules: list[Rule] = []
    for st in spec.stages:
        if isinstance(st, FilterStage):
            rules += (live_rules or {}).get(st.name, list(st.rules))
    return rule_features(rules, spec.protocols)


@dataclass
class MapRole:
    """What a map of the generated program is for, so the control plane can find it."""
    cname: str
    stage: str | None      # stage (table) name, None for pipeline-wide maps
    role: str              # rules | shapes | config | counters | verdicts | trace
    pinned: bool = True


@dataclass
class GeneratedProgram:
    name: str              # program (function) name
    section: str
    source: str
    features: Features
    maps: list[MapRole] = field(default_factory=list)
    stage_names: list[str] = field(default_factory=list)

    def map_for(self, stage: str | None, role: str) -> str:
        for m in self.maps:
            if m.stage == stage and m.role == role:
                return m.cname
        raise KeyError((stage, role))


def filter_slots(stage: FilterStage) -> tuple[int, int]:
    """Counter slots of a filter's default verdict and of malformed packets."""
    return stage.capacity, stage.capacity + 1


def rules_map_entries(stage: FilterStage) -> int:
    """Room in the rules hash: two generations of up to 2 entries per rule on average."""
    return 4 * stage.capacity


def _map(cname: str, mtype: str, key: str, value: str, entries: int, comment: str,
         flags: str | None = None) -> str:
    lines = [f"/* {comment} */", "struct {", f"\t__uint(type, {mtype});",
             f"\t__uint(max_entries, {entries});", f"\t__type(key, {key});",
             f"\t__type(value, {value});"]
    if flags:
        lines.append(f"\t__uint(map_flags, {flags});")
    lines.append(f"}} {cname} SEC(\".maps\");")
    return "\n".join(lines)


def generate(spec: PipelineSpec, features: Features | None = None, *, trace: bool = False) -> GeneratedProgram:
    """The C source of ``spec``.  ``trace`` adds a per-CPU record of which stage and rule
    decided the last packet (for ``replay``; never in an applied program)."""
    features = features or spec_features(spec)
    section, ctx_decl, pass_v, drop_v = HOOKS[spec.hook]
    prog_name = "ebp_" + spec.name.replace("-", "_")
    prog = GeneratedProgram(prog_name[:15], section, "", features)
    maps: list[str] = []
    stage_fns: list[str] = []
    calls: list[str] = []

    maps.append(_map("ebp_verdicts", "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                     MAX_VERDICTS, "packets and bytes per returned verdict"))
    prog.maps.append(MapRole("ebp_verdicts", None, "verdicts"))
    if trace:
        maps.append(_map("ebp_trace", "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_trace", 1,
                         "which stage and counter slot decided the last packet (replay only)"))
        prog.maps.append(MapRole("ebp_trace", None, "trace", pinned=False))

    for idx, st in enumerate(spec.stages):
        prog.stage_names.append(st.name)
        if isinstance(st, FilterStage):
            maps.append(_filter_maps(st, prog))
            stage_fns.append(_filter_fn(idx, st))
            calls.append(f"\t/* stage {idx}: filter '{st.name}' */\n"
                         f"\tverdict = stage_{idx}_filter(&pkt, malformed);\n"
                         f"\tif (verdict != EBP_NEXT)\n\t\tgoto out;")
        elif isinstance(st, CountStage):
            cname = f"cnt_{st.name}"
            maps.append(_map(cname, "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count", 4,
                             f"count '{st.name}': all, IPv4, IPv6, other"))
            prog.maps.append(MapRole(cname, st.name, "counters"))
            stage_fns.append(_count_fn(idx, st, cname))
            calls.append(f"\t/* stage {idx}: count '{st.name}' */\n\tstage_{idx}_count(&pkt);")
        else:  # the spec layer only registers stage kinds that have a generator here
            raise NotImplementedError(f"no code generator for stage kind '{st.kind}'")

    if spec.hook == "xdp":
        prologue = ("\tvoid *data = (void *)(long)ctx->data;\n"
                    "\tvoid *data_end = (void *)(long)ctx->data_end;\n")
        length = ""
    else:
        prologue = (f"\t/* make the headers linear: parsing reads at most {TC_PULL_LEN} bytes */\n"
                    f"\tif (skb->data + {TC_PULL_LEN} > skb->data_end && skb->len > skb->data_end - skb->data)\n"
                    f"\t\tbpf_skb_pull_data(skb, skb->len < {TC_PULL_LEN} ? skb->len : {TC_PULL_LEN});\n"
                    "\tvoid *data = (void *)(long)skb->data;\n"
                    "\tvoid *data_end = (void *)(long)skb->data_end;\n")
        length = "\tpkt.len = skb->len; /* count the whole frame, not only the linear part */\n"

    stage_list = ", ".join(f"{s.kind} '{s.name}'" for s in spec.stages)
    head = [
        "// SPDX-License-Identifier: GPL-2.0",
        f"/* Pipeline '{spec.name}', generated by ebplane {__version__} from {spec.source}.",
        " * Regenerate it (ebplane apply / replay); do not edit.",
        f" * hook: {spec.hook}; protocols listed: {' '.join(spec.protocols)}",
        f" * parsed (what the rules need): ethernet {' '.join(n for n, v in features.to_dict().items() if v)}",
        f" * stages: {stage_list}",
        " */",
    ]
    head += [f"#define {d} 1" for d in features.defines()]
    if trace:
        head.append("#define EBP_TRACE 1")
    head += ['#include "filter_stage.h"', ""]
    trace_struct = ("struct ebp_trace {\n\t__u32 stage; /* 0xff: no stage decided */\n"
                    "\t__u32 slot;  /* counter slot: rule id, default or malformed slot */\n};\n")
    trace_macro = ("#ifdef EBP_TRACE\n#define EBP_TRACE_SET(st, sl) do { __u32 z_ = 0; "
                   "struct ebp_trace *t_ = bpf_map_lookup_elem(&ebp_trace, &z_); "
                   "if (t_) { t_->stage = (st); t_->slot = (sl); } } while (0)\n"
                   "#else\n#define EBP_TRACE_SET(st, sl) do { } while (0)\n#endif\n")
    main = [
        f'SEC("{section}")',
        f"int {prog.name}({ctx_decl})",
        "{",
        prologue.rstrip("\n"),
        "\tstruct ebp_pkt pkt = {};",
        "\tint malformed = ebp_parse(data, data_end, &pkt) == EBP_MALFORMED;",
        "\tint verdict = EBP_PASS;",
        "\tint action;",
        "",
    ]
    if length:
        main.insert(5, length.rstrip("\n"))
    if trace:
        main.append(f"\tEBP_TRACE_SET({TRACE_NONE}, 0);")
    main += calls
    main += [
        "\tverdict = EBP_PASS; /* after the last stage the packet passes */",
        "out:",
        f"\taction = verdict == EBP_DROP ? {drop_v} : {pass_v};",
        "\tebp_count(&ebp_verdicts, action, pkt.len);",
        "\treturn action;",
        "}",
    ]
    if not calls:
        main.remove("out:")
    body = "\n".join(head) + "\n" + trace_struct + "\n" + "\n\n".join(maps) + "\n\n" + trace_macro + \
        "\n" + "\n\n".join(stage_fns) + ("\n\n" if stage_fns else "") + "\n".join(main) + \
        '\n\nchar LICENSE[] SEC("license") = "GPL";\n'
    prog.source = body
    return prog


def _filter_maps(st: FilterStage, prog: GeneratedProgram) -> str:
    t = f"flt_{st.name}"
    out = [
        _map(f"{t}_rules", "BPF_MAP_TYPE_HASH", "struct ebp_flt_key", "struct ebp_flt_rule",
             rules_map_entries(st), f"filter '{st.name}': rule entries of both generations",
             flags="BPF_F_NO_PREALLOC"),
        _map(f"{t}_shapes", "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_flt_shape",
             "2 * EBP_FLT_MAX_SHAPES", f"filter '{st.name}': shapes of both generations"),
        _map(f"{t}_cfg", "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_flt_config", 1,
             f"filter '{st.name}': active generation"),
        _map(f"{t}_cnt", "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count", st.capacity + 2,
             f"filter '{st.name}': per rule id, then default and malformed"),
        f"EBP_FLT_DEFINE({t}, {t}_cfg, {t}_shapes, {t}_rules)",
    ]
    prog.maps += [MapRole(f"{t}_rules", st.name, "rules"), MapRole(f"{t}_shapes", st.name, "shapes"),
                  MapRole(f"{t}_cfg", st.name, "config"), MapRole(f"{t}_cnt", st.name, "counters")]
    return "\n\n".join(out)


_OUTCOME = {"pass": "EBP_PASS", "drop": "EBP_DROP", "next": "EBP_NEXT"}


def _filter_fn(idx: int, st: FilterStage) -> str:
    t = f"flt_{st.name}"
    default_slot, malformed_slot = filter_slots(st)
    return "\n".join([
        f"/* filter '{st.name}': first matching rule wins; otherwise {st.default}; "
        f"malformed packets: {st.malformed} */",
        f"static __always_inline int stage_{idx}_filter(const struct ebp_pkt *pkt, int malformed)",
        "{",
        "\tstruct ebp_flt_rule r;",
        "",
        "\tif (malformed) {",
        f"\t\tebp_count(&{t}_cnt, {malformed_slot}, pkt->len);",
        f"\t\tEBP_TRACE_SET({idx}, {malformed_slot});",
        f"\t\treturn {_OUTCOME[st.malformed]};",
        "\t}",
        f"\tif ({t}_classify(pkt, &r)) {{",
        f"\t\tebp_count(&{t}_cnt, r.rule_id, pkt->len);",
        f"\t\tEBP_TRACE_SET({idx}, r.rule_id);",
        "\t\treturn r.action == EBP_ACT_DROP ? EBP_DROP : EBP_PASS;",
        "\t}",
        f"\tebp_count(&{t}_cnt, {default_slot}, pkt->len);",
        *([f"\tEBP_TRACE_SET({idx}, {default_slot});"] if st.default != "next" else []),
        f"\treturn {_OUTCOME[st.default]};",
        "}",
    ])


def _count_fn(idx: int, st: CountStage, cname: str) -> str:
    return "\n".join([
        f"/* count '{st.name}': every packet reaching it, and by family */",
        f"static __always_inline void stage_{idx}_count(const struct ebp_pkt *pkt)",
        "{",
        f"\tebp_count(&{cname}, 0, pkt->len);",
        f"\tebp_count(&{cname}, pkt->eth_proto == ETH_P_IP ? 1 : pkt->eth_proto == ETH_P_IPV6 ? 2 : 3, pkt->len);",
        "}",
    ])
