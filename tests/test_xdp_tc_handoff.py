"""Parser mode xdp: an XDP parser program leaves the parse-info in the metadata area, the TC
ingress program reads it (skb->data_meta) and runs the stages; without a valid parse-info the
TC program parses itself.  Spec validation, the generated pair, replay verdicts equal fused
mode, and apply / re-apply / detach on a veth pair with real frames (the hand-off counted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.l2 import Dot1Q

from pipeline_fixtures import (cli_json, ebp_env, mac, rule_counts, send_frames,  # noqa: F401
                               write_spec)
from test_separate import CORPUS, EDGE
from ebplane.codegen.pipeline import generate
from ebplane.errors import AttachError, SpecError
from ebplane.kernel.links import Link
from ebplane.kernel.programs import BpfObject
from ebplane.lab.traffic import Flow
from ebplane.net import attach as att
from ebplane.net import netns
from ebplane.runtime import pipeline
from ebplane.runtime.replay import Replayer
from ebplane.runtime.state import PipelineState, pin_dir
from ebplane.spec import parse_spec
from ebplane.toolchain.clang import compile_c

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TC_EDGE = EDGE.replace("hook: xdp", "hook: tc-ingress")

DNS = Flow("udp", "198.18.0.1", "198.18.0.2", 40000, 53)
WEB = Flow("tcp", "198.18.0.1", "198.18.0.2", 40001, 80)
SSH6 = Flow("tcp", "2001:db8::1", "2001:db8::2", 40002, 22)
OTHER = Flow("udp", "198.18.0.1", "198.18.0.2", 40003, 9)


def spec_text(ns: str, interfaces: str = "[veth0]", mode: str = "xdp") -> str:
    return (f"pipeline: ho\nhook: tc-ingress\nparser: {{mode: {mode}}}\nnetns: {ns}\n"
            f"interfaces: {interfaces}\nprotocols: [ethernet, vlan, ipv4, ipv6, tcp, udp]\n"
            "stages:\n  - filter:\n      name: acl\n      default: next\n      rules:\n"
            "        - {dst: 198.18.0.2, proto: udp, dport: 53, action: drop}\n"
            "        - {dst: 198.18.0.2, proto: tcp, dport: 80, action: pass}\n"
            "        - {dst: \"2001:db8::/32\", proto: tcp, dport: \"22-23\", action: drop}\n"
            "  - count: {}\n")


def quiet(ns: str) -> None:
    """No frames of the namespace's own (IPv6 ND, MLD) into veth0: counts are exact."""
    for dev in ("veth0", "veth1"):
        netns.run(ns, ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"])


def send(ns: str, flows: dict[Flow, int]) -> int:
    src, dst = mac(ns, "veth1"), mac(ns, "veth0")
    return sum(send_frames(ns, "veth1", [f.frame(src, dst)], n) for f, n in flows.items())


def handoff(name: str = "ho") -> dict[str, int]:
    [s] = cli_json("stats", name)  # what `ebplane stats` shows
    return {k: v["packets"] for k, v in s["handoff"].items()}


def where(ns: str, ifname: str = "veth0") -> tuple[int | None, list[int]]:
    """(XDP program id, tcx ingress program ids) on ``ifname``."""
    with netns.enter(ns):
        return att.query_xdp(ifname)["prog_id"], att.query_tcx(ifname, "ingress")


def assert_nothing_left(ns: str, root: Path) -> None:
    assert PipelineState.load("ho") is None and not pin_dir("ho").exists()
    assert not root.exists() or not any(root.iterdir())
    for ifname in ("veth0", "veth1"):
        assert where(ns, ifname) == (None, [])


# -- spec and code generation ------------------------------------------------------------------

@pytest.mark.parametrize("hook", ["xdp", "tc-egress"])
def test_parser_mode_xdp_needs_tc_ingress(hook):
    text = TC_EDGE.format(name="t", mode="xdp").replace("hook: tc-ingress", f"hook: {hook}")
    with pytest.raises(SpecError, match="needs hook tc-ingress") as info:
        parse_spec(text, "t.yaml")
    assert "hook: tc-ingress" in info.value.hint
    spec = parse_spec(TC_EDGE.format(name="t", mode="xdp"), "t.yaml")
    assert spec.parser_mode == "xdp" and spec.to_dict()["parser"] == {"mode": "xdp"}


def test_generated_xdp_parser_and_tc_program():
    gen = generate(parse_spec(TC_EDGE.format(name="edge-x", mode="xdp"), "edge.yaml"))
    assert gen.xdp_parser == "ebp_xdp_parser" and gen.stage_prog is None
    assert gen.section == "tc" and "bpf_tail_call" not in gen.source
    assert 'SEC("xdp")\nint ebp_xdp_parser(struct xdp_md *ctx)' in gen.source
    # the check word binds the parse-info to the layout and to the frame length parsed
    assert "pi->magic = EBP_PINFO_MAGIC ^ pkt->len;" in gen.source
    assert "pi->magic == (EBP_PINFO_MAGIC ^ ctx->len)" in gen.source
    assert gen.map_for(None, "handoff") == "ebp_handoff"
    # the magic word follows the layout: another match: field, another magic
    other = generate(parse_spec(TC_EDGE.format(name="edge-x", mode="xdp").replace(
        "ipv4.ttl", "ipv4.protocol"), "edge.yaml"))
    magic = [line for g in (gen, other) for line in g.source.splitlines()
             if line.startswith("#define EBP_PINFO_MAGIC")]
    assert len(magic) == 2 and magic[0] != magic[1]


def test_magic_word_takes_room_of_match_fields():
    # 11 bytes of match: fields fit the 12 a separate parse-info leaves, not the 8 of mode xdp
    text = TC_EDGE.replace('{{match: {{ipv4.ttl: "1-2"}}, action: drop}}',
                           "{{match: {{ipv4.ttl: 1, ipv4.identification: 2, tcp.seqNo: 3, "
                           "tcp.ackNo: 4}}, action: drop}}")
    generate(parse_spec(text.format(name="b", mode="separate").replace(
        "hook: tc-ingress", "hook: xdp"), "b.yaml"))
    with pytest.raises(SpecError, match="XDP parser .* needs 36 bytes, more than the 32") as info:
        generate(parse_spec(text.format(name="b", mode="xdp"), "b.yaml"))
    assert "8 fit" in str(info.value) and "tcp.seqNo: 4" in str(info.value)


# -- replay: the TC program alone takes the fallback path --------------------------------------

def decisions(text: str, source: str) -> list[tuple]:
    with Replayer(parse_spec(text, source)) as rp:
        return [(d.verdict, d.stage, d.rule, d.reason)
                for d in rp.run_all(bytes(p) for p in CORPUS)]


def test_replay_verdicts_equal_fused():
    fused = decisions(TC_EDGE.format(name="edge-f", mode="fused"), "edge.yaml")
    assert decisions(TC_EDGE.format(name="edge-x", mode="xdp"), "edge.yaml") == fused
    assert {d[0] for d in fused} == {"TC_ACT_SHOT", "TC_ACT_OK"}
    text = (EXAMPLES / "tenant.yaml").read_text().replace("hook: xdp", "hook: tc-ingress")
    src = str(EXAMPLES / "tenant.yaml")
    assert decisions(text.replace("mode: fused", "mode: xdp"), src) == decisions(text, src)


# -- apply on a veth pair ----------------------------------------------------------------------

def test_apply_hands_parse_over_with_real_frames(ebp_env, veth_pair, tmp_path):
    ns, _, _ = veth_pair
    quiet(ns)
    res = pipeline.apply(write_spec(tmp_path / "ho.yaml", spec_text(ns)))
    recs = {a["hook"]: a for a in res.attachments}
    assert set(recs) == {"tc-ingress", "xdp"}
    assert recs["tc-ingress"]["method"] == "tcx" and recs["tc-ingress"]["prog_id"] == res.prog_id
    assert (recs["xdp"]["method"], recs["xdp"]["mode"]) == ("link", "native")
    assert where(ns) == (recs["xdp"]["prog_id"], [res.prog_id])
    [st] = cli_json("status", "ho")
    assert {(a["hook"], a["alive"]) for a in st["attachments"]} == {("tc-ingress", True),
                                                                    ("xdp", True)}
    sent = send(ns, {DNS: 30, WEB: 20, SSH6: 10, OTHER: 5})
    [s] = cli_json("stats", "ho")
    assert rule_counts(s) == [30, 20, 10]
    assert s["verdicts"]["TC_ACT_SHOT"]["packets"] == 40
    assert handoff() == {"parse_info_from_xdp": sent, "parsed_in_tc": 0}


def test_every_corpus_frame_decided_as_fused_replay_decides(ebp_env, veth_pair, tmp_path):
    """The hand-off path (live) against the fused program (replay) on the edge corpus.

    Frames with a VLAN tag are left out: the kernel moves the outer tag to skb->vlan_tci
    before TC, so the frame TC sees is not the one XDP parsed (4 bytes shorter); the TC
    program notices and parses itself, as a fused TC program sees that frame too."""
    ns, _, _ = veth_pair
    quiet(ns)
    text = TC_EDGE.format(name="ho", mode="xdp").replace(
        "hook: tc-ingress\n", f"hook: tc-ingress\nnetns: {ns}\ninterfaces: [veth0]\n")
    pipeline.apply(write_spec(tmp_path / "ho.yaml", text))
    n = 3
    untagged = [i for i, p in enumerate(CORPUS) if not p.haslayer(Dot1Q)]
    tagged = len(CORPUS) - len(untagged)
    assert tagged >= 2
    sent = send_frames(ns, "veth1", [bytes(CORPUS[i]) for i in untagged], n)
    expected: dict[tuple[str, str, int | None], int] = {}
    fused = decisions(TC_EDGE.format(name="edge-f", mode="fused"), "edge.yaml")
    for d in (fused[i] for i in untagged):
        if d[1] is not None:
            expected[d[1:]] = expected.get(d[1:], 0) + n
    live: dict[tuple[str, str, int | None], int] = {}
    [s] = cli_json("stats", "ho")
    for st in s["stages"]:
        if st["kind"] == "filter":
            for r in st["rules"]:
                live[(st["stage"], r["index"], "rule")] = r["packets"]
            live[(st["stage"], None, "malformed")] = st["malformed"]["packets"]
            for what in ("other", "bad"):   # fragments decided without a rule
                live[(st["stage"], None, f"fragment_{what}")] = \
                    st["fragments"][what]["packets"]
            if st["default"]["action"] != "next":
                live[(st["stage"], None, "default")] = st["default"]["packets"]
    live = {k: v for k, v in live.items() if v}
    assert live == expected and len(expected) > 5
    assert handoff() == {"parse_info_from_xdp": sent, "parsed_in_tc": 0}
    # the tagged frames: decided all the same, parsed in TC (the fallback, live)
    send_frames(ns, "veth1", [bytes(p) for p in CORPUS if p.haslayer(Dot1Q)], n)
    assert handoff() == {"parse_info_from_xdp": sent, "parsed_in_tc": tagged * n}


FOREIGN = r"""
// SPDX-License-Identifier: GPL-2.0
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* metadata of the parse-info's size that claims every frame is UDP to port 53 */
SEC("xdp") int foreign(struct xdp_md *ctx)
{
	__u32 *m;
	int i;

	if (bpf_xdp_adjust_meta(ctx, -32))
		return XDP_PASS;
	m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 8) > (void *)(long)ctx->data)
		return XDP_PASS;
	for (i = 0; i < 8; i++)
		m[i] = 0x00350411;
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_foreign_metadata_is_not_trusted(ebp_env, veth_pair, tmp_path):
    """Another XDP program's metadata in front of the frame: the TC program parses itself."""
    ns, _, _ = veth_pair
    quiet(ns)
    res = pipeline.apply(write_spec(tmp_path / "ho.yaml", spec_text(ns)))
    [rec] = [a for a in res.attachments if a["hook"] == "xdp"]
    obj = BpfObject.open_bytes(compile_c(FOREIGN, name="foreign").elf, "foreign")
    obj.load()
    link = Link.from_pin(rec["link_pin"])
    try:
        link.update(obj.programs["foreign"].fd)
        sent = send(ns, {DNS: 4, WEB: 6})
        assert rule_counts(pipeline.stats("ho")[0]) == [4, 6, 0]
        assert handoff() == {"parse_info_from_xdp": 0, "parsed_in_tc": sent}
    finally:
        link.close()
        obj.close()


def test_reapply_replaces_both_and_detach_leaves_nothing(ebp_env, veth_pair, tmp_path):
    ns, _, _ = veth_pair
    quiet(ns)
    spec = write_spec(tmp_path / "ho.yaml", spec_text(ns))
    first = pipeline.apply(spec)
    sent = send(ns, {DNS: 5, WEB: 2})
    again = pipeline.apply(spec)
    old = {a["hook"]: a for a in first.attachments}
    new = {a["hook"]: a for a in again.attachments}
    assert set(new) == {"tc-ingress", "xdp"}
    for hook in new:  # the same links, updated to the new programs
        assert new[hook]["link_id"] == old[hook]["link_id"]
        assert new[hook]["prog_id"] != old[hook]["prog_id"]
    assert where(ns) == (new["xdp"]["prog_id"], [again.prog_id])
    sent += send(ns, {DNS: 1, SSH6: 3})
    assert rule_counts(pipeline.stats("ho")[0]) == [6, 2, 3]  # counters carried over
    assert handoff() == {"parse_info_from_xdp": sent, "parsed_in_tc": 0}
    assert all(a["alive"] for a in pipeline.status("ho")[0]["attachments"])

    # back to a fused parser: the XDP parser goes, the TC program stays on its link
    fused = pipeline.apply(write_spec(spec, spec_text(ns, mode="fused")))
    assert [a["hook"] for a in fused.attachments] == ["tc-ingress"]
    assert where(ns) == (None, [fused.prog_id])
    assert not any("@xdp" in p.name for p in (pin_dir("ho") / "links").iterdir())

    pipeline.apply(write_spec(spec, spec_text(ns, interfaces="[veth0, veth1]")))
    assert len(pipeline.status("ho")[0]["attachments"]) == 4
    pipeline.detach("ho")
    assert_nothing_left(ns, ebp_env)


def test_failed_attach_of_xdp_parser_rolls_back_both(ebp_env, veth_pair, tmp_path,
                                                     monkeypatch):
    ns, _, _ = veth_pair
    spec = write_spec(tmp_path / "ho.yaml", spec_text(ns, interfaces="[veth0, veth1]"))
    real = pipeline._attach

    def failing(prog, ifname, spec, **kw):
        if ifname == "veth1" and prog.type_name == "xdp":
            raise AttachError("injected failure attaching the XDP parser to veth1")
        return real(prog, ifname, spec, **kw)

    monkeypatch.setattr(pipeline, "_attach", failing)
    with pytest.raises(AttachError, match="injected"):
        pipeline.apply(spec)
    assert_nothing_left(ns, ebp_env)

    # a re-apply failing half-way puts the previous programs back on both hooks
    monkeypatch.undo()
    first = pipeline.apply(write_spec(spec, spec_text(ns)))
    before = where(ns)
    monkeypatch.setattr(pipeline, "_attach", failing)
    with pytest.raises(AttachError):
        pipeline.apply(write_spec(spec, spec_text(ns, interfaces="[veth0, veth1]")))
    assert where(ns) == before and where(ns, "veth1") == (None, [])
    assert PipelineState.load("ho").prog_id == first.prog_id
