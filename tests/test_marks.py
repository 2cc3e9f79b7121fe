"""Rule actions `mark:` and `class:`: the skb mark and priority a passing rule sets, at TC
directly and from XDP through the metadata area (a generated TC program copies them to the
skb).  Spec validation, the skb a TC program leaves (BPF_PROG_TEST_RUN's ctx_out), and a lab
where `ip rule fwmark` routes the marked flow out of another interface than the unmarked one."""

from __future__ import annotations

import json

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from pipeline_fixtures import ebp_env, mac, send_frames, write_spec  # noqa: F401
from ebplane.errors import SpecError
from ebplane.kernel.libbpf import SkBuff
from ebplane.net import netns as nsmod
from ebplane.runtime import pipeline
from ebplane.runtime.build import build
from ebplane.codegen.pipeline import spec_features
from ebplane.spec import Rule, parse_spec
from ebplane.stages.filter.model import ACT_CLASS, ACT_MARK, match_packet, address_bytes

PROTOS = ["ethernet", "ipv4", "udp"]


def rule(**kw) -> Rule:
    return Rule.from_dict(kw, protocols=PROTOS)


def test_mark_and_class_parse_and_round_trip():
    r = rule(dst="198.18.9.0/24", proto="udp", dport=5000, action="pass", mark=7,
             **{"class": "1:10"})
    assert r.mark == 7 and r.klass == 0x10010
    assert r.to_dict()["class"] == "1:10"
    assert Rule.from_dict(r.to_dict(), protocols=PROTOS) == r
    assert rule(action="pass", **{"class": 65537}).klass == 65537


@pytest.mark.parametrize("bad, words", [
    ({"action": "drop", "mark": 1}, "not to action: drop"),
    ({"action": "pass", "mark": -1}, "out of range"),
    ({"action": "pass", "mark": 1 << 32}, "out of range"),
    ({"action": "pass", "class": "1-10"}, "invalid class"),
    ({"action": "pass", "class": "12345:1"}, "invalid class"),
])
def test_bad_marks_refused(bad, words):
    with pytest.raises(SpecError) as e:
        rule(**bad)
    assert words in str(e.value)


def test_reference_matcher_carries_the_flags():
    rules = [rule(proto="udp", dport=5000, action="pass", mark=7),
             rule(proto="udp", action="pass")]
    f = {"family": 4, "proto": 17, "has_l4": True, "dport": 5000,
         "src": address_bytes("198.18.0.1"), "dst": address_bytes("198.18.9.1")}
    assert match_packet(rules, f).action == ACT_MARK
    assert match_packet(rules, {**f, "dport": 6000}).action == 0
    assert ACT_CLASS != ACT_MARK


def _spec(hook: str, ns: str = "", classifier: str = "auto", iface: str = "veth0") -> str:
    return (f"pipeline: mk\nhook: {hook}\n" + (f"netns: {ns}\n" if ns else "") +
            f"interfaces: [{iface}]\nprotocols: [ethernet, ipv4, udp]\nstages:\n"
            f"  - filter:\n      name: acl\n      classifier: {classifier}\n"
            "      default: next\n      rules:\n"
            "        - {dst: 198.18.9.0/24, proto: udp, dport: 5000, action: pass, mark: 7,"
            " class: \"1:10\"}\n"
            "        - {dst: 198.18.9.0/24, proto: udp, dport: 5001, action: drop}\n")


def _frame(dport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                 IP(src="198.18.0.1", dst="198.18.9.1", ttl=64) / UDP(sport=40000, dport=dport) /
                 (b"x" * 32))


@pytest.mark.parametrize("classifier", ["inline", "tree"])
@pytest.mark.parametrize("hook", ["tc-ingress", "tc-egress"])
def test_tc_program_sets_mark_and_priority(hook, classifier):
    spec = parse_spec(_spec(hook, classifier=classifier), "mk.yaml")
    built = build(spec, spec_features(spec))
    try:
        built.install_spec_rules()
        assert built.tc_marks is None  # at TC the stage marks the skb itself
        res = built.program.test_run(_frame(5000), ctx=SkBuff(len=0))
        out = SkBuff.from_buffer_copy(res.ctx)
        assert (res.verdict, out.mark, out.priority) == ("TC_ACT_OK", 7, 0x10010)
        res = built.program.test_run(_frame(6000), ctx=SkBuff(len=0, mark=3))
        assert SkBuff.from_buffer_copy(res.ctx).mark == 3  # no rule: left as it was
        assert built.program.test_run(_frame(5001), ctx=SkBuff()).verdict == "TC_ACT_SHOT"
    finally:
        built.close()


