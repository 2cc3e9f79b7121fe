"""apply / status / stats / detach on a veth pair in a throw-away namespace, with real frames.

Frames are written to veth1; the pipeline sits on veth0 (XDP or TC ingress), or on veth1's
egress, and counts them per rule.  Re-apply must keep rules and counters, a failed apply
must leave the previous pipeline running untouched, detach must leave nothing behind.
"""

from __future__ import annotations

import os

import pytest

from pipeline_fixtures import (cli, cli_json, dropped, ebp_env, filter_stats, mac,  # noqa: F401
                               rule_counts, send_frames, write_spec)
from ebplane.errors import AttachError, InterfaceNotFound, SpecError, UsageError
from ebplane.lab.traffic import Capture, Flow
from ebplane.net import attach as att
from ebplane.net import netns
from ebplane.runtime import pipeline
from ebplane.runtime.pipeline import RuleTable
from ebplane.runtime.state import PipelineState, pin_dir
from ebplane.spec import parse_rule

DNS = Flow("udp", "198.18.0.1", "198.18.0.2", 40000, 53)
WEB = Flow("tcp", "198.18.0.1", "198.18.0.2", 40001, 80)
SSH6 = Flow("tcp", "2001:db8::1", "2001:db8::2", 40002, 22)
OTHER = Flow("udp", "198.18.0.1", "198.18.0.2", 40003, 9)

RULES = """\
        - {dst: 198.18.0.2, proto: udp, dport: 53, action: drop}
        - {dst: 198.18.0.2, proto: tcp, dport: 80, action: pass}
        - {dst: "2001:db8::/32", proto: tcp, dport: "22-23", action: drop}
"""


def spec_text(ns: str, *, interfaces: str = "[veth0]", hook: str = "xdp", rules: str = RULES,
              extra: str = "") -> str:
    mode = "mode: native\n" if hook == "xdp" else ""
    return (f"pipeline: ap\nhook: {hook}\n{mode}netns: {ns}\ninterfaces: {interfaces}\n"
            f"protocols: [ethernet, vlan, ipv4, ipv6, tcp, udp]\nstages:\n"
            f"  - filter:\n      name: acl\n      default: next\n{extra}      rules:\n{rules}"
            f"  - count: {{}}\n")


def frames_to(ns: str, flows_counts: dict[Flow, int], ifname: str = "veth1",
              dst_ifname: str = "veth0") -> None:
    src, dst = mac(ns, ifname), mac(ns, dst_ifname)
    for flow, n in flows_counts.items():
        send_frames(ns, ifname, [flow.frame(src, dst)], n)


def stats_of(name: str = "ap") -> dict:
    return pipeline.stats(name)[0]


def xdp_prog(ns: str, ifname: str = "veth0") -> dict:
    with netns.enter(ns):
        return att.query_xdp(ifname)


def test_apply_status_stats_with_real_frames(ebp_env, veth_pair, tmp_path):
    ns, _, _ = veth_pair
    spec = write_spec(tmp_path / "ap.yaml", spec_text(ns))
    res = cli_json("apply", str(spec))
    assert res["created"] is True and res["rules"] == {"acl": 3}
    [a] = res["attachments"]
    assert (a["ifname"], a["hook"], a["method"], a["mode"]) == ("veth0", "xdp", "link", "native")

    [st] = cli_json("status")
    assert st["name"] == "ap" and st["netns"] == ns and st["prog_id"] == res["prog_id"]
    assert st["attachments"][0]["alive"] is True
    assert st["program"]["id"] == res["prog_id"] and st["program"]["verified_insns"] > 0
    q = xdp_prog(ns)
    assert (q["prog_id"], q["drv_prog_id"], q["mode"]) == (res["prog_id"], res["prog_id"], "native")
    human = cli("status").stdout
    assert "ap" in human and "veth0(link/native)" in human

    with Capture(ns, "veth0", WEB) as web, Capture(ns, "veth0", DNS) as dns:
        frames_to(ns, {DNS: 30, WEB: 20, SSH6: 10, OTHER: 5})
        assert web.wait(20) == 20   # passed by rule 1: reaches the stack
        assert dns.wait(0, 0.2) == 0  # dropped by rule 0
    [s] = cli_json("stats", "ap")
    assert rule_counts(s) == [30, 20, 10]
    acl = filter_stats(s)
    assert acl["rules"][0]["bytes"] == 30 * len(DNS.frame("00:00:00:00:00:00", "00:00:00:00:00:00"))
    assert acl["default"]["packets"] >= 5 and acl["malformed"]["packets"] == 0
    assert s["verdicts"]["XDP_DROP"]["packets"] == 40
    count = next(x for x in s["stages"] if x["kind"] == "count")
    # only what no rule decided reaches the count stage
    assert count["counts"]["ipv4"]["packets"] == 5 == acl["default"]["packets"] - \
        count["counts"]["ipv6"]["packets"] - count["counts"]["other"]["packets"]
    assert dropped(ns, "veth0") == 0
    text = cli("stats", "ap").stdout
    assert "filter acl" in text and "(default)" in text


