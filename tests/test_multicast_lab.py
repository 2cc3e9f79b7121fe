"""Multicast groups and mirror with real traffic: three hosts on a switch namespace running
an ebplane pipeline (native XDP on veths), frames sent and counted with AF_PACKET sockets in
the hosts' namespaces.

- multicast: a frame to a group reaches every member but the port it came in on; members
  change live (CLI and Python API), and a sender running during the changes never loses a
  frame at a member that stays; broadcast ARP through a group lets ping work with a bridge
  behind it;
- mirror: at XDP (devmap broadcast to the original's port and the mirror port) and at TC
  (bpf_clone_redirect), the copy is seen on the mirror port while the original arrives.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path

import pytest

from pipeline_fixtures import cli, cli_json, ebp_env  # noqa: F401  (fixture)
from ebplane.lab import traffic
from ebplane.lab.topology import Lab
from ebplane.net import iface, netns
from ebplane.runtime import pipeline
from ebplane.runtime.replicate import Groups

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB = """\
lab: ebp-mcast
nodes: {h1: {}, h2: {}, h3: {}, sw: {}}
links:
  - {a: h1:eth0, b: sw:p1, a_addr: [198.18.94.1/24, "2001:db8:94::1/64"]}
  - {a: h2:eth0, b: sw:p2, a_addr: [198.18.94.2/24, "2001:db8:94::2/64"]}
  - {a: h3:eth0, b: sw:p3, a_addr: [198.18.94.3/24, "2001:db8:94::3/64"]}
"""
GROUP_MAC = "01:00:5e:01:01:01"
FLOW = traffic.Flow("udp", "198.18.94.1", "239.1.1.1", 4000, 5000)
FLOW6 = traffic.Flow("udp", "2001:db8:94::1", "ff0e::1:1", 4000, 5000)


@pytest.fixture
def lab(tmp_path):
    path = tmp_path / "mc.yaml"
    path.write_text(LAB)
    lab = Lab.load(path, name=f"ebp-mc{secrets.token_hex(3)}")
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def _apply(tmp_path: Path, name: str, ns: str, stages: str, hook: str = "xdp",
           interfaces: str = "[p1, p2, p3]"):
    spec = tmp_path / f"{name}.yaml"
    mode = "mode: native\n" if hook == "xdp" else ""
    spec.write_text(f"pipeline: {name}\nhook: {hook}\n{mode}netns: {ns}\n"
                    f"interfaces: {interfaces}\nprotocols: [ethernet, ipv4, ipv6, udp]\n"
                    f"stages:\n{stages}")
    return pipeline.apply(spec)


def _deliveries(lab, flow=FLOW, dst_mac=GROUP_MAC, count=5) -> dict[str, int]:
    """Send ``count`` frames of ``flow`` from h1; frames each host received."""
    caps = {h: traffic.Capture(lab.ns(h), "eth0", flow) for h in ("h1", "h2", "h3")}
    try:
        traffic.send(lab.ns("h1"), "eth0", flow, count, dst_mac=dst_mac)
        return {h: c.wait(count if h != "h1" else 1, timeout=1.0 if h != "h1" else 0.3)
                for h, c in caps.items()}
    finally:
        for c in caps.values():
            c.close()


MC_STAGES = """\
  - multicast:
      groups:
        video: {members: [p1, p2, p3], addresses: [239.1.1.1, "ff0e::1:1"]}
