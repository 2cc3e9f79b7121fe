"""multicast and mirror under BPF_PROG_TEST_RUN: constructed frames (truncated ones too),
verdicts and outcome counters, group changes in the kernel's maps, and the spec's checks.

The programs run in a throw-away namespace with veths (the devmaps need real devices).
XDP_REDIRECT is the verdict of a devmap broadcast too (test_run sends nothing).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from pipeline_fixtures import ebp_module_env  # noqa: F401  (fixture)
from ebplane.errors import SpecError
from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.libbpf import SkBuff, XdpMd
from ebplane.net import iface, netns
from ebplane.runtime.replay import Replayer
from ebplane.stages.multicast.control import MC_KEY, MC_NAME, SNOOP_REC, GroupMaps, address_key
from ebplane.stages.mirror.control import MIRROR_CFG
from ebplane.spec import parse_spec
from ebplane.stages.control import control_for
from ebplane.stages.mirror import gen as mirror_gen
from ebplane.stages.multicast import gen as mc_gen

SRC = Path(__file__).resolve().parent.parent / "src" / "ebplane" / "stages"


@pytest.fixture(scope="module")
def ns(ebp_module_env):
    with netns.temporary() as n:
        for i in range(3):
            for cmd in (f"ip link add p{i} type veth peer name q{i}", f"ip link set p{i} up",
                        f"ip link set q{i} up"):
                netns.run(n.name, cmd.split())
        yield n.name


class Run:
    def __init__(self, ns: str, text: str):
        self.ns, self.spec = ns, parse_spec(text)
        with netns.enter(ns):
            self.rp = Replayer(self.spec)

    def __call__(self, frame, ingress: str = "p0") -> str:
        data = bytes(frame)
        with netns.enter(self.ns):
            if self.spec.hook == "xdp":
                ctx = XdpMd(data_end=len(data), ingress_ifindex=iface.ifindex(ingress))
            else:
                ctx = None
            return self.rp.program.test_run(data, ctx=ctx).verdict

    def counts(self, kind: str, stage: str) -> dict[str, int]:
        gen = mc_gen if kind == "multicast" else mirror_gen
        m = self.rp.built.map(gen.map_names(stage)["counters"]).with_codecs(U32, COUNT)
        return {n: m.lookup_sum(i).packets for i, n in enumerate(gen.OUTCOMES)}

    def close(self):
        self.rp.close()


def _spec(stages: str, hook: str = "xdp", protocols: str = "ethernet, ipv4, ipv6, udp") -> str:
    return f"pipeline: rp\nhook: {hook}\nprotocols: [{protocols}]\nstages:\n{stages}"


MC = _spec("""\
  - multicast:
      groups:
        all: {members: [p0, p1, p2], addresses: [broadcast]}
        video: {members: [p1, p2], addresses: [239.1.1.1, "ff0e::1"]}
        mac: {members: [p2], addresses: ["01:00:5e:01:01:01"]}
  - count: {}
