"""The filter's rule-set compiler: layouts agree with filter.h, boxes mean first-match, the
decision tree finds what the boxes say, plans choose and keep forms as documented."""

from __future__ import annotations

import ipaddress
import random
import re
import struct
import subprocess
import time
from pathlib import Path

import pytest

import ebplane.stages.filter as filter_pkg
from ebplane.codegen.p4c import USER_BYTES, user_layout
from ebplane.errors import UsageError
from ebplane.spec import Rule, parse_rule
from ebplane.spec.protocol_set import parser_graph
from ebplane.stages.filter import gen as filter_gen, model, plan, tree
from ebplane.toolchain import clang
from ebplane.stages.filter.model import ACT_DROP, ACT_PASS, Match, compile_boxes, match_packet

FILTER_H = Path(filter_pkg.__file__).parent / "filter.h"


def net(text: str):
    return ipaddress.ip_network(text)


# -- layout -----------------------------------------------------------------------------------

def _clang_check(tmp_path: Path, lines: list[str]) -> subprocess.CompletedProcess:
    src = tmp_path / "check.c"
    src.write_text("\n".join(lines) + "\n")
    flags = [f"-I{d}" for d in clang.INCLUDE_DIRS] + clang._arch_include()
    return subprocess.run(["clang-19", "-fsyntax-only", "-target", "bpf", *flags, str(src)],
                          capture_output=True, text=True)


def test_filter_h_takes_its_constants_and_structs_from_python(tmp_path: Path):
    """filter.h declares none of what the control plane shares with it: without the
    generator's #defines and structs it stops with #error; with them clang agrees with the
    codecs (sizes, offsets) and the constants keep their C types."""
    # the generator defines the parse-info size before any header (codegen.p4c.USER_BYTES)
    base = [f"#define EBP_USER_BYTES {USER_BYTES}"]
    res = _clang_check(tmp_path, base + [f'#include "{FILTER_H}"'])
    assert res.returncode != 0 and "needs the #defines and structs" in res.stderr
    box_offsets = {"lo": 0, "hi": 8 * model.NDIMS, "user_mask": 16 * model.NDIMS,
                   "user_value": 16 * model.NDIMS + 16, "user_need": 16 * model.NDIMS + 32,
                   "rule": 16 * model.NDIMS + 36}
    lines = base + ['#include "ebplane.h"', "#include <stddef.h>"]
    lines += [f"#define {k} {v}" for k, v in filter_gen.c_defines().items()]
    lines += [t.c() for t in filter_gen.LAYOUTS]
    lines += [f'#include "{FILTER_H}"',
              f"_Static_assert(sizeof(struct ebp_flt_box) == {model.BOX.size}, \"box\");",
              f"_Static_assert(sizeof(struct ebp_flt_node) == {tree.NODE_DTYPE.itemsize}, \"node\");",
              f"_Static_assert(sizeof(struct ebp_flt_rule) == {model.RULE.size}, \"rule\");",
              # the root is a __u32 compared with EBP_FLT_EMPTY: an unsigned int, not a long
              "_Static_assert(__builtin_types_compatible_p(__typeof__(EBP_FLT_EMPTY), "
              "unsigned int), \"empty\");"]
    for name, (_, off) in tree.NODE_DTYPE.fields.items():
        lines.append(f"_Static_assert(offsetof(struct ebp_flt_node, {name}) == {off}, \"{name}\");")
    for name, off in box_offsets.items():
        lines.append(f"_Static_assert(offsetof(struct ebp_flt_box, {name}) == {off}, \"{name}\");")
    consts = {"EBP_FLT_DIMS": model.NDIMS, "EBP_FLT_EMPTY": 0xFFFFFFFF,
              "EBP_ACT_PASS": ACT_PASS, "EBP_ACT_DROP": ACT_DROP}
    consts.update({f"EBP_D_{d.upper()}": i for i, d in enumerate(model.DIMS)})
    for k, v in consts.items():
        lines.append(f"_Static_assert({k} == {v}u, \"{k}\");")
    res = _clang_check(tmp_path, lines)
    assert res.returncode == 0, res.stderr
    # every shared name the header uses is one the generator defines (a name only a macro
    # uses would otherwise fail late, in the first program that expands it)
    text = FILTER_H.read_text()
    own = set(re.findall(r"#define (\w+)", text))
    used = set(re.findall(r"\b(EBP_(?:D|FLT|ACT)_\w+)", text)) - own
    assert used and used <= set(filter_gen.c_defines()), used - set(filter_gen.c_defines())
    assert not re.search(r"^(struct|enum) ebp_flt_(rule|box|node|dim) \{", text, re.M)