def test_reapply_keeps_rules_and_counters(ebp_env, veth_pair, tmp_path):
    ns, _, _ = veth_pair
    spec = write_spec(tmp_path / "ap.yaml", spec_text(ns))
    first = pipeline.apply(spec)
    frames_to(ns, {DNS: 10, WEB: 4})
    assert rule_counts(stats_of()) == [10, 4, 0]

    # a rule added at run time survives a re-apply of the unchanged spec
    extra = parse_rule({"dst": "198.18.0.2", "dport": 9, "action": "drop"},
                       protocols=["ipv4", "udp", "tcp"])
    RuleTable("ap").add(extra)
    again = pipeline.apply(spec)
    assert again.created is False and again.rules == {"acl": 4}
    assert {"flt_acl_cnt", "ebp_verdicts"} <= set(again.reused_maps)
    assert again.prog_id == xdp_prog(ns)["prog_id"]  # replaced atomically on the same link
    [st] = pipeline.status("ap")
    assert st["attachments"][0]["alive"] is True and st["prog_id"] == again.prog_id
    assert [r["rule"] for r in RuleTable("ap").list()][3] == extra.to_dict()
    frames_to(ns, {DNS: 5, WEB: 1, OTHER: 3})
    s = stats_of()
    assert rule_counts(s) == [15, 5, 0, 3]  # counters kept growing
    assert s["verdicts"]["XDP_DROP"]["packets"] == 18
    assert first.prog_id != again.prog_id or again.compiled_from_cache

    # the spec's rules changed: they replace the live ones (the run-time rule goes);
    # a rule kept from before keeps its counter
    changed = RULES.replace("dport: 80, action: pass", "dport: 81, action: pass")
    write_spec(spec, spec_text(ns, rules=changed))
    third = pipeline.apply(spec)
    assert third.rules == {"acl": 3}
    assert any("rules changed" in n for n in third.notes)
    frames_to(ns, {DNS: 2, WEB: 2, OTHER: 1})
    assert rule_counts(stats_of()) == [17, 0, 0]
    assert [r["rule"]["dport"] for r in RuleTable("ap").list()] == [53, 81, "22-23"]


def snapshot(ns: str) -> dict:
    st = PipelineState.load("ap")
    s = stats_of()
    return {"prog": xdp_prog(ns)["prog_id"], "state_prog": st.prog_id,
            "rules": st.live_rules, "counts": rule_counts(s),
            "drop": s["verdicts"]["XDP_DROP"]["packets"],
            "pins": sorted(p.relative_to(pin_dir("ap")).as_posix()
                           for p in pin_dir("ap").rglob("*"))}


