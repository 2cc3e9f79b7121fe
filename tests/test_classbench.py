"""The ClassBench-style rule-set generator (``ebplane.bench.classbench``), its first-match
reference, its nftables encoding, replay of generated traces through the classifier in
force, and the ``classbench`` benchmark section."""

from __future__ import annotations

import ipaddress
import json
import random
import time

import pytest

from pipeline_fixtures import ebp_module_env  # noqa: F401  (fixture)
from ebplane.bench import classbench as cb
from ebplane.errors import UsageError
from ebplane.spec import parse_rule

PROTOCOLS = {4: ("ethernet", "ipv4", "tcp", "udp", "icmp"),
             6: ("ethernet", "ipv6", "tcp", "udp", "icmpv6")}
MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02")


def share(hist: dict, keys) -> float:
    total = sum(hist.values())
    return sum(v for k, v in hist.items() if k in keys) / total


# -- the generator ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", (4, 6))
@pytest.mark.parametrize("kind", cb.KINDS)
def test_deterministic_per_seed(kind, family):
    a = cb.generate(300, kind=kind, family=family, seed=7)
    assert a == cb.generate(300, kind=kind, family=family, seed=7)
    assert a != cb.generate(300, kind=kind, family=family, seed=8)
    # a smaller set is not simply a prefix of a bigger one, but each size is reproducible
    assert cb.generate(10, kind=kind, family=family, seed=7) == \
        cb.generate(10, kind=kind, family=family, seed=7)


@pytest.mark.parametrize("n", [s for s in cb.SIZES if s <= 10_000])
def test_sizes(n):
    for family in (4, 6):
        rules = cb.generate(n, kind="acl", family=family)
        assert len(rules) == n
        boxes = {tuple(sorted((k, v) for k, v in r.items() if k != "action")) for r in rules}
        assert len(boxes) == n  # distinct match boxes
    with_final = cb.generate(n, kind="fw", family=4, final="drop")
    assert len(with_final) == n and with_final[-1] == {"action": "drop"}


@pytest.mark.slow
def test_size_100k():
    rules = cb.generate(100_000, kind="acl", family=4)
    assert len(rules) == 100_000
    assert len({json.dumps(r, sort_keys=True) for r in rules}) == 100_000


@pytest.mark.parametrize("family", (4, 6))
@pytest.mark.parametrize("kind", (*cb.KINDS, "low-shape"))
def test_every_rule_is_accepted_by_the_spec(kind, family):
    trees = cb.V4_TREES if family == 4 else cb.V6_TREES
    for i, r in enumerate(cb.generate(1000, kind=kind, family=family, seed=3)):
        rule = parse_rule(r, protocols=PROTOCOLS[family], where=f"rule {i}")
        assert rule.to_dict() == r  # already in the canonical form, wildcards omitted
        for net in (rule.src, rule.dst):
            assert net is None or (net.version == family and net.subnet_of(trees)), r
        assert rule.src is not None or rule.dst is not None or rule.dport is not None, r
        if rule.sport or rule.dport:
            assert r["proto"] in ("tcp", "udp"), r  # never ports with icmp / any
        assert r["action"] in ("drop", "pass")


def test_distributions_differ_by_seed_type():
    st = {k: cb.stats(cb.generate(3000, kind=k, family=4, seed=1)) for k in cb.KINDS}
    # acl: destinations mostly hosts; sources spread over many lengths
    assert share(st["acl"]["dst_len"], {32}) > 0.5
    assert share(st["acl"]["dst_len"], {32}) > share(st["fw"]["dst_len"], {32}) + 0.1
    assert len(st["acl"]["src_len"]) >= 14
    # fw: more wildcards
    for f in ("src_len", "dst_len"):
        assert share(st["fw"][f], {0}) > share(st["acl"][f], {0}) + 0.15
    assert share(st["fw"]["dport"], {"any"}) > share(st["acl"]["dport"], {"any"}) + 0.1
    # ipc: in between, and the only one with many exact and low source ports
    assert share(st["acl"]["src_len"], {0}) < share(st["ipc"]["src_len"], {0}) < \
        share(st["fw"]["src_len"], {0})
    assert share(st["ipc"]["sport"], {"exact", "low"}) > \
        share(st["acl"]["sport"], {"exact", "low"}) + 0.05
    for k in cb.KINDS:  # every port class and both actions occur
        assert set(st[k]["dport"]) == set(cb.PORT_CLASSES), (k, st[k]["dport"])
        assert set(st[k]["action"]) == {"drop", "pass"}
        assert {"tcp", "udp", "icmp"} <= set(st[k]["proto"])
    low = cb.stats(cb.generate(3000, kind="low-shape", family=4))
    assert len(low["src_len"]) <= 3 and len(low["dst_len"]) <= 2
    assert set(low["sport"]) == {"any"} and set(low["dport"]) <= {"any", "exact"}


def test_prefixes_nest_and_overlap():
    rules = cb.generate(1000, kind="acl", family=4)
    nets = [ipaddress.ip_network(r["src"]) for r in rules if "src" in r]
    hosts = [n for n in nets if n.prefixlen == 32]
    covering = sum(1 for h in hosts[:200] if any(h != n and h.subnet_of(n) for n in nets))
    assert covering > 100  # most host prefixes sit inside a shorter prefix of another rule