"""


def test_group_reaches_every_member_but_the_ingress(ebp_env, lab, tmp_path):
    res = _apply(tmp_path, "mcast", lab.ns("sw"), MC_STAGES)
    try:
        assert _deliveries(lab) == {"h1": 0, "h2": 5, "h3": 5}
        assert _deliveries(lab, FLOW6, "33:33:00:01:00:01") == {"h1": 0, "h2": 5, "h3": 5}
        # a group address nobody listed: next stage (the end: the kernel, which drops it)
        other = traffic.Flow("udp", "198.18.94.1", "239.9.9.9", 4000, 5000)
        assert _deliveries(lab, other, "01:00:5e:09:09:09") == {"h1": 0, "h2": 0, "h3": 0}
        st = next(s for s in pipeline.stats(res.name)[0]["stages"] if s["kind"] == "multicast")
        assert st["counts"]["sent"]["packets"] == 10
        assert st["counts"]["no_group"]["packets"] >= 5
        (g,) = st["groups"]
        assert g["group"] == "video" and g["members"] == ["p1", "p2", "p3"]
        assert g["sent"]["packets"] == 10
    finally:
        pipeline.detach(res.name)


def test_members_change_live_through_cli_and_api(ebp_env, lab, tmp_path):
    res = _apply(tmp_path, "mcast", lab.ns("sw"), MC_STAGES)
    try:
        out = cli_json("groups", res.name, "remove", "video", "--member", "p3")
        assert out["members"] == ["p1", "p2"]
        assert _deliveries(lab) == {"h1": 0, "h2": 5, "h3": 0}
        Groups(res.name).add("video", members=["p3"])
        assert _deliveries(lab) == {"h1": 0, "h2": 5, "h3": 5}
        # a new group at run time, selected by its MAC only
        cli("groups", res.name, "add", "lab", "--address", "01:00:5e:7f:00:01",
            "--member", "p3")
        lab_flow = traffic.Flow("udp", "198.18.94.1", "198.18.94.255", 4000, 5000)
        assert _deliveries(lab, lab_flow, "01:00:5e:7f:00:01") == {"h1": 0, "h2": 0, "h3": 5}
        listed = {g["group"]: g for g in cli_json("groups", res.name, "list")}
        assert set(listed) == {"video", "lab"}
        assert listed["lab"]["addresses"] == ["01:00:5e:7f:00:01"]
        cli("groups", res.name, "remove", "lab")
        assert _deliveries(lab, lab_flow, "01:00:5e:7f:00:01") == {"h1": 0, "h2": 0, "h3": 0}
        # bad input changes nothing and exits 2
        bad = cli("groups", res.name, "add", "video", "--member", "nosuch0", check=False)
        assert bad.returncode == 2 and "nosuch0" in bad.stderr
        bad = cli("groups", res.name, "add", "x", "--address", "198.18.94.2", check=False)
        assert bad.returncode == 2 and "not a multicast address" in bad.stderr
        assert [g["members"] for g in Groups(res.name).list()] == [["p1", "p2", "p3"]]
        # a re-apply puts the spec's groups back (run-time changes last until then)
        Groups(res.name).remove("video", members=["p2"])
        Groups(res.name).add("extra", addresses=["broadcast"], members=["p1"])
        again = _apply(tmp_path, "mcast", lab.ns("sw"), MC_STAGES)
        assert not again.created and "mc_multicast_grp" in again.reused_maps
        assert {g["group"]: g["members"] for g in Groups(res.name).list()} == \
            {"video": ["p1", "p2", "p3"]}
        assert _deliveries(lab) == {"h1": 0, "h2": 5, "h3": 5}
        objs = cli_json("status", res.name, "-v")
        assert "mc_multicast_grp" in json.dumps(objs)
    finally:
        pipeline.detach(res.name)


def test_member_swaps_under_traffic_lose_nothing_at_a_staying_member(ebp_env, lab, tmp_path):
    res = _apply(tmp_path, "mcast", lab.ns("sw"), MC_STAGES)
    try:
        groups = Groups(res.name)
        sent = 400
        caps = {h: traffic.Capture(lab.ns(h), "eth0", FLOW) for h in ("h2", "h3")}
        try:
            def sender():
                for _ in range(sent // 20):
                    traffic.send(lab.ns("h1"), "eth0", FLOW, 20, dst_mac=GROUP_MAC)
                    time.sleep(0.005)
            t = threading.Thread(target=sender)
            t.start()
            swaps = 0
            while t.is_alive():
                groups.remove("video", members=["p3"])
                groups.add("video", members=["p3"])
                swaps += 2
            t.join()
            got = {h: c.wait(sent if h == "h2" else 1, timeout=2.0) for h, c in caps.items()}
        finally:
            for c in caps.values():
                c.close()
        assert swaps >= 4
        assert got["h2"] == sent            # a member that stays sees every frame
        assert 0 < got["h3"] <= sent         # the one that comes and goes sees some
    finally:
        pipeline.detach(res.name)


def test_broadcast_group_carries_arp_for_real_pings(ebp_env, lab, tmp_path):
    res = _apply(tmp_path, "mcbr", lab.ns("sw"), """\
  - multicast:
      groups:
        bcast: {members: [p1, p2, p3], addresses: [broadcast, "33:33:ff:00:00:02", "33:33:ff:00:00:03"]}
  - bridge: {ports: [p1, p2, p3]}