def test_failed_apply_leaves_previous_state(ebp_env, veth_pair, tmp_path, monkeypatch):
    ns, _, _ = veth_pair
    spec = write_spec(tmp_path / "ap.yaml", spec_text(ns))
    pipeline.apply(spec)
    frames_to(ns, {DNS: 7, WEB: 3})
    before = snapshot(ns)
    assert before["counts"] == [7, 3, 0]

    # an interface that does not exist (the second one): nothing is touched
    bad = write_spec(tmp_path / "bad1.yaml", spec_text(ns, interfaces="[veth0, nosuch9]"))
    proc = cli("apply", str(bad), check=False)
    assert proc.returncode == 2 and "nosuch9" in proc.stderr
    with pytest.raises(InterfaceNotFound):
        pipeline.apply(bad)
    assert snapshot(ns) == before

    # a spec that fails validation
    bad = write_spec(tmp_path / "bad2.yaml", spec_text(ns, extra="      capacity: 0\n"))
    proc = cli("apply", str(bad), check=False)
    assert proc.returncode == 2 and "bad2.yaml:" in proc.stderr and "capacity" in proc.stderr
    with pytest.raises(SpecError):
        pipeline.apply(bad)
    assert snapshot(ns) == before

    # attaching fails half-way: veth0 was already switched to the new program, veth1 fails;
    # the spec's rules changed too, so the new rule set must not reach the shared tables
    two = write_spec(tmp_path / "two.yaml", spec_text(
        ns, interfaces="[veth0, veth1]",
        rules=RULES.replace("dport: 80, action: pass", "dport: 80, action: drop")))
    real_attach = pipeline._attach

    def failing_attach(prog, ifname, spec, **kw):
        if ifname == "veth1":
            raise AttachError("injected failure attaching to veth1")
        return real_attach(prog, ifname, spec, **kw)

    monkeypatch.setattr(pipeline, "_attach", failing_attach)
    with pytest.raises(AttachError, match="injected"):
        pipeline.apply(two)
    monkeypatch.undo()
    assert snapshot(ns) == before
    assert xdp_prog(ns, "veth1")["prog_id"] is None
    frames_to(ns, {DNS: 1, WEB: 1})  # the old program still decides: WEB passes
    after = stats_of()
    assert rule_counts(after) == [8, 4, 0]
    assert after["verdicts"]["XDP_DROP"]["packets"] == before["drop"] + 1

    # and the same apply works once attaching works
    res = pipeline.apply(two)
    assert {a["ifname"] for a in res.attachments} == {"veth0", "veth1"}
    assert xdp_prog(ns, "veth1")["prog_id"] == res.prog_id == xdp_prog(ns)["prog_id"]


def test_failed_first_apply_leaves_nothing(ebp_env, veth_pair, tmp_path, monkeypatch):
    ns, _, _ = veth_pair
    spec = write_spec(tmp_path / "ap.yaml", spec_text(ns, interfaces="[veth0, veth1]"))
    real_attach = pipeline._attach

    def failing_attach(prog, ifname, spec, **kw):
        if ifname == "veth1":
            raise AttachError("injected failure attaching to veth1")
        return real_attach(prog, ifname, spec, **kw)

    monkeypatch.setattr(pipeline, "_attach", failing_attach)
    with pytest.raises(AttachError):
        pipeline.apply(spec)
    assert xdp_prog(ns)["prog_id"] is None and xdp_prog(ns, "veth1")["prog_id"] is None
    assert PipelineState.load("ap") is None
    assert not pin_dir("ap").exists()


def assert_nothing_left(ns: str, root) -> None:
    assert PipelineState.load("ap") is None
    assert not pin_dir("ap").exists()
    assert not root.exists() or not any(root.iterdir())
    for ifname in ("veth0", "veth1"):
        assert xdp_prog(ns, ifname)["prog_id"] is None
        with netns.enter(ns):
            for direction in ("ingress", "egress"):
                assert att.query_tcx(ifname, direction) == []


def test_detach_leaves_nothing(ebp_env, veth_pair, tmp_path):
    ns, _, _ = veth_pair
    spec = write_spec(tmp_path / "ap.yaml", spec_text(ns, interfaces="[veth0, veth1]"))
    pipeline.apply(spec)
    RuleTable("ap").add(parse_rule({"dport": 7, "action": "drop"}, protocols=["tcp", "udp"]))
    assert (pin_dir("ap") / "prog").exists()
    res = cli_json("detach", "ap")
    assert sorted(res["detached"]) == ["veth0", "veth1"]
    assert_nothing_left(ns, ebp_env)
    assert cli_json("status") == []
    gone = cli("stats", "ap", check=False)
    assert gone.returncode == 2 and "not applied" in gone.stderr
    again = cli("detach", "ap", check=False)
    assert again.returncode == 2


@pytest.mark.parametrize("hook,ifname,sender", [("tc-ingress", "veth0", "veth1"),
                                                ("tc-egress", "veth1", "veth1")])