# -- the reference ------------------------------------------------------------------------------

def pkt(src, dst, proto="tcp", sport=40000, dport=80):
    family = ipaddress.ip_address(src).version
    return {"family": family, "src": src, "dst": dst, "proto": proto, "sport": sport,
            "dport": dport}


def test_reference_first_match():
    rules = [
        {"src": "198.18.1.0/24", "proto": "tcp", "dport": "1000-2000", "action": "drop"},  # 0
        {"src": "198.18.1.0/24", "action": "pass"},                                        # 1
        {"dst": "198.18.2.2/32", "dport": 53, "action": "drop"},  # 2: ports, no proto
        {"proto": "icmp", "action": "drop"},                                               # 3
        {"src": "2001:db8::/32", "action": "drop"},                                        # 4
        {"sport": "0-1023", "proto": "udp", "action": "pass"},                            # 5
    ]
    assert cb.expected_rule(rules, pkt("198.18.1.5", "198.18.9.9", dport=1500)) == 0
    assert cb.expected_rule(rules, pkt("198.18.1.5", "198.18.9.9", dport=2001)) == 1
    assert cb.expected_rule(rules, pkt("198.18.1.5", "198.18.9.9", "udp", dport=1500)) == 1
    assert cb.expected_rule(rules, pkt("198.18.3.3", "198.18.2.2", "udp", dport=53)) == 2
    assert cb.expected_rule(rules, pkt("198.18.3.3", "198.18.2.2", "tcp", dport=53)) == 2
    # icmp carries no ports: the dport rule cannot match it, the proto rule does
    assert cb.expected_rule(rules, pkt("198.18.3.3", "198.18.2.2", "icmp", 53, 53)) == 3
    assert cb.expected_rule(rules, pkt("2001:db8::1", "2001:db8::2", "icmp")) == 4
    assert cb.expected_rule(rules, pkt("198.18.3.3", "198.18.4.4", "udp", sport=1023)) == 5
    assert cb.expected_rule(rules, pkt("198.18.3.3", "198.18.4.4", "udp", sport=1024)) is None
    assert cb.expected_rule(rules, pkt("198.18.3.3", "198.18.4.4", "tcp", sport=80)) is None
    assert cb.Reference(rules).verdict(pkt("198.18.1.5", "198.18.9.9")) == "XDP_PASS"
    assert cb.Reference(rules).verdict(pkt("198.19.0.1", "198.19.0.2"), "drop") == "XDP_DROP"


