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
from ebplane.runtime.groups import Groups

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
        bad = cli("groups", res.name, "add", "other", "--address", "239.1.1.1", "--member",
                  "p1", check=False)
        assert bad.returncode == 2 and "already selects group video" in bad.stderr
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
    res = _apply(tmp_path, "mrt", sw,
                 "  - mirror: {to: p3, sample: 2, match: [{proto: udp, dport: 5001}]}\n",
                 hook="tc-ingress", interfaces="[p1]")
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


def _multicast_sockets(lab, group: str, port: int, count: int, size: int = 1200) -> dict[str, int]:
    """Kernel-socket UDP to ``group``: h2 and h3 join it, h1 sends ``count`` datagrams from a
    socket with the default offloads; datagrams each receiver got intact."""
    import socket
    import struct
    rx = {}
    for h, addr in (("h2", "198.18.94.2"), ("h3", "198.18.94.3")):
        with netns.enter(lab.ns(h)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # room for the burst: a copy made by the devmap broadcast is a page-sized skb
        s.setsockopt(socket.SOL_SOCKET, traffic.SO_RCVBUFFORCE, 8 << 20)
        s.bind((group, port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(addr)))
        s.settimeout(0.5)
        rx[h] = s
    with netns.enter(lab.ns("h1")):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("198.18.94.1"))
        payload = bytes(range(256)) * (size // 256)
        for _ in range(count):
            tx.sendto(payload, (group, port))
        got = {}
        for h, s in rx.items():
            n = 0
            try:
                while n < count:
                    if s.recv(65536) == payload:
                        n += 1
            except TimeoutError:
                pass
            got[h] = n
        return got
    finally:
        tx.close()
        for s in rx.values():
            s.close()


def test_kernel_socket_multicast_arrives_with_valid_checksums(ebp_env, lab, tmp_path):
    before = {h: traffic.csum_errors(lab.ns(h)) for h in ("h2", "h3")}
    res = _apply(tmp_path, "mcast", lab.ns("sw"), MC_STAGES)
    try:
        # h1's veth peer had TX checksum offload on (a fresh veth): apply turned it off
        assert any("checksums:" in n and "tx off" in n for n in res.notes), res.notes
        got = _multicast_sockets(lab, "239.1.1.1", 5000, 50)
        assert got == {"h2": 50, "h3": 50}
        assert {h: traffic.csum_errors(lab.ns(h)) for h in ("h2", "h3")} == before
    finally:
        pipeline.detach(res.name)


def test_kernel_socket_udp_through_the_xdp_mirror(ebp_env, lab, tmp_path):
    import socket
    with netns.enter(lab.ns("h2")):
        h2_mac = iface.info("eth0").mac
    # the mirror sends everything else out of p2 too; ARP replies from h2 would reach sw's
    # kernel, not h1: h1 knows h2's MAC
    netns.run(lab.ns("h1"), ["ip", "neigh", "replace", "198.18.94.2", "lladdr", h2_mac, "dev",
                             "eth0", "nud", "permanent"])
    res = _apply(tmp_path, "mrx", lab.ns("sw"),
                 "  - mirror: {to: p3, out: p2, match: [{proto: udp, dport: 5001}]}\n",
                 interfaces="[p1]")
    with netns.enter(lab.ns("h3")):
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(traffic.ETH_P_IP))
    try:
        tap.bind(("eth0", 0))
        tap.settimeout(0.3)
        before = traffic.csum_errors(lab.ns("h2"))
        assert traffic.socket_udp(lab.ns("h1"), lab.ns("h2"), "198.18.94.2", port=5001,
                                  count=30, size=1200) == 30
        assert traffic.csum_errors(lab.ns("h2")) == before
        copies = 0
        try:
            while True:
                frame = tap.recv(65536)
                if len(frame) >= 38 and frame[23] == 17 and frame[36:38] == (5001).to_bytes(2, "big"):
                    copies += 1
        except TimeoutError:
            pass
        assert copies == 30
        assert _mirror_counts(res.name)["mirrored"] == 30
    finally:
        tap.close()
        pipeline.detach(res.name)


def _snoop_until(sn, want, seconds: float = 6.0) -> list[dict]:
    """Poll the snooper until ``want(changes so far)`` holds or ``seconds`` pass."""
    import time as _t
    changes: list[dict] = []
    end = _t.monotonic() + seconds
    while _t.monotonic() < end and not want(changes):
        changes += sn.poll(100)
    return changes