# -- boxes mean first match -------------------------------------------------------------------

V4_NETS = ["0.0.0.0/0", "198.18.0.0/15", "198.18.0.0/16", "198.18.4.0/22", "198.18.5.0/24",
           "198.18.5.16/28", "198.18.5.17/32", "198.19.0.0/16", "198.19.128.0/17"]
V6_NETS = ["::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:2::/64",
           "2001:db8:1:2::17/128", "2001:db8:8000::/33", "2001:db8:1:2:8000::/65"]
PORTS = [0, 1, 22, 23, 53, 79, 80, 81, 443, 1023, 1024, 8080, 65534, 65535]


def random_ports(rng: random.Random) -> tuple[int, int]:
    a, b = sorted((rng.choice(PORTS), rng.choice(PORTS)))
    return (a, a) if rng.random() < 0.4 else (a, b)


def random_rule(rng: random.Random) -> Rule:
    family = rng.choice([0, 0, 4, 4, 6])
    pools = {4: V4_NETS, 6: V6_NETS}
    src = dst = None
    if family:
        if rng.random() < 0.7:
            src = net(rng.choice(pools[family]))
        if src is None or rng.random() < 0.4:
            dst = net(rng.choice(pools[family]))
    with_ports = rng.random() < 0.5
    if with_ports:
        proto = rng.choice([None, 6, 17])
    else:
        proto = rng.choice([None, None, 0, 6, 17, 47, 1 if family != 6 else 58])
    sport = random_ports(rng) if with_ports and rng.random() < 0.5 else None
    dport = random_ports(rng) if with_ports and (sport is None or rng.random() < 0.5) else None
    vlan = rng.choice([10, 20]) if rng.random() < 0.25 else None
    return Rule(rng.choice(["pass", "drop"]), src=src, dst=dst, proto=proto, sport=sport,
                dport=dport, vlan=vlan)


def address_in(rng: random.Random, network) -> bytes:
    host = rng.randrange(min(network.num_addresses, 1 << 62)) if rng.random() < 0.5 else 0
    return network[host].packed


def random_packet(rng: random.Random, rules: list[Rule]) -> dict:
    """A random packet, often built to hit (or just miss) one of the rules."""
    base = rng.choice(rules) if rules and rng.random() < 0.7 else None
    family = base.family if base is not None and base.family else rng.choice([0, 4, 4, 6, 6])
    pkt: dict = {"family": family}
    if family:
        pools = V4_NETS if family == 4 else V6_NETS
        for side in ("src", "dst"):
            target = getattr(base, side, None) if base is not None else None
            pkt[side] = address_in(rng, target if target is not None and rng.random() < 0.9
                                   else net(rng.choice(pools[1:])))
        proto = base.proto if base is not None and base.proto is not None and \
            rng.random() < 0.9 else rng.choice([0, 6, 17, 1, 58, 47])
        pkt["proto"] = proto
        pkt["has_l4"] = proto in (6, 17) and rng.random() < 0.9  # else a later fragment
        for side in ("sport", "dport"):
            ports = getattr(base, side, None) if base is not None else None
            if ports is not None and rng.random() < 0.8:
                pkt[side] = rng.choice([ports[0], ports[1], rng.randint(*ports)])
            else:
                pkt[side] = rng.choice(PORTS + [rng.randrange(65536)])
        if not pkt["has_l4"]:
            pkt["sport"] = pkt["dport"] = 0
    if rng.random() < 0.4:
        pkt["has_vlan"] = True
        pkt["vlan"] = base.vlan if base is not None and base.vlan and rng.random() < 0.8 \
            else rng.choice([10, 20, 30, 4095])
    return pkt