@pytest.mark.parametrize("family", (4, 6))
@pytest.mark.parametrize("kind", cb.KINDS)
def test_trace_expected_is_the_reference(kind, family):
    rules = cb.generate(500, kind=kind, family=family, seed=2)
    tr = cb.trace(rules, family=family, n=400, seed=5, miss_fraction=0.2)
    assert len(tr) == 400
    hits = [t for t in tr if t.picked is not None]
    assert len(hits) == 320
    for t in tr:
        assert t.expected == cb.expected_rule(rules, t.packet)
        assert t.packet["family"] == family
        cb.to_flow(t.packet)  # a valid 5-tuple
    for t in hits:  # inside the picked rule's box: the first match is that rule or earlier
        assert cb.expected_rule([rules[t.picked]], t.packet) == 0
        assert t.expected is not None and t.expected <= t.picked
    assert all(t.expected is None for t in tr if t.picked is None)
    # rules at every position are hit: each tenth of the list is picked
    assert {t.picked * 10 // len(rules) for t in hits} == set(range(10))
    if kind == "fw":  # wildcard-heavy: some picked rules are shadowed by earlier ones
        assert any(t.expected < t.picked for t in hits)


def test_late_hit_is_its_own_first_match():
    rules = cb.generate(1000, kind="fw", family=4, final="drop")
    t = cb.late_hit(rules, 4, random.Random(1), action="drop")
    assert t is not None and t.expected == t.picked and rules[t.picked]["action"] == "drop"
    assert len(rules) - 100 < t.picked < len(rules) - 1
    assert cb.expected_rule(rules, cb.miss_packet(4, random.Random(1))) == len(rules) - 1


# -- the nftables encoding, in the kernel -------------------------------------------------------

def _counter(ns: str, table: str, name: str) -> int:
    from ebplane.net import netns
    out = netns.run(ns, ["nft", "-j", "list", "counter", "netdev", table, name]).stdout
    return next(int(i["counter"]["packets"]) for i in json.loads(out)["nftables"]
                if "counter" in i)


@pytest.mark.kernel
@pytest.mark.parametrize("family", (4, 6))
def test_nft_encoding_decides_as_first_match(veth_pair, family):
    """The encoding loads (no overlapping set elements) and drops exactly the packets the
    reference drops: one frame at a time into veth1's netdev ingress chain."""
    from ebplane.lab.traffic import send
    from ebplane.net import iface, netns
    ns, tx, rx = veth_pair
    rules = cb.generate(1000, kind="acl", family=family, seed=4)
    enc = cb.nft_ruleset(rules, family=family, table="cbtest", device=rx, counter="d",
                         pass_counter="p")
    assert enc.sets > 0 and enc.rules < len(rules)
    netns.run(ns, ["nft", "-f", "-"], input=enc.text, timeout=60)
    ref = cb.Reference(rules)
    with netns.enter(ns):
        rx_mac = iface.info(rx).mac
    tr = cb.trace(rules, family=family, n=120, seed=1, miss_fraction=0.2)
    drops = passes = 0
    for t in tr:
        send(ns, tx, cb.to_flow(t.packet), dst_mac=rx_mac)
        deadline = time.monotonic() + 2
        while True:
            d, p = _counter(ns, "cbtest", "d"), _counter(ns, "cbtest", "p")
            if d + p > drops + passes or time.monotonic() > deadline:
                break
        want = ref.verdict(t.packet)
        assert (d - drops, p - passes) == ((1, 0) if want == "XDP_DROP" else (0, 1)), \
            (t, enc.text[:2000])
        drops, passes = d, p
    assert drops > 10 and passes > 10


# -- replay through the classifier in force ------------------------------------------------------

def _replay_agrees(rules: list[dict], family: int, n: int) -> None:
    """Build the one-filter pipeline (the rule-set compiler accepts every realistic set):
    every trace packet's decision is the reference's."""
    from ebplane.bench.classbench_run import ruleset_spec
    from ebplane.runtime.replay import Replayer
    rp = Replayer(ruleset_spec(rules, family))
    assert rp.built.gen.filters["acl"].form == ("inline" if len(rules) <= 32 else "tree")
    tr = cb.trace(rules, family=family, n=n, seed=9, miss_fraction=0.1)
    ref = cb.Reference(rules)
    with rp:
        for i, t in enumerate(tr):
            d = rp.run(i, cb.to_flow(t.packet).frame(*MACS))
            got = d.rule if d.reason == "rule" else None
            assert (got, d.verdict) == (t.expected, ref.verdict(t.packet)), (t, d.reason)
            assert d.reason in ("rule", "default"), d


@pytest.mark.kernel
@pytest.mark.parametrize("family", (4, 6))
def test_replay_low_shape_1k_agrees(ebp_module_env, family):
    """Low-shape variant (few prefix lengths, exact ports)."""
    _replay_agrees(cb.generate(1000, kind="low-shape", family=family, seed=1), family, 600)


@pytest.mark.kernel
@pytest.mark.parametrize("family", (4, 6))
@pytest.mark.parametrize("kind", cb.KINDS)
def test_replay_realistic_1k(ebp_module_env, kind, family):
    _replay_agrees(cb.generate(1000, kind=kind, family=family, seed=1), family, 600)


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.parametrize("family", (4, 6))
@pytest.mark.parametrize("kind", ("acl", "low-shape"))
def test_replay_10k(ebp_module_env, kind, family):
    _replay_agrees(cb.generate(10_000, kind=kind, family=family, seed=1), family, 2000)


# -- the bench section ---------------------------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.lab
def test_quick_bench_section(tmp_path):
    from ebplane.bench.report import markdown
    from ebplane.cli.main import main
    assert main(["bench", "--quick", "--sections", "classbench", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert list(doc["sections"]) == ["classbench"]
    sec = doc["sections"]["classbench"]
    rows = sec["cost"]
    assert [(r["kind"], r["family"], r["rules"]) for r in rows] == [
        (k, f, n) for k in ("acl", "low-shape") for f in (4, 6) for n in (10, 100)]
    for r in rows:
        assert "refused" not in r, r  # every realistic rule set is compiled
        assert r["agree"] and r["load_s"] > 0, r
        names = [p["packet"] for p in r["packets"]]
        assert names[0] == "miss" and "late-hit" in names
        for p in r["packets"]:
            assert p["ebplane"]["verdict"] == p["expected_verdict"]
            assert p["ratio_to_one_rule"] == pytest.approx(
                p["ebplane"]["ns_per_packet"]["median"] / p["one_rule"]["ns_per_packet"]["median"],
                abs=0.01)
        late = next(p for p in r["packets"] if p["packet"] == "late-hit")
        assert late["expected_rule"] >= r["rules"] // 2
    live = sec["live"]
    assert "mpps" in live["floor"]
    assert [v["variant"] for v in live["variants"]] == ["acl", "low-shape"]
    for v in live["variants"]:
        assert v["nft"]["rules"] > 0
        for t in v["traffic"]:
            assert t["expected_verdict"] == "XDP_DROP"
            by = {r["name"]: r for r in t["rows"]}
            assert "mpps" in by["nftables"], by["nftables"]
            assert "mpps" in by["ebplane"], by["ebplane"]
    low = live["variants"][1]
    assert all("mpps" in {r["name"]: r for r in t["rows"]}["ebplane"] for t in low["traffic"])
    md = (tmp_path / "bench.md").read_text()
    assert "## 6. ClassBench-style rule sets" in md
    assert md.strip() == markdown(doc).strip()