def test_snooping_learns_members_from_igmp_and_mld(ebp_env, lab, tmp_path):
    import socket
    import struct
    from ebplane.runtime.groups import Snooper, snoop_group_name
    res = _apply(tmp_path, "snoop", lab.ns("sw"), """\
  - multicast:
      snooping: true
      groups:
        known: {members: [p1], addresses: [239.7.7.7]}
""")
    flow = traffic.Flow("udp", "198.18.94.1", "239.1.2.3", 4000, 5000)
    sn = Snooper(Groups(res.name), timeout=0)
    try:
        with netns.enter(lab.ns("h2")):
            s2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s2.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                      struct.pack("4s4s", socket.inet_aton("239.1.2.3"),
                                  socket.inet_aton("198.18.94.2")))
        ch = _snoop_until(sn, lambda c: any(x["event"] == "join" for x in c))
        assert {"event": "join", "group": "239.1.2.3", "address": "239.1.2.3",
                "port": "p2"} in ch
        assert _deliveries(lab, flow, "01:00:5e:01:02:03") == {"h1": 0, "h2": 5, "h3": 0}
        # a report for an address a group already has: the port joins that group
        with netns.enter(lab.ns("h3")):
            s3 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s3.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                      struct.pack("4s4s", socket.inet_aton("239.7.7.7"),
                                  socket.inet_aton("198.18.94.3")))
        _snoop_until(sn, lambda c: any(x["group"] == "known" for x in c if "group" in x))
        assert {g["group"]: g["members"] for g in Groups(res.name).list()}["known"] == ["p1", "p3"]
        # MLDv2 from h3
        with netns.enter(lab.ns("h3")):
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                      socket.inet_pton(socket.AF_INET6, "ff0e::1:2")
                      + struct.pack("@I", _ifindex(lab, "h3")))
        mld = snoop_group_name("ff0e::1:2")
        _snoop_until(sn, lambda c: any(x.get("group") == mld for x in c))
        assert {g["group"]: g["members"] for g in Groups(res.name).list()}[mld] == ["p3"]
        # h2 leaves: the group the snooper made goes with its last member
        s2.close()
        ch = _snoop_until(sn, lambda c: any(x["event"] == "leave" for x in c))
        assert {"event": "leave", "group": "239.1.2.3", "address": "239.1.2.3",
                "port": "p2"} in ch
        assert "239.1.2.3" not in {g["group"] for g in Groups(res.name).list()}
        assert _deliveries(lab, flow, "01:00:5e:01:02:03") == {"h1": 0, "h2": 0, "h3": 0}
        s3.close()
        s6.close()
    finally:
        sn.close()
        pipeline.detach(res.name)


def _ifindex(lab, host: str) -> int:
    with netns.enter(lab.ns(host)):
        return iface.ifindex("eth0")


JUMBO_LAB = LAB.replace("lab: ebp-mcast", "lab: ebp-mcj")
for _p in ("p1", "p2", "p3"):
    JUMBO_LAB = JUMBO_LAB.replace(f"b: sw:{_p},", f"b: sw:{_p}, mtu: 9000,")


def test_jumbo_frames_to_a_group_go_to_the_kernel_not_nowhere(ebp_env, tmp_path):
    path = tmp_path / "mcj.yaml"
    path.write_text(JUMBO_LAB)
    lab = Lab.load(path, name=f"ebp-mcj{secrets.token_hex(3)}")
    lab.up()
    try:
        res = _apply(tmp_path, "mcj", lab.ns("sw"), MC_STAGES)
        try:
            assert any("multi_buffer" in n and "jumbo" in n for n in res.notes), res.notes
            flow = FLOW
            for size, want in ((3000, 5), (8000, 0)):
                caps = {h: traffic.Capture(lab.ns(h), "eth0", flow) for h in ("h2", "h3")}
                try:
                    traffic.send(lab.ns("h1"), "eth0", flow, 5, dst_mac=GROUP_MAC,
                                 payload=bytes(size))
                    got = {h: c.wait(5, timeout=1.0 if want else 0.3) for h, c in caps.items()}
                finally:
                    for c in caps.values():
                        c.close()
                assert got == {"h2": want, "h3": want}, size
            st = next(s for s in pipeline.stats(res.name)[0]["stages"] if s["kind"] == "multicast")
            assert st["counts"]["multi_buffer"]["packets"] == 5      # counted, not vanished
            assert st["counts"]["sent"]["packets"] == 5
        finally:
            pipeline.detach(res.name)
    finally:
        lab.down()


def test_multicast_at_tc_ingress_clones_to_members_jumbo_too(ebp_env, tmp_path):
    """At tc-ingress a group is walked with bpf_clone_redirect: every member but the ingress
    gets the frame, whatever its size (here 8000 bytes on MTU 9000, which a devmap broadcast
    cannot copy); members change live as at XDP."""
    path = tmp_path / "mct.yaml"
    path.write_text(JUMBO_LAB.replace("lab: ebp-mcj", "lab: ebp-mct"))
    lab = Lab.load(path, name=f"ebp-mct{secrets.token_hex(3)}")
    lab.up()
    try:
        res = _apply(tmp_path, "mct", lab.ns("sw"), MC_STAGES, hook="tc-ingress",
                     interfaces="[p1]")
        try:
            for size in (100, 8000):
                caps = {h: traffic.Capture(lab.ns(h), "eth0", FLOW) for h in ("h1", "h2", "h3")}
                try:
                    traffic.send(lab.ns("h1"), "eth0", FLOW, 5, dst_mac=GROUP_MAC,
                                 payload=bytes(size))
                    got = {h: c.wait(5 if h != "h1" else 1, timeout=1.0 if h != "h1" else 0.3)
                           for h, c in caps.items()}
                finally:
                    for c in caps.values():
                        c.close()
                assert got == {"h1": 0, "h2": 5, "h3": 5}, size
            Groups(res.name).remove("video", members=["p3"])
            assert Groups(res.name).list()[0]["members"] == ["p1", "p2"]
            assert _deliveries(lab) == {"h1": 0, "h2": 5, "h3": 0}
            st = next(s for s in pipeline.stats(res.name)[0]["stages"]
                      if s["kind"] == "multicast")
            assert st["counts"]["sent"]["packets"] == 15
            assert st["counts"]["multi_buffer"]["packets"] == 0
        finally:
            pipeline.detach(res.name)
    finally:
        lab.down()