def first_match(rules: list[Rule], ids, pkt: dict) -> Match | None:
    """The definition: the first rule all of whose fields hold."""
    family = pkt.get("family", 0)
    for prio, rule in enumerate(rules):
        if rule.family and rule.family != family:
            continue
        if rule.src is not None and ipaddress.ip_address(pkt["src"]) not in rule.src:
            continue
        if rule.dst is not None and ipaddress.ip_address(pkt["dst"]) not in rule.dst:
            continue
        if rule.proto is not None and (family not in (4, 6) or pkt["proto"] != rule.proto):
            continue
        if rule.sport is not None or rule.dport is not None:
            if not pkt.get("has_l4") or pkt["proto"] not in (6, 17):
                continue
            if rule.sport is not None and not rule.sport[0] <= pkt["sport"] <= rule.sport[1]:
                continue
            if rule.dport is not None and not rule.dport[0] <= pkt["dport"] <= rule.dport[1]:
                continue
        if rule.vlan is not None and (not pkt.get("has_vlan") or pkt["vlan"] != rule.vlan):
            continue
        return Match(prio, ids[prio], ACT_DROP if rule.action == "drop" else ACT_PASS)
    return None


def test_boxes_and_tree_equal_first_match_on_random_rules_and_packets():
    rng = random.Random(20261202)
    checked = hits = 0
    for _ in range(120):
        rules = [random_rule(rng) for _ in range(rng.randint(1, 120))]
        ids = rng.sample(range(10000), len(rules))
        boxes = compile_boxes(rules, ids)
        binth = rng.choice([1, 4, 8])
        t = tree.build(boxes, binth=binth)
        f = tree.build_forest(boxes, binth=binth)
        assert t.depth <= tree.MAX_DEPTH and t.max_leaf <= tree.MAX_LEAF
        assert len(f.trees) <= tree.MAX_TREES and f.min_prio == sorted(f.min_prio)
        for _ in range(30):
            pkt = random_packet(rng, rules)
            expected = first_match(rules, ids, pkt)
            assert model.match_boxes(boxes, pkt) == expected, (rules, pkt)
            key, user, valid = model.packet_key(pkt)
            found = tree.lookup(t, boxes, key, user, valid)
            assert (Match(found.prio, found.rule_id, found.action) if found else None) == \
                expected, (rules, pkt)
            found = tree.forest_lookup(f, boxes, key, user, valid)
            assert (Match(found.prio, found.rule_id, found.action) if found else None) == \
                expected, (rules, pkt)
            checked += 1
            hits += expected is not None
    assert checked == 3600
    assert hits > checked // 3  # the generator really exercises matches, not only misses


def test_match_packet_semantics():
    rules = [Rule("drop", dport=(53, 53)), Rule("pass", vlan=10),
             Rule("drop", src=net("198.18.0.0/24"))]
    v4 = {"family": 4, "src": bytes([198, 18, 0, 9]), "dst": bytes(4), "proto": 17,
          "sport": 1, "dport": 53, "has_l4": True}
    assert match_packet(rules, v4) == Match(0, 0, ACT_DROP)
    # a later fragment has no ports: the port rule cannot match, the address rule does
    assert match_packet(rules, {**v4, "has_l4": False, "dport": 0}) == Match(2, 2, ACT_DROP)
    assert match_packet(rules, {**v4, "dport": 54, "vlan": 10}) == Match(2, 2, ACT_DROP)
    assert match_packet(rules, {**v4, "dport": 54, "vlan": 10, "has_vlan": True}) == \
        Match(1, 1, ACT_PASS)
    # an IPv4 rule never matches IPv6, even when the first bytes agree
    v6 = {**v4, "family": 6, "src": bytes([198, 18, 0, 9]) + bytes(12), "dport": 54}
    assert match_packet(rules, v6) is None
    # proto rules never match non-IP packets, the match-all rule does
    assert match_packet([Rule("drop", proto=0), Rule("pass")], {"family": 0}) == \
        Match(1, 1, ACT_PASS)