def test_xdp_pipeline_with_marks_gets_a_tc_program():
    spec = parse_spec(_spec("xdp"), "mk.yaml")
    built = build(spec, spec_features(spec))
    try:
        assert built.tc_marks is not None and built.tc_marks.type_name == "sched_cls"
        assert "ebp_marks" in built.obj.maps
    finally:
        built.close()
    plain = parse_spec(_spec("xdp").replace(", mark: 7, class: \"1:10\"", ""), "mk.yaml")
    built = build(plain, spec_features(plain))
    try:
        assert built.tc_marks is None  # no rule marks: nothing at TC
    finally:
        built.close()


# -- lab: ip rule fwmark ------------------------------------------------------------------------

def _tx(ns: str, dev: str) -> int:
    out = nsmod.run(ns, ["ip", "-j", "-s", "link", "show", dev]).stdout
    return json.loads(out)[0]["stats64"]["tx"]["packets"]


@pytest.fixture
def router(netns):  # noqa: F811
    """One namespace: frames written to veth1 arrive on veth0 (the pipeline's interface) and
    are routed to 198.18.9.1: out of via_main normally, out of via_mark (table 100) when the
    skb has mark 7."""
    ns = netns
    cmds = [["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
            ["ip", "link", "add", "via_main", "type", "veth", "peer", "name", "pm"],
            ["ip", "link", "add", "via_mark", "type", "veth", "peer", "name", "pk"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"],
            ["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]]
    for dev in ("veth0", "veth1", "via_main", "pm", "via_mark", "pk"):
        cmds += [["ip", "link", "set", dev, "up"],
                 ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"],
                 ["sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0"]]
    cmds += [["ip", "addr", "add", "198.18.0.2/24", "dev", "veth0"],
             ["ip", "addr", "add", "198.18.1.1/24", "dev", "via_main"],
             ["ip", "addr", "add", "198.18.2.1/24", "dev", "via_mark"],
             ["ip", "route", "add", "198.18.9.0/24", "via", "198.18.1.2", "dev", "via_main"],
             ["ip", "route", "add", "198.18.9.0/24", "via", "198.18.2.2", "dev", "via_mark",
              "table", "100"],
             ["ip", "rule", "add", "fwmark", "7", "lookup", "100", "pref", "100"],
             ["ip", "neigh", "add", "198.18.1.2", "lladdr", "02:00:00:00:01:02", "dev",
              "via_main", "nud", "permanent"],
             ["ip", "neigh", "add", "198.18.2.2", "lladdr", "02:00:00:00:02:02", "dev",
              "via_mark", "nud", "permanent"]]
    for c in cmds:
        nsmod.run(ns, c)
    return ns


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.parametrize("hook", ["xdp", "tc-ingress"])
def test_fwmark_routes_the_marked_flow(ebp_env, router, tmp_path, hook):  # noqa: F811
    ns = router
    res = pipeline.apply(write_spec(tmp_path / "mk.yaml", _spec(hook, ns)))
    hooks = sorted(a["hook"] for a in res.attachments)
    assert hooks == (["tc-ingress", "xdp"] if hook == "xdp" else ["tc-ingress"])
    try:
        src, dst = mac(ns, "veth1"), mac(ns, "veth0")

        def frame(dport: int) -> bytes:
            return bytes(Ether(src=src, dst=dst) / IP(src="198.18.0.1", dst="198.18.9.1") /
                         UDP(sport=40000, dport=dport) / (b"x" * 32))

        base = {d: _tx(ns, d) for d in ("via_main", "via_mark")}
        send_frames(ns, "veth1", [frame(5000)], 20)  # marked: table 100
        send_frames(ns, "veth1", [frame(6000)], 30)  # not marked: main table
        send_frames(ns, "veth1", [frame(5001)], 10)  # dropped by the rule
        got = {d: _tx(ns, d) - base[d] for d in base}
        assert got == {"via_main": 30, "via_mark": 20}
        [s] = pipeline.stats("mk")
        rules = [r["packets"] for r in s["stages"][0]["rules"]]
        assert rules == [20, 10]
        if hook == "xdp":
            assert s["marks"]["set_from_xdp"]["packets"] == 20
        else:
            assert "marks" not in s
    finally:
        pipeline.detach("mk")
    # detached: every flow takes the main table again
    base = _tx(ns, "via_main")
    send_frames(ns, "veth1", [frame(5000)], 5)
    assert _tx(ns, "via_main") - base == 5