def test_tc_apply(ebp_env, veth_pair, tmp_path, hook, ifname, sender):
    ns, _, _ = veth_pair
    spec = write_spec(tmp_path / "ap.yaml", spec_text(ns, interfaces=f"[{ifname}]", hook=hook))
    res = pipeline.apply(spec)
    [a] = res.attachments
    assert (a["ifname"], a["hook"], a["method"]) == (ifname, hook, "tcx")
    with netns.enter(ns):
        assert att.query_tcx(ifname, hook.split("-")[1]) == [res.prog_id]
    with Capture(ns, "veth0", WEB) as web, Capture(ns, "veth0", DNS) as dns:
        frames_to(ns, {DNS: 6, WEB: 4, SSH6: 2}, ifname=sender)
        assert web.wait(4) == 4
        # a frame dropped at veth1's egress never reaches veth0; one dropped at veth0's
        # tc ingress is still seen by a packet socket there (taps run before tc ingress)
        if hook == "tc-egress":
            assert dns.wait(0, 0.2) == 0
    s = stats_of()
    assert rule_counts(s) == [6, 4, 2]
    assert s["verdicts"]["TC_ACT_SHOT"]["packets"] == 8
    # re-apply replaces the program on the same tcx link
    again = pipeline.apply(spec)
    with netns.enter(ns):
        assert att.query_tcx(ifname, hook.split("-")[1]) == [again.prog_id]
    assert rule_counts(stats_of()) == [6, 4, 2]
    pipeline.detach("ap")
    assert_nothing_left(ns, ebp_env)


def test_env_points_at_private_places(ebp_env):
    # the fixtures keep tests away from a user's pipelines
    assert os.environ["EBPLANE_BPFFS_ROOT"] == str(ebp_env)
    assert ebp_env.name.startswith("ebp-test-")
    assert str(pin_dir("x")).startswith(str(ebp_env))


def test_separate_parser_mode_applies_and_survives_reapply(ebp_env, veth_pair, tmp_path):
    """Separate mode on a real interface: the parser program attached at XDP tail-calls the
    stage program through a pinned PROG_ARRAY; a re-apply installs a fresh PROG_ARRAY with the
    new stage program (never the old one's), and real frames keep being classified."""
    ns, _, _ = veth_pair
    text = spec_text(ns).replace("hook: xdp\n", "hook: xdp\nparser: {mode: separate}\n")
    spec = write_spec(tmp_path / "ap.yaml", text)
    first = pipeline.apply(spec)
    assert "ebp_progs" in {p.name for p in (pin_dir("ap") / "maps").iterdir()}
    frames_to(ns, {DNS: 7, WEB: 3})
    [s] = cli_json("stats", "ap")
    assert rule_counts(s)[:2] == [7, 3]
    second = pipeline.apply(spec)
    assert second.prog_id != first.prog_id
    assert "ebp_progs" not in second.reused_maps  # tail-call targets belong to one version
    assert set(second.reused_maps) >= {"flt_acl_cnt"}
    frames_to(ns, {DNS: 5})
    [s] = cli_json("stats", "ap")
    assert rule_counts(s)[:2] == [12, 3]  # counters carried over, the new program counts on
    assert s["verdicts"]["XDP_DROP"]["packets"] == 12


def test_a_wide_port_range_is_one_rule_not_a_table_full_of_blocks(ebp_env, veth_pair, tmp_path):
    """The tuple-space classifier expanded 1-65535 into 16 blocks per protocol and refused
    it in a table of capacity 8; a rule is now one box (two: TCP and UDP), whatever its
    range, so the re-apply goes through and the rule decides."""
    ns, _, _ = veth_pair
    spec = write_spec(tmp_path / "ap.yaml", spec_text(ns, extra="      capacity: 8\n"))
    pipeline.apply(spec)
    frames_to(ns, {DNS: 4})
    wide = write_spec(tmp_path / "wide.yaml", spec_text(
        ns, extra="      capacity: 8\n", rules=RULES + "        - {dport: 1-65535, action: drop}\n"))
    res = pipeline.apply(wide)
    assert res.rules == {"acl": 4}
    frames_to(ns, {OTHER: 2})
    assert rule_counts(stats_of())[3] == 2