""")


@pytest.fixture
def mc(ns):
    r = Run(ns, MC)
    yield r
    r.close()


def _gcount(r: Run, group: str) -> int:
    with netns.enter(r.ns):
        gm = GroupMaps(r.spec.stages[0], r.rp.built.map)
        return next(g for g in gm.describe({}) if g["group"] == group)["sent"]["packets"]


def test_group_addresses_select_their_group(mc):
    assert mc(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP()) == "XDP_REDIRECT"
    # IP destination first: 239.1.1.1 is video's even though its MAC is listed for mac
    assert mc(Ether(dst="01:00:5e:01:01:01") / IP(dst="239.1.1.1") / UDP()) == "XDP_REDIRECT"
    assert mc(Ether(dst="33:33:00:00:00:01") / IPv6(dst="ff0e::1") / UDP()) == "XDP_REDIRECT"
    # an IP group nobody listed: its MAC still selects mac
    assert mc(Ether(dst="01:00:5e:01:01:01") / IP(dst="239.9.9.9") / UDP()) == "XDP_REDIRECT"
    # unicast and unknown groups go on to the next stage (count, then pass)
    assert mc(Ether(dst="02:00:00:00:00:01") / IP(dst="198.18.0.1") / UDP()) == "XDP_PASS"
    assert mc(Ether(dst="01:00:5e:09:09:09") / IP(dst="239.9.9.9") / UDP()) == "XDP_PASS"
    assert mc.counts("multicast", "multicast") == {"sent": 4, "no_group": 2, "runt": 0,
                                                   "multi_buffer": 0}
    assert (_gcount(mc, "all"), _gcount(mc, "video"), _gcount(mc, "mac")) == (1, 2, 1)
    with netns.enter(mc.ns):  # replay names the outcome that decided
        d = mc.rp.run(0, bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP()))
    assert (d.stage, d.reason) == ("multicast", "sent")


def test_truncated_frames_fall_back_to_the_mac(mc):
    full = bytes(Ether(dst="01:00:5e:01:01:01") / IP(dst="239.1.1.1") / UDP())
    # IPv4 header cut: not parsed as IP, so its MAC selects group mac
    assert mc(full[:14 + 10]) == "XDP_REDIRECT"
    assert _gcount(mc, "mac") == 1 and _gcount(mc, "video") == 0
    # an Ethernet header alone, to a unicast MAC: next stage
    assert mc(bytes(Ether(dst="02:00:00:00:00:01", type=0x0800))) == "XDP_PASS"
    v6 = bytes(Ether(dst="33:33:00:00:00:01") / IPv6(dst="ff0e::1") / UDP())
    assert mc(v6[:14 + 30]) == "XDP_PASS"      # no group for 33:33:00:00:00:01
    c = mc.counts("multicast", "multicast")
    assert c["sent"] == 1 and c["no_group"] == 2


def test_group_changes_in_the_maps(mc):
    with netns.enter(mc.ns):
        gm = GroupMaps(mc.spec.stages[0], mc.rp.built.map)
        assert {g["group"]: g["members"] for g in gm.describe({})}["video"] == sorted(
            iface.ifindex(p) for p in ("p1", "p2"))
        gm.delete_group("video")
        assert mc(Ether(dst="01:00:5e:01:01:01") / IP(dst="239.1.1.1") / UDP()) == "XDP_REDIRECT"
        assert _gcount(mc, "mac") == 1            # its MAC group now
        slot = gm.write_group("new", [iface.ifindex("p0")], ["239.1.1.1"])
        assert gm.addresses()["239.1.1.1"] == slot
        # an address that points to a slot without a member map: no group
        gm.addrs.update(address_key("239.2.2.2"), mc.spec.stages[0].max_groups - 1)
        assert mc(Ether(dst="02:00:00:00:00:01") / IP(dst="239.2.2.2") / UDP()) == "XDP_PASS"


def test_group_address_forms():
    text = _spec("""\
  - multicast:
      groups:
        g: {addresses: [Broadcast, "01-00-5E-00-00-FB", 224.0.0.251, "FF02::FB"]}
