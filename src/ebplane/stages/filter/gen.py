"""C for one filter stage, in the form its plan chose (``filter.h`` holds the reviewed part),
and what that header shares with the control plane, written into each program from its one
definition in Python: the numbers as #defines (:func:`c_defines`: dimensions, sentinels,
limits, action codes, from ``model`` and ``tree``) and the structs of the tree's maps
(:data:`LAYOUTS`, whose codecs ``model.BOX`` and ``tree.NODE_DTYPE`` are made from the same
``Layout``s).  The header has none of its own and stops with ``#error`` without them."""

from __future__ import annotations

from ebplane.codegen.p4c import UserLayout
from ebplane.codegen.pipeline import Emit, Features, StageGen, rule_features
from ebplane.spec import Rule
from ebplane.spec.rules import PORT_PROTOS
from ebplane.stages.filter import model, tree
from ebplane.stages.filter.model import action_code, user_blocks
from ebplane.stages.filter.spec import FilterStage
from ebplane.stages.filter.plan import FilterPlan, compile_table

# the structs filter.h and the control plane share (ebp_flt_box nests ebp_flt_rule)
LAYOUTS = (model.RULE_LAYOUT, model.BOX_LAYOUT, tree.NODE_LAYOUT)


def c_defines() -> dict[str, str]:
    """The #defines filter.h reads, from ``model``'s and ``tree``'s tables (hexadecimal
    where the value is a bit pattern, so that the C types stay what they were: EBP_FLT_EMPTY
    is an unsigned int)."""
    d = {f"EBP_D_{name.upper()}": str(i) for i, name in enumerate(model.DIMS)}
    d["EBP_FLT_DIMS"] = str(model.NDIMS)
    d.update({"EBP_FLT_PROTO_NONE": hex(model.PROTO_NONE),
              "EBP_FLT_VLAN_NONE": hex(model.VLAN_NONE),
              "EBP_FLT_PORT_NONE": hex(model.PORT_NONE),
              "EBP_FLT_MAX_DEPTH": str(tree.MAX_DEPTH), "EBP_FLT_MAX_LEAF": str(tree.MAX_LEAF),
              "EBP_FLT_MAX_TREES": str(tree.MAX_TREES), "EBP_FLT_LEAF": hex(tree.LEAF_DIM),
              "EBP_FLT_TREE": hex(tree.TREE_DIM), "EBP_FLT_EMPTY": hex(tree.EMPTY)})
    d.update({f"EBP_ACT_{name.upper()}": str(code) for name, code in model.ACTION_CODES.items()})
    d.update({"EBP_ACT_KIND": hex(model.ACT_KIND), "EBP_ACT_MARK": hex(model.ACT_MARK),
              "EBP_ACT_CLASS": hex(model.ACT_CLASS)})
    return d


def header(out: Emit) -> None:
    """Include filter.h with what it needs ahead of it (its #defines and structs)."""
    for name, value in c_defines().items():
        out.define(name, value)
    for layout in LAYOUTS:
        out.struct(layout)
    out.include("filter.h")


OUTCOME = {"pass": "EBP_V_PASS", "drop": "EBP_V_DROP", "next": "EBP_NEXT"}


def slots(stage: FilterStage) -> tuple[int, int]:
    """Counter slots of the default verdict and of malformed packets."""
    return stage.capacity, stage.capacity + 1


# counter slots after default and malformed: IP fragments
FRAG_COUNTERS = ("first", "followed", "other", "bad")
FRAG_TABLE = "ebp_frags"


def frag_slots(stage: FilterStage) -> dict[str, int]:
    """Counter slots of IP fragments: ``first`` fragments whose decision was recorded,
    later fragments that ``followed`` it, ``other`` later fragments (decided by the
    ``fragments:`` mode or, unseen first, by ``unseen_fragments:``), and ``bad`` ones
    dropped as malformed (RFC 1858: a first fragment too short for its transport header, a
    later one that overlaps the TCP header)."""
    return {n: stage.capacity + 2 + i for i, n in enumerate(FRAG_COUNTERS)}