def test_user_fields_become_boxes_of_blocks():
    protocols = ("ethernet", "ipv4", "udp", "vxlan")
    layout = user_layout(parser_graph(protocols), ["vxlan.vni", "ipv4.ttl"])
    rules = [parse_rule(r, protocols=protocols) for r in (
        {"match": {"vxlan.vni": 0x123456}, "action": "drop"},
        {"match": {"ipv4.ttl": "1-3"}, "action": "drop"},
        {"match": {"vxlan.vni": "0x100/0xff00", "ipv4.ttl": 64}, "action": "pass"},
    )]
    boxes = compile_boxes(rules, [0, 1, 2], layout)
    assert [b.prio for b in boxes] == [0, 1, 1, 2]  # ttl 1-3: blocks 1/0xff and 2/0xfe

    def pkt(ttl=None, vni=None):
        user = bytearray(16)
        valid = 0
        if ttl is not None:
            user[0] = ttl
            valid |= 1
        if vni is not None:
            user[1:4] = vni.to_bytes(3, "big")
            valid |= 2
        return {"family": 4, "user": bytes(user), "user_valid": valid}

    t = tree.build(boxes, binth=1)
    for p, want in ((pkt(64, 0x123456), 0), (pkt(3, 0x1), 1), (pkt(4, 0x1), None),
                    (pkt(64, 0x1AB), 2), (pkt(64), None), (pkt(vni=0x123456), 0)):
        m = model.match_boxes(boxes, p)
        assert (m.prio if m else None) == want, p
        key, user, valid = model.packet_key(p)
        found = tree.lookup(t, boxes, key, user, valid)
        assert (found.prio if found else None) == want, p
    with pytest.raises(UsageError, match="does not extract"):
        compile_boxes(rules, [0, 1, 2])


# -- the tree's bounds ------------------------------------------------------------------------

def test_tree_is_bounded_on_many_prefix_lengths_and_ranges():
    """Every prefix length and many unaligned port ranges (what tuple space search needed
    hundreds of probes for): the walk stays within its bounds."""
    rng = random.Random(7)
    rules = []
    for i in range(3000):
        plen = rng.randint(15, 32)
        base = 0xC6120000 + rng.randrange(1 << 17)
        src = ipaddress.IPv4Network((base & ~((1 << (32 - plen)) - 1), plen))
        lo = rng.randrange(65536)
        rules.append(Rule(rng.choice(["pass", "drop"]), src=src, proto=rng.choice([6, 17]),
                          dport=(lo, min(65535, lo + rng.randrange(4000)))))
    boxes = compile_boxes(rules, range(len(rules)))
    t = tree.build(boxes)
    assert t.depth <= tree.MAX_DEPTH and t.max_leaf <= tree.MAX_LEAF
    for _ in range(300):
        r = rng.choice(rules)
        pkt = {"family": 4, "src": r.src[rng.randrange(r.src.num_addresses)].packed,
               "dst": bytes(4), "proto": r.proto, "has_l4": True, "sport": 1,
               "dport": rng.randint(*r.dport)}
        key, user, valid = model.packet_key(pkt)
        found = tree.lookup(t, boxes, key, user, valid)
        assert (Match(found.prio, found.rule_id, found.action) if found else None) == \
            model.match_boxes(boxes, pkt)


def test_identical_rules_beyond_a_leaf_are_refused_clearly():
    protocols = ("ethernet", "ipv4", "udp", "vxlan")
    layout = user_layout(parser_graph(protocols), ["vxlan.vni"])
    rules = [parse_rule({"match": {"vxlan.vni": i}, "action": "drop"}, protocols=protocols)
             for i in range(tree.MAX_LEAF + 5)]
    with pytest.raises(UsageError, match="no field can split"):
        tree.build(compile_boxes(rules, range(len(rules)), layout))


# -- plans ------------------------------------------------------------------------------------

