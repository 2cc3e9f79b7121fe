"""Incremental edits of the tree form (ebplane.stages.filter.edit) against the reference:
after every add or delete, the edited arrays classify every packet as the first matching
rule of the new rule list does; and the compiled builder equals the numpy reference."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ebplane.bench import classbench as cb
from ebplane.bench.classbench_run import ruleset_spec
from ebplane.codegen.p4c import UserLayout
from ebplane.stages.filter import model, plan, tree
from ebplane.stages.filter.edit import PRIO_GAP, Mirror, NeedRebuild
from ebplane.stages.filter.model import compile_boxes
from test_filter_forms import first_match, random_packet, random_rule


def mirror_of(rules, ids) -> Mirror:
    ct = plan.compile_table(rules, ids, name="t", choice="tree")
    p = ct.plan
    return Mirror(p.nodes, p.leaf, p.boxes, 1, [model.D[d] for d in model.DIMS], True,
                  ct.tree, ct.boxes, prio_scale=PRIO_GAP)


def check(m: Mirror, rules, ids, rng, n=60) -> int:
    hits = 0
    for _ in range(n):
        pkt = random_packet(rng, rules)
        want = first_match(rules, ids, pkt)
        key, user, valid = model.packet_key(pkt)
        got = m.lookup(key, user, valid)
        assert (got.rule_id if got else None) == (want.rule_id if want else None), pkt
        hits += want is not None
    return hits


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_adds_and_deletes_agree_with_the_reference(seed):
    rng = random.Random(seed)
    rules = [random_rule(rng) for _ in range(300)]
    ids = list(range(300))
    next_id = 300
    m = mirror_of(rules, ids)
    incremental = rebuilt = hits = 0
    for step in range(150):
        op = rng.random()
        if op < 0.45 or len(rules) < 50:          # append (the usual `rules add`)
            pos = len(rules)
        elif op < 0.6:                             # insert somewhere
            pos = rng.randrange(len(rules) + 1)
        else:
            pos = None
        try:
            if pos is None:
                i = rng.randrange(len(rules))
                w = m.change([ids[i]], [], UserLayout())
                del rules[i], ids[i]
            else:
                r = random_rule(rng)
                before = ids[pos - 1] if pos > 0 else None
                after = ids[pos] if pos < len(ids) else None
                w = m.change([], [(next_id, r, before, after)], UserLayout())
                rules.insert(pos, r)
                ids.insert(pos, next_id)
                next_id += 1
            assert w.root != tree.EMPTY
            incremental += 1
        except NeedRebuild:
            # what the table does: a full install (here: a fresh mirror of the new rules)
            if pos is None:
                del rules[i], ids[i]
            else:
                rules.insert(pos, r)
                ids.insert(pos, next_id)
                next_id += 1
            m = mirror_of(rules, ids)
            rebuilt += 1
        hits += check(m, rules, ids, rng)
    assert incremental > 100 and hits > 1000
    print(f"{incremental} incremental edits, {rebuilt} full rebuilds")


def test_delete_of_a_covering_rule_uncovers_the_rules_it_hid():
    from ebplane.spec import Rule
    import ipaddress
    net = ipaddress.ip_network
    rules = [Rule("drop", src=net("198.18.0.0/16"))] + \
        [Rule("pass", src=net(f"198.18.{i // 256}.{i % 256}/32"), proto=17, dport=(53, 53))
         for i in range(200)]
    ids = list(range(len(rules)))
    m = mirror_of(rules, ids)
    pkt = {"family": 4, "src": bytes([198, 18, 0, 7]), "dst": bytes(4), "proto": 17,
           "has_l4": True, "sport": 1, "dport": 53}
    key, user, valid = model.packet_key(pkt)
    assert m.lookup(key, user, valid).rule_id == 0
    m.change([0], [], UserLayout())
    assert m.lookup(key, user, valid).rule_id == 8  # 198.18.0.7 is rule 1 + 7


@pytest.mark.parametrize("kind", ["acl", "fw", "ipc"])
def test_compiled_builder_equals_numpy_reference(kind):
    if tree.builder() != "c":
        pytest.fail("the compiled builder is not built: run ./scripts/setup")
    for family in (4, 6):
        rules = ruleset_spec(cb.generate(2000, kind=kind, family=family, seed=3),
                             family).stages[0].rules
        boxes = compile_boxes(rules, range(len(rules)))
        a = tree.build_forest(boxes, use="numpy")
        b = tree.build_forest(boxes, use="c")
        assert a.min_prio == b.min_prio and len(a.trees) == len(b.trees) > 1
        for x, y in zip(a.trees, b.trees):
            assert np.array_equal(x.nodes, y.nodes) and np.array_equal(x.leaf, y.leaf)
            assert (x.depth, x.max_leaf) == (y.depth, y.max_leaf)
    rng = random.Random(5)
    for _ in range(40):  # small random sets, several leaf sizes
        rules = [random_rule(rng) for _ in range(rng.randint(1, 150))]
        boxes = compile_boxes(rules, range(len(rules)))
        for binth in (1, 4, 8):
            x, y = tree.build(boxes, binth=binth, use="numpy"), tree.build(boxes, binth=binth, use="c")
            assert np.array_equal(x.nodes, y.nodes) and np.array_equal(x.leaf, y.leaf)