def n_counters(stage: FilterStage) -> int:
    return stage.capacity + 2 + len(FRAG_COUNTERS)


def frag_table(out: Emit) -> str:
    """Declare the pipeline's fragment table (once per program; filter.h defines its key
    and value, so the header comes with it: the balancer records its decisions there too)
    and return its C name."""
    header(out)
    if not any(m.cname == FRAG_TABLE for m in out.prog.maps):
        out.map(FRAG_TABLE, "BPF_MAP_TYPE_LRU_HASH", "struct ebp_frag_key",
                "struct ebp_frag_val", "EBP_FRAG_TABLE_SIZE",
                "IP fragments: the decision of each datagram's first fragment, per stage",
                stage=None, role="frags")
    return FRAG_TABLE


def tracks_fragments(stage: FilterStage, features) -> bool:
    """Fragment handling is generated when the program reads ports (a later fragment differs
    from its first only there); without, every fragment is classified like any packet."""
    return bool(features.tcp or features.udp)


def map_names(table: str) -> dict[str, str]:
    """role -> C name of a table's maps (the one place these names are made)."""
    t = f"flt_{table}"
    return {"config": f"{t}_cfg", "nodes": f"{t}_nodes", "leaf": f"{t}_leaf",
            "boxes": f"{t}_boxes", "counters": f"{t}_cnt"}


def tree_group(table: str) -> str:
    """The map group of a table's tree arrays (reused together or not at all)."""
    return f"flt_{table}:tree"


def _range(expr: str, lo: int, hi: int, full: int) -> list[str]:
    if lo == hi:
        return [f"{expr} == {lo}"]
    out = []
    if lo > 0:
        out.append(f"{expr} >= {lo}")
    if hi < full:
        out.append(f"{expr} <= {hi}")
    return out