def test_plan_chooses_inline_for_few_rules_and_tree_beyond():
    few = [Rule("drop", dport=(53, 53))] * 3
    p = plan.compile_table(few, range(3), name="t").plan
    assert p.form == "inline" and len(p.inline) == 3 and "compiled into the program" in p.why
    many = [Rule("drop", src=ipaddress.IPv4Network((0xC6120000 + i, 32)))
            for i in range(plan.INLINE_MAX + 1)]
    ct = plan.compile_table(many, range(len(many)), name="t")
    assert ct.plan.form == "tree" and ct.plan.dims == ("family", "src_hi")
    assert ct.plan.boxes >= len(many) and ct.plan.to_dict()["form"] == "tree"
    # the spec can force either form
    assert plan.compile_table(few, range(3), name="t", choice="tree").plan.form == "tree"
    assert plan.compile_table(many, range(len(many)), name="t", choice="inline").plan.form \
        == "inline"


def test_plan_keeps_the_running_arrays_while_the_rules_fit():
    rules = [Rule("drop", src=ipaddress.IPv4Network((0xC6120000 + i, 32))) for i in range(40)]
    first = plan.compile_table(rules, range(40), name="t").plan
    more = rules + [Rule("pass", src=ipaddress.IPv4Network((0xC6130000, 32)))]
    same = plan.compile_table(more, range(41), name="t", running=first).plan
    assert same.same_code(first)  # one more rule: a map update
    # a rule on a new field needs a program that compares it
    vlan = more + [Rule("drop", vlan=7)]
    other = plan.compile_table(vlan, range(42), name="t", running=first).plan
    assert not other.same_code(first) and "vlan" in other.dims
    # a rule set that outgrows the arrays is planned anew, with room
    big = [Rule("drop", src=ipaddress.IPv4Network((0xC6120000 + i, 32))) for i in range(500)]
    grown = plan.compile_table(big, range(500), name="t", running=first).plan
    assert not grown.same_code(first) and grown.boxes >= 500
    # inline plans are their rules: any change is a new program
    a = plan.compile_table(rules[:3], range(3), name="t").plan
    assert a.same_code(plan.compile_table(rules[:3], range(3), name="t").plan)
    assert not a.same_code(plan.compile_table(rules[:2], range(2), name="t").plan)


def test_tree_build_time_grows_about_linearly():
    """10x the rules take well under 40x the time (a ratio measured in one run, best of two
    builds each: a 4k-rule build lasts a few hundredths of a second, so noise matters)."""
    rng = random.Random(3)

    def acl(n):
        out = []
        for _ in range(n):
            plen = rng.choice([16, 20, 24, 28, 32])
            base = 0xC6120000 + rng.randrange(1 << 17)
            lo = rng.choice([0, 1024, 80, 443, 6000])
            out.append(Rule("drop", src=ipaddress.IPv4Network(
                (base & ~((1 << (32 - plen)) - 1), plen)), proto=6,
                dport=(lo, lo if rng.random() < 0.5 else min(65535, lo + 63))))
        return out
    times = {}
    for n in (4_000, 40_000):
        boxes = compile_boxes(acl(n), range(n))
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            t = tree.build(boxes)
            best = min(best, time.perf_counter() - start)
        times[n] = best
        assert t.depth <= tree.MAX_DEPTH
    print(f"tree build: 4k rules {times[4000]:.2f} s, 40k rules {times[40000]:.2f} s")
    assert times[40_000] < 40 * times[4_000]


def test_partitions_keep_wide_rules_out_of_narrow_trees():
    """Rules that leave the addresses wide do not share a tree with host rules: without the
    partition every wide rule is copied into every leaf the host rules split the space into."""
    rules = [Rule("drop", src=ipaddress.IPv4Network((0xC6120000 + 256 * i, 24)), proto=6,
                  dport=(80, 80)) for i in range(300)]
    rules += [Rule("pass", proto=6, dport=(p, p)) for p in range(1000, 1100)]
    boxes = compile_boxes(rules, range(len(rules)))
    one = tree.build(boxes)
    forest = tree.build_forest(boxes)
    assert len(forest.trees) == 2
    assert forest.leaf <= len(one.leaf)
    assert [len(t.leaf) for t in forest.trees][1] == 100  # the wide rules: no copies