""")
    (g,) = parse_spec(text).stages[0].groups
    assert g.addresses == ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "224.0.0.251", "ff02::fb")
    assert g.members == ()


@pytest.mark.parametrize("groups, message", [
    ('{g: {addresses: ["02:00:00:00:00:01"]}}', "unicast MAC"),
    ("{g: {addresses: [198.18.0.1]}}", "not a multicast address"),
    ("{g: {addresses: [nonsense]}}", "not a group address"),
    ("{g: {addresses: []}}", "at least one address"),
    ("{g: {members: [p0]}}", "missing required key 'addresses'"),
    ("{g: {addresses: [broadcast]}, h: {addresses: [broadcast]}}", "already selects group g"),
    ("{g: {addresses: [broadcast], members: [p0, p0]}}", "member listed twice"),
    ("[broadcast]", "expected a mapping"),
])
def test_bad_groups_are_refused(groups, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(_spec(f"  - multicast: {{groups: {groups}}}\n"))


def test_ip_group_needs_the_ip_protocol():
    with pytest.raises(SpecError, match="needs ipv6 in protocols"):
        parse_spec(_spec('  - multicast: {groups: {g: {addresses: ["ff02::1"]}}}\n',
                         protocols="ethernet, ipv4"))


def test_mirror_hook_rules():
    with pytest.raises(SpecError, match="needs out:") as e:
        parse_spec(_spec("  - mirror: {to: p1}\n"))
    assert "bpf_clone_redirect" in e.value.hint
    with pytest.raises(SpecError, match="for hook xdp only"):
        parse_spec(_spec("  - mirror: {to: p1, out: p2}\n", hook="tc-ingress"))
    with pytest.raises(SpecError, match="same interface"):
        parse_spec(_spec("  - mirror: {to: p1, out: p1}\n"))
    with pytest.raises(SpecError, match="sampling rate"):
        parse_spec(_spec("  - mirror: {to: p1, out: p2, sample: 0}\n"))


def test_mirror_at_xdp_selects_and_samples(ns):
    r = Run(ns, _spec("  - mirror: {to: p2, out: p1, match: [{proto: udp, dport: 53}]}\n"))
    try:
        sel = Ether() / IP(dst="198.18.0.1") / UDP(dport=53)
        assert r(sel) == "XDP_REDIRECT"
        assert r(Ether() / IP(dst="198.18.0.1") / UDP(dport=54)) == "XDP_REDIRECT"  # out only
        assert r(bytes(sel)[:14 + 20 + 4]) == "XDP_REDIRECT"   # cut UDP: malformed, not selected
        assert r.counts("mirror", "mirror") == {"mirrored": 1, "not_selected": 2,
                                                "not_sampled": 0, "no_port": 0, "failed": 0,
                                                "multi_buffer": 0}
    finally:
        r.close()
    r = Run(ns, _spec("  - mirror: {to: p2, out: p1, sample: 4}\n"))
    try:
        for _ in range(400):
            r(Ether() / IP() / UDP())
        c = r.counts("mirror", "mirror")
        assert c["mirrored"] + c["not_sampled"] == 400
        assert 50 < c["mirrored"] < 150      # 1 in 4 (binomial: 100 +- 8.7)
    finally:
        r.close()


def test_mirror_at_tc_clones_and_goes_on(ns):
    r = Run(ns, _spec("  - mirror: {to: p2, match: [{ethertype: ipv4}]}\n  - count: {}\n",
                      hook="tc-ingress"))
    try:
        assert r(Ether() / IP() / UDP()) == "TC_ACT_OK"
        assert r(Ether() / IPv6() / UDP()) == "TC_ACT_OK"
        c = r.counts("mirror", "mirror")
        assert (c["mirrored"], c["not_selected"], c["failed"]) == (1, 1, 0)
        cnt = r.rp.built.map("cnt_count").with_codecs(U32, COUNT)
        assert cnt.lookup_sum(0).packets == 2      # both went on to the next stage
    finally:
        r.close()


@pytest.mark.parametrize("kind, prefix", [("multicast", "EBP_MC_"), ("mirror", "EBP_MR_")])
def test_the_headers_read_only_numbers_the_generator_defines(kind, prefix):
    """Slots and constants are defined once, in gen.py, and written into the program: the
    header names no other, and the slots follow OUTCOMES."""
    gen = mc_gen if kind == "multicast" else mirror_gen
    header = (SRC / kind / f"{kind}.h").read_text()
    used = set(re.findall(r"\b(%s[A-Z0-9_]+)\b" % prefix, header))
    defined = gen.c_defines()
    used = {u for u in used if not u.endswith("_")}  # EBP_MC_KIND_<KIND> in a comment
    assert used <= set(defined), used - set(defined)
    assert [defined[f"{prefix}{o.upper()}"] for o in gen.OUTCOMES] == \
        list(range(len(gen.OUTCOMES)))
    assert "enum ebp_" not in header


def test_struct_layouts_are_defined_once():
    """The structs are Layouts in gen.py (tests/test_layouts.py checks them against the
    compiled object's BTF): the headers declare none, the codecs are made from them."""
    for kind, codecs in (("multicast", (MC_KEY, MC_NAME, SNOOP_REC)), ("mirror", (MIRROR_CFG,))):
        header = (SRC / kind / f"{kind}.h").read_text()
        for codec in codecs:
            assert f"struct {codec.layout.name} {{" not in header
    assert (MC_KEY.size, MC_NAME.size, MIRROR_CFG.size) == (20, 16, 8)
    assert SNOOP_REC.size == 8 + mc_gen.SNOOP_BYTES


def test_group_names_with_dashes_make_valid_kernel_map_names(mc):
    with netns.enter(mc.ns):
        gm = GroupMaps(mc.spec.stages[0], mc.rp.built.map)
        slot = gm.write_group("my-group", [iface.ifindex("p1")], ["239.3.3.3"])
        assert gm.slots()["my-group"] == slot and gm.members(slot) == [iface.ifindex("p1")]


# -- snooping: what the snooper reads from reports ---------------------------------------------

def _igmp(payload: bytes, dst: str = "224.0.0.22") -> bytes:
    from scapy.layers.inet import IP
    return bytes(Ether(dst="01:00:5e:00:00:16") / IP(src="198.18.94.2", dst=dst, proto=2, ttl=1)
                 / payload)


def _rec4(rtype: int, group: str, nsrc: int = 0) -> bytes:
    import ipaddress as ip
    return (bytes([rtype, 0]) + nsrc.to_bytes(2, "big") + ip.ip_address(group).packed
            + bytes(4 * nsrc))


def _v3(records: list[bytes], mld: bool = False) -> bytes:
    return bytes([143 if mld else 0x22, 0, 0, 0, 0, 0]) + len(records).to_bytes(2, "big") \
        + b"".join(records)


def test_membership_events_from_igmp():
    from ebplane.runtime.groups import membership_events as ev
    v2 = lambda t, g: bytes([t, 0, 0, 0]) + __import__("ipaddress").ip_address(g).packed  # noqa
    assert ev(_igmp(v2(0x16, "239.1.1.1"))) == [("join", "239.1.1.1")]
    assert ev(_igmp(v2(0x12, "239.1.1.1"))) == [("join", "239.1.1.1")]          # IGMPv1
    assert ev(_igmp(v2(0x17, "239.1.1.1"))) == [("leave", "239.1.1.1")]
    assert ev(_igmp(v2(0x11, "239.1.1.1"))) == []                                 # a query
    assert ev(_igmp(_v3([_rec4(4, "239.1.1.1"), _rec4(3, "239.2.2.2"),
                         _rec4(1, "239.3.3.3", 1), _rec4(6, "239.4.4.4", 1)]))) == \
        [("join", "239.1.1.1"), ("leave", "239.2.2.2"), ("join", "239.3.3.3")]
    # link-local groups are always flooded: never snooped
    assert ev(_igmp(_v3([_rec4(4, "224.0.0.251")]))) == []
    # a record cut short ends the list; a cut header yields nothing
    whole = _igmp(_v3([_rec4(4, "239.1.1.1"), _rec4(4, "239.5.5.5")]))
    assert ev(whole[:-2]) == [("join", "239.1.1.1")]
    assert ev(whole[:14 + 20 + 4]) == [] and ev(whole[:10]) == []


def test_membership_events_from_mld():
    import ipaddress as ip
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, RouterAlert
    from ebplane.runtime.groups import membership_events as ev

    def mld(body: bytes, dst: str = "ff02::16") -> bytes:
        return bytes(Ether(dst="33:33:00:00:00:16") / IPv6(src="fe80::1", dst=dst, hlim=1)
                     / IPv6ExtHdrHopByHop(nh=58, options=[RouterAlert()]) / body)

    def rec(rtype: int, group: str) -> bytes:
        return bytes([rtype, 0, 0, 0]) + ip.ip_address(group).packed

    v1 = lambda t, g: bytes([t, 0, 0, 0, 0, 0, 0, 0]) + ip.ip_address(g).packed  # noqa: E731
    assert ev(mld(v1(131, "ff0e::1"))) == [("join", "ff0e::1")]
    assert ev(mld(v1(132, "ff0e::1"))) == [("leave", "ff0e::1")]
    assert ev(mld(_v3([rec(4, "ff0e::1:2"), rec(3, "ff05::9"), rec(2, "ff02::fb")],
                      mld=True))) == [("join", "ff0e::1:2"), ("leave", "ff05::9")]
    assert ev(bytes(Ether() / IPv6(dst="ff02::1") / UDP())) == []


def test_snoop_copies_igmp_and_mld_to_the_ring(ns):
    from ebplane.kernel.ringbuf import RingBuffer
    from ebplane.runtime.groups import membership_events
    r = Run(ns, _spec("  - multicast: {snooping: true}\n"))
    try:
        got: list = []
        with RingBuffer(r.rp.built.map(mc_gen.map_names("multicast")["snoop"]),
                        lambda d: got.append(SNOOP_REC.decode(d))) as rb:
            assert r(_igmp(_v3([_rec4(4, "239.1.2.3")]))) == "XDP_PASS"   # and it goes on
            assert r(Ether(dst="01:00:5e:01:02:03") / IP(dst="239.1.2.3") / UDP()) == "XDP_PASS"
            assert r(_igmp(_v3([_rec4(4, "239.1.2.3")]))[:14 + 10]) == "XDP_PASS"  # cut: no
            rb.poll(10)
        assert len(got) == 1 and got[0].ifindex == iface_index(ns, "p0")
        assert membership_events(got[0].data[:got[0].len]) == [("join", "239.1.2.3")]
    finally:
        r.close()


def iface_index(ns: str, name: str) -> int:
    with netns.enter(ns):
        return iface.ifindex(name)


def test_snooping_needs_ip():
    with pytest.raises(SpecError, match="snooping reads IGMP"):
        parse_spec(_spec("  - multicast: {snooping: true}\n", protocols="ethernet"))


def test_multi_buffer_frames_are_not_lost_to_a_devmap_broadcast(ns):
    """The kernel's devmap broadcast copies single-buffer frames only (a multi-buffer one
    vanishes without a counter): multicast passes such a frame to the kernel, mirror sends
    the original without a copy; both count it."""
    from ebplane.codegen.pipeline import spec_features
    from ebplane.runtime.build import build
    spec = parse_spec(_spec(MC.split("stages:\n", 1)[1]
                            + "  - mirror: {to: p2, out: p1}\n"))
    with netns.enter(ns):
        built = build(spec, spec_features(spec), frags=True)
        try:
            for st in spec.stages:
                control_for(st.kind).prepare(built, spec, st, replay=True)
            ctx = lambda d: XdpMd(data_end=len(d), ingress_ifindex=iface.ifindex("p0"))  # noqa
            big = bytes(Ether(dst="01:00:5e:01:01:01") / IP(dst="239.1.1.1") / UDP()
                        / bytes(8000))
            small = bytes(Ether(dst="01:00:5e:01:01:01") / IP(dst="239.1.1.1") / UDP())
            uni = bytes(Ether(dst="02:00:00:00:00:01") / IP(dst="198.18.0.1") / UDP()
                        / bytes(8000))
            prog = built.program
            assert prog.test_run(big, ctx=ctx(big)).verdict == "XDP_PASS"
            assert prog.test_run(small, ctx=ctx(small)).verdict == "XDP_REDIRECT"
            assert prog.test_run(uni, ctx=ctx(uni)).verdict == "XDP_REDIRECT"  # original
            mcc = built.map(mc_gen.map_names("multicast")["counters"]).with_codecs(U32, COUNT)
            mrc = built.map(mirror_gen.map_names("mirror")["counters"]).with_codecs(U32, COUNT)
            mc_counts = {n: mcc.lookup_sum(i).packets for i, n in enumerate(mc_gen.OUTCOMES)}
            mr_counts = {n: mrc.lookup_sum(i).packets for i, n in enumerate(mirror_gen.OUTCOMES)}
            assert mc_counts["multi_buffer"] == 1 and mc_counts["sent"] == 1
            assert mr_counts["multi_buffer"] == 1 and mr_counts["mirrored"] == 0
        finally:
            built.close()


def test_multicast_at_tc_walks_an_array_of_members(ns):
    r = Run(ns, MC.replace("hook: xdp", "hook: tc-ingress"))
    try:
        with netns.enter(ns):
            gm = GroupMaps(r.spec.stages[0], r.rp.built.map, "tc-ingress")
            video = {g["group"]: g for g in gm.describe({})}["video"]
            assert video["members"] == sorted(iface.ifindex(p) for p in ("p1", "p2"))
        assert r(Ether(dst="01:00:5e:01:01:01") / IP(dst="239.1.1.1") / UDP()) == \
            "TC_ACT_REDIRECT"
        assert r(Ether(dst="02:00:00:00:00:01") / IP(dst="198.18.0.1") / UDP()) == "TC_ACT_OK"
        c = r.counts("multicast", "multicast")
        assert (c["sent"], c["no_group"], c["multi_buffer"]) == (1, 1, 0)
    finally:
        r.close()


def test_snooping_is_xdp_only():
    with pytest.raises(SpecError, match="snooping works at hook xdp only"):
        parse_spec(_spec("  - multicast: {snooping: true}\n", hook="tc-ingress"))
    with pytest.raises(SpecError, match="works at hook xdp or tc-ingress only"):
        parse_spec(_spec("  - multicast: {}\n", hook="tc-egress"))


def test_removing_what_a_group_does_not_have_is_refused(ns, tmp_path):
    """`groups remove` of a port or an address the group does not have (a typo, another
    group's address) used to exit 0 and change nothing; it names what is absent, exit 2."""
    from ebplane.errors import NotFound
    from ebplane.runtime import pipeline
    from ebplane.runtime.groups import Groups
    spec = tmp_path / "mcg.yaml"
    spec.write_text(MC.replace("pipeline: rp\nhook: xdp",
                               f"pipeline: mcg\nhook: tc-ingress\nnetns: {ns}\ninterfaces: [p0]"))
    pipeline.apply(spec)
    try:
        g = Groups("mcg")
        before = g.list()
        for kw in ({"members": ["p0"]}, {"addresses": ["01:00:5e:01:01:01"]},
                   {"members": ["p1"], "addresses": ["239.9.9.9"]}):
            with pytest.raises(NotFound, match="group video has no member or address"):
                g.remove("video", **kw)
            assert g.list() == before, kw
        assert g.remove("video", members=["p1"])["members"] == ["p2"]
    finally:
        pipeline.detach("mcg")


def test_status_warns_when_a_mirror_target_or_member_is_gone(ebp_module_env, tmp_path):
    """A mirror whose `to:` was deleted counts every copy `failed` while its attachment is
    healthy: status said ok and nothing else.  It now warns, naming the stage and interface
    (health stays ok: the program runs)."""
    from ebplane.runtime import pipeline
    with netns.temporary() as n:
        for cmd in ("ip link add v0 type veth peer name v1", "ip link add m0 type veth peer "
                    "name m1", "ip link add g0 type veth peer name g1"):
            netns.run(n.name, cmd.split())
        for dev in ("v0", "v1", "m0", "m1", "g0", "g1"):
            netns.run(n.name, ["ip", "link", "set", dev, "up"])
        spec = tmp_path / "mt.yaml"
        spec.write_text(_spec("  - mirror: {to: m0}\n"
                              "  - multicast: {groups: {g: {members: [m0, g0], "
                              "addresses: [broadcast]}}}\n", hook="tc-ingress")
                        .replace("pipeline: rp", f"pipeline: mt\nnetns: {n.name}\n"
                                                 "interfaces: [v0]"))
        pipeline.apply(spec)
        try:
            (st,) = pipeline.status("mt")
            assert st["health"] == "ok" and st["warnings"] == []
            netns.run(n.name, ["ip", "link", "del", "m0"])
            (st,) = pipeline.status("mt")
            assert st["health"] == "ok"
            assert [w.split(":")[0] for w in st["warnings"]] == \
                ["mirror 'mirror'", "multicast 'multicast'"]
            assert all("m0 no longer exists" in w for w in st["warnings"])
        finally:
            pipeline.detach("mt")


@pytest.mark.parametrize("args, words", [
    (["--seconds", "-1"], "--seconds must be more than 0"),
    (["--seconds", "0"], "--seconds must be more than 0"),
    (["--seconds", "1", "--timeout", "-5"], "--timeout must be 0 or more"),
])
def test_snoop_refuses_negative_durations(ebp_module_env, args, words):
    """`groups snoop --seconds -1` ended at once with exit 0 (nothing learnt), and a
    negative --timeout would expire every member it learnt: both are bad input (exit 2)."""
    from pipeline_fixtures import cli
    proc = cli("groups", "nosuch", "snoop", *args, check=False)
    assert proc.returncode == 2 and words in proc.stderr and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("stage, key", [("mirror: {to: p0, out: p1}", "to"),
                                        ("mirror: {to: p1, out: p0}", "out")])
def test_xdp_mirror_to_or_out_of_its_own_interface_is_refused(ns, tmp_path, stage, key):
    """At XDP the copy and the original leave by one broadcast with BPF_F_EXCLUDE_INGRESS:
    a mirror whose to: (or out:) is the interface it is attached to would lose every copy
    (or the originals of selected frames) of frames arriving there, without a counter.  It
    was applied; it is refused, nothing attached or pinned."""
    from ebplane.errors import UsageError
    from ebplane.runtime import pipeline
    from ebplane.runtime.state import all_names
    spec = tmp_path / "mo.yaml"
    spec.write_text(_spec(f"  - {stage}\n").replace(
        "pipeline: rp", f"pipeline: mo\nnetns: {ns}\ninterfaces: [p0]"))
    with pytest.raises(UsageError, match=f"{key}: p0 is an interface the pipeline is attached"):
        pipeline.apply(spec)
    assert "mo" not in all_names() and not (pipeline.pin_dir("mo")).exists()
    with netns.enter(ns):
        from ebplane.net import attach
        assert not attach.query_xdp("p0")["prog_id"]