""")
    try:
        assert traffic.ping(lab.ns("h1"), "198.18.94.2", count=2) == 2
        assert traffic.ping(lab.ns("h1"), "198.18.94.3", count=2) == 2
        st = next(s for s in pipeline.stats(res.name)[0]["stages"] if s["kind"] == "multicast")
        assert st["groups"][0]["sent"]["packets"] >= 2      # the ARP requests
    finally:
        pipeline.detach(res.name)


MIRROR_FLOW = traffic.Flow("udp", "198.18.94.1", "198.18.94.2", 4000, 5001)


def _mirrored(lab, count=10, dst_mac=None) -> dict[str, int]:
    caps = {h: traffic.Capture(lab.ns(h), "eth0", MIRROR_FLOW) for h in ("h2", "h3")}
    try:
        traffic.send(lab.ns("h1"), "eth0", MIRROR_FLOW, count, dst_mac=dst_mac)
        return {h: c.wait(count, timeout=1.0) for h, c in caps.items()}
    finally:
        for c in caps.values():
            c.close()


def _mirror_counts(name: str) -> dict:
    st = next(s for s in pipeline.stats(name)[0]["stages"] if s["kind"] == "mirror")
    return {k: v["packets"] for k, v in st["counts"].items()}


def test_mirror_at_xdp_sends_copy_and_original(ebp_env, lab, tmp_path):
    res = _apply(tmp_path, "mrx", lab.ns("sw"),
                 "  - mirror: {to: p3, out: p2, match: [{proto: udp, dport: 5001}]}\n",
                 interfaces="[p1]")
    try:
        assert _mirrored(lab) == {"h2": 10, "h3": 10}
        other = traffic.Flow("udp", "198.18.94.1", "198.18.94.2", 4000, 5009)
        caps = {h: traffic.Capture(lab.ns(h), "eth0", other) for h in ("h2", "h3")}
        try:
            traffic.send(lab.ns("h1"), "eth0", other, 5)
            got = {h: c.wait(5, timeout=0.5) for h, c in caps.items()}
        finally:
            for c in caps.values():
                c.close()
        assert got == {"h2": 5, "h3": 0}    # not selected: the original only
        c = _mirror_counts(res.name)
        assert c["mirrored"] == 10 and c["not_selected"] >= 5
    finally:
        pipeline.detach(res.name)


def test_mirror_at_tc_clones_while_the_original_goes_on(ebp_env, lab, tmp_path):
    # the original goes on to sw's kernel, where a Linux bridge (p1, p2) delivers it to h2;
    # the copy leaves by p3 (not in the bridge) to h3
    sw = lab.ns("sw")
    for cmd in ("ip link add br0 type bridge", "ip link set p1 master br0",
                "ip link set p2 master br0", "ip link set br0 up"):
        netns.run(sw, cmd.split())
    res = _apply(tmp_path, "mrt", sw, "  - mirror: {to: p3, sample: 2}\n", hook="tc-ingress",
                 interfaces="[p1]")
    try:
        with netns.enter(lab.ns("h2")):
            h2_mac = iface.info("eth0").mac
        got = _mirrored(lab, count=200, dst_mac=h2_mac)
        assert got["h2"] == 200                       # the original, every one
        assert 50 < got["h3"] < 150                   # 1 in 2, sampled
        c = _mirror_counts(res.name)
        assert c["mirrored"] == got["h3"] and c["mirrored"] + c["not_sampled"] >= 200
        assert c["failed"] == 0
    finally:
        pipeline.detach(res.name)


def test_mirror_at_xdp_without_out_is_refused_naming_tc(ebp_env, lab, tmp_path):
    from ebplane.errors import SpecError
    with pytest.raises(SpecError) as e:
        _apply(tmp_path, "mrbad", lab.ns("sw"), "  - mirror: {to: p3}\n", interfaces="[p1]")
    assert "out:" in str(e.value) and "tc-ingress" in e.value.hint
    assert pipeline.status() == []