def _prefix(side: str, net) -> list[str]:
    """Compare the 32-bit words of the packet's address that the prefix constrains."""
    raw = net.network_address.packed
    out = []
    for w in range(len(raw) // 4):
        bits = max(0, min(32, net.prefixlen - 32 * w))
        if not bits:
            break
        mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
        value = int.from_bytes(raw[4 * w:4 * w + 4], "big")
        word = f"pkt->{side}32[{w}]"
        if mask == 0xFFFFFFFF:
            out.append(f"{word} == bpf_htonl({value:#010x})")
        else:
            out.append(f"({word} & bpf_htonl({mask:#010x})) == bpf_htonl({value:#010x})")
    return out


def rule_condition(rule: Rule, layout: UserLayout) -> str:
    """The C condition under which ``rule`` holds (the box semantics of ``model``)."""
    c: list[str] = []
    ports = rule.sport is not None or rule.dport is not None
    if rule.family:
        c.append(f"pkt->family == {rule.family}")
    elif rule.proto is not None or ports:
        c.append("pkt->family")
    if rule.proto is not None:
        c.append(f"pkt->proto == {rule.proto}")
    elif ports:
        c.append("(" + " || ".join(f"pkt->proto == {p}" for p in PORT_PROTOS) + ")")
    if ports:
        c.append("(pkt->flags & EBP_PKT_L4)")
        for name, r in (("sport", rule.sport), ("dport", rule.dport)):
            if r is not None:
                c += _range(f"pkt->{name}", r[0], r[1], 0xFFFF)
    for side, net in (("src", rule.src), ("dst", rule.dst)):
        if net is not None:
            c += _prefix(side, net)
    if rule.vlan is not None:
        c += ["pkt->n_vlan", f"pkt->vlan == {rule.vlan}"]
    if rule.state is not None:
        c.append("(" + " || ".join(f"pkt->ct_state == {v}" for v in rule.state) + ")"
                 if len(rule.state) > 1 else f"pkt->ct_state == {rule.state[0]}")
    if rule.match:
        need, blocks = user_blocks(rule, layout)
        c.append(f"(pkt->user_valid & {need:#x}) == {need:#x}")
        alts = []
        for mask, value in blocks:
            words = [f"(pkt->user32[{i}] & {m:#010x}) == {v:#010x}"
                     for i, (m, v) in enumerate(zip(mask, value)) if m]
            alts.append("(" + " && ".join(words or ["1"]) + ")")
        c.append(alts[0] if len(alts) == 1 else "(" + " || ".join(alts) + ")")
    return " &&\n\t    ".join(c) if c else "1"


def _describe(rule: Rule) -> str:
    d = rule.to_dict()
    text = ", ".join(f"{k}: {v}" for k, v in d.items())
    return text.replace("*/", "* /")


def mark_lines(hook: str, features) -> list[str]:
    """Set the winning rule's mark and class: on the skb at TC, in the metadata area at XDP
    (the generated TC program ``ebp_tc_marks`` copies them to the skb)."""
    if not getattr(features, "marks", False):
        return []
    if hook == "xdp":
        return ["\t\tif (r.action & (EBP_ACT_MARK | EBP_ACT_CLASS))",
                "\t\t\tebp_xdp_leave_marks(ctx, &r); /* for ebp_tc_marks */"]
    return ["\t\tif (r.action & EBP_ACT_MARK)", "\t\t\tctx->mark = r.mark;",
            "\t\tif (r.action & EBP_ACT_CLASS)", "\t\t\tctx->priority = r.klass;"]


def inline_classifier(t: str, plan: FilterPlan, layout: UserLayout) -> str:
    lines = [f"/* the rules of filter '{t[4:]}' compiled in: the first that holds wins */",
             f"static __always_inline int {t}_classify(const struct ebp_pkt *pkt, "
             "struct ebp_flt_rule *r)", "{"]
    for prio, (rule, rid) in enumerate(plan.inline):
        lines += [f"\t/* {prio}: {{{_describe(rule)}}} */",
                  f"\tif ({rule_condition(rule, layout)})",
                  f"\t\treturn ebp_flt_hit(r, {prio}, {rid}, {action_code(rule):#x}, "
                  f"{rule.mark or 0}, {rule.klass or 0});"]
    lines += ["\treturn 0;", "}"]
    return "\n".join(lines)


def tree_holds(t: str, plan: FilterPlan) -> str:
    tests = [f"EBP_FLT_IN(b, s, EBP_D_{name.upper()})" for name in plan.dims]
    if plan.user:
        tests.append("ebp_flt_user_holds(b, s)")
    body = " &&\n\t       ".join(tests) if tests else "1"
    return "\n".join([
        f"/* box test of '{t}': the dimensions its rules use ({', '.join(plan.dims) or 'none'})"
        f"{' and match: fields' if plan.user else ''} */",
        f"static __always_inline int {t}_holds(const struct ebp_flt_box *b, "
        "const struct ebp_flt_scan *s)", "{", f"\treturn {body};", "}"])


def emit(idx: int, st: FilterStage, plan: FilterPlan, layout: UserLayout, out) -> None:
    """Add the maps and the function ``stage_<idx>_filter`` of one filter to ``out``."""
    header(out)
    names = map_names(st.name)
    t = f"flt_{st.name}"
    if plan.form == "tree":
        # the tree's four maps are one unit: reused together (same plan) or created anew
        group = tree_group(st.name)
        out.map(names["config"], "BPF_MAP_TYPE_ARRAY", "__u32", "__u32", 1,
                f"filter '{st.name}': root of the tree in force", stage=st.name,
                role="config", group=group)
        out.map(names["nodes"], "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_flt_node",
                2 * plan.nodes, f"filter '{st.name}': tree nodes, two generations",
                stage=st.name, role="nodes", group=group)
        out.map(names["leaf"], "BPF_MAP_TYPE_ARRAY", "__u32", "__u32", 2 * plan.leaf,
                f"filter '{st.name}': box indices of the leaves, two generations",
                stage=st.name, role="leaf", group=group)
        out.map(names["boxes"], "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_flt_box",
                2 * plan.boxes, f"filter '{st.name}': rule boxes, two generations",
                stage=st.name, role="boxes", group=group)
    out.map(names["counters"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
            n_counters(st), f"filter '{st.name}': per rule id, then default, malformed and "
            f"fragments ({', '.join(FRAG_COUNTERS)})", stage=st.name, role="counters")
    default_slot, malformed_slot = slots(st)
    if plan.form == "tree":
        classifier = "\n\n".join([
            tree_holds(t, plan),
            f"EBP_FLT_TREE_DEFINE({t}, {names['config']}, {names['nodes']}, {names['leaf']}, "
            f"{names['boxes']}, {t}_holds)"])
    else:
        classifier = inline_classifier(t, plan, layout)
    frags = tracks_fragments(st, out.prog.features)
    if frags:
        frag_table(out)
    fs = frag_slots(st)
    cnt = names["counters"]
    body = ["\tstruct ebp_flt_rule r;", "\tint verdict;", "\t__u32 slot;"]
    if frags:
        body += ["\tstruct ebp_frag_key fk;", "\tint frag_first = 0;"]
    body += [""]
    if frags:
        body += ["\tif (malformed && (pkt->flags & (EBP_PKT_FRAG | EBP_PKT_LATER_FRAG)) == "
                 "EBP_PKT_FRAG) {",
                 "\t\t/* a first fragment too short for its transport header (RFC 1858) */",
                 f"\t\tebp_count(&{cnt}, {fs['bad']}, pkt->len);",
                 f"\t\tEBP_TRACE_SET({idx}, {fs['bad']});",
                 "\t\treturn EBP_V_DROP;", "\t}"]
    body += ["\tif (malformed) {",
             f"\t\tebp_count(&{cnt}, {malformed_slot}, pkt->len);",
             f"\t\tEBP_TRACE_SET({idx}, {malformed_slot});",
             f"\t\treturn {OUTCOME[st.malformed]};", "\t}"]
    if frags:
        other = {"drop": "EBP_V_DROP", "pass": "EBP_NEXT", "stack": "EBP_V_PASS"}
        later = (other[st.unseen_fragments] if st.fragments == "track"
                 else other[st.fragments])
        body += ["\tif (pkt->flags & EBP_PKT_FRAG) {", "\t\t__u32 foff;", "\t\tint more;", ""]
        if st.fragments == "drop":
            body += ["\t\t/* fragments: drop */",
                     f"\t\tebp_count(&{cnt}, {fs['other']}, pkt->len);",
                     f"\t\tEBP_TRACE_SET({idx}, {fs['other']});", "\t\treturn EBP_V_DROP;"]
        else:
            body += ["\t\t/* 0: the offsets are unknown (an IPv6 fragment in parser mode separate",
                     "\t\t * or xdp, whose parse-info has no fragment header offset): untracked */",
                     f"\t\tint known = !ebp_frag_read(ctx, pkt, {idx}, &fk, &foff, &more);",
                     "",
                     "\t\tif (pkt->flags & EBP_PKT_LATER_FRAG) {",
                     "\t\t\t/* RFC 1858: a later fragment over the TCP header rewrites it */",
                     "\t\t\tif (known && pkt->proto == IPPROTO_TCP && foff < 20)",
                     "\t\t\t\tgoto bad_frag;"]
            if st.fragments == "track":
                body += ["\t\t\tstruct ebp_frag_val *fv = known ? "
                         f"bpf_map_lookup_elem(&{FRAG_TABLE}, &fk) : NULL;",
                         "\t\t\tif (fv) {",
                         "\t\t\t\tslot = fv->slot;",
                         "\t\t\t\tverdict = fv->verdict;",
                         f"\t\t\t\tebp_count(&{cnt}, {fs['followed']}, pkt->len);",
                         f"\t\t\t\tif (slot < {n_counters(st)})",
                         f"\t\t\t\t\tebp_count(&{cnt}, slot, pkt->len);",
                         "\t\t\t\tif (verdict != EBP_NEXT)",
                         f"\t\t\t\t\tEBP_TRACE_SET({idx}, slot);",
                         "\t\t\t\treturn verdict;",
                         "\t\t\t}",
                         f"\t\t\t/* first fragment not seen: unseen_fragments: "
                         f"{st.unseen_fragments} */"]
            else:
                body += [f"\t\t\t/* fragments: {st.fragments} */"]
            body += [f"\t\t\tebp_count(&{cnt}, {fs['other']}, pkt->len);",
                     *([f"\t\t\tEBP_TRACE_SET({idx}, {fs['other']});"]
                       if later != "EBP_NEXT" else []),
                     f"\t\t\treturn {later};",
                     "\t\t}",
                     "\t\tfrag_first = known;"]
        body += ["\t}"]
    body += [f"\tif ({t}_classify(pkt, &r)) {{",
             "\t\tslot = r.rule_id;",
             "\t\tverdict = (r.action & EBP_ACT_KIND) == EBP_ACT_DROP ? EBP_V_DROP : EBP_V_PASS;",
             *mark_lines(out.hook, out.prog.features),
             "\t} else {",
             f"\t\tslot = {default_slot};",
             f"\t\tverdict = {OUTCOME[st.default]};",
             "\t}"]
    if frags and st.fragments != "drop":
        body += ["\tif (frag_first) {",
                 f"\t\tebp_frag_record(&{FRAG_TABLE}, &fk, verdict, slot);",
                 f"\t\tebp_count(&{cnt}, {fs['first']}, pkt->len);",
                 "\t}"]
    body += [f"\tebp_count(&{cnt}, slot, pkt->len);"]
    if st.default == "next":  # a packet that goes on is not decided here
        body += ["\tif (verdict != EBP_NEXT)", f"\t\tEBP_TRACE_SET({idx}, slot);"]
    else:
        body += [f"\tEBP_TRACE_SET({idx}, slot);"]
    body += ["\treturn verdict;"]
    if frags and st.fragments != "drop":
        body += ["bad_frag:",
                 f"\tebp_count(&{cnt}, {fs['bad']}, pkt->len);",
                 f"\tEBP_TRACE_SET({idx}, {fs['bad']});",
                 "\treturn EBP_V_DROP;"]
    out.functions.append("\n".join([
        classifier,
        "",
        f"/* filter '{st.name}' ({plan.form}): first matching rule wins; otherwise "
        f"{st.default}; malformed packets: {st.malformed}; IP fragments: "
        f"{st.fragments if frags else 'classified like any packet (no ports read)'} */",
        f"static __always_inline int stage_{idx}_filter(EBP_CTX *ctx, struct ebp_pkt *pkt, "
        "int malformed)",
        "{",
        *body,
        "}",
    ]))


class FilterGen(StageGen):
    """The filter kind in the code generator's registry: its plan comes from the program
    being generated (``GeneratedProgram.filters``), else from the spec's rules."""
    kind = "filter"

    def emit(self, idx: int, st: FilterStage, out: Emit) -> None:
        p = out.prog.filters.get(st.name)
        if p is None:  # no plan given: the spec's rules, ids in order
            ct = compile_table(st.rules, range(len(st.rules)), name=st.name,
                               layout=out.prog.user_layout, choice=st.classifier)
            out.prog.filters[st.name] = p = ct.plan
            out.prog.compiled_filters[st.name] = ct
        emit(idx, st, p, out.prog.user_layout, out)

    def features(self, st: FilterStage, protocols) -> Features:
        return rule_features(st.rules, protocols)


GENERATORS = {"filter": FilterGen()}
