"""The container lab: four "containers" (namespaces behind veths) on a host namespace,
forwarded by TC programs, with kernel-socket TCP and UDP from veths with their default
offloads (TX checksum offload and TSO on: the skb keeps CHECKSUM_PARTIAL at TC, so nothing
needs turning off, unlike XDP redirect).

Routed (examples/containers/topology.yaml + route.yaml): container to container, host to
container and outside (ext, behind the host's uplink) to container, IPv4 and IPv6.  The
host's own forwarding counters stay still: the TC program, not the kernel, forwarded.
Bridged (bridge-topology.yaml + bridge.yaml): containers on one segment, switched at TC.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from pipeline_fixtures import ebp_env  # noqa: F401  (fixture)
from ebplane.lab import traffic
from ebplane.lab.topology import Lab
from ebplane.net import iface, netns
from ebplane.runtime import pipeline

pytestmark = [pytest.mark.lab, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "containers"
CONTAINERS = ("c1", "c2", "c3", "c4")


def _lab(topology: str, tag: str):
    lab = Lab.load(EXAMPLES / topology, name=f"ebp-{tag}{secrets.token_hex(3)}")
    lab.up()
    return lab


@pytest.fixture
def routed():
    lab = _lab("topology.yaml", "ct")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def bridged():
    lab = _lab("bridge-topology.yaml", "cb")
    try:
        yield lab
    finally:
        lab.down()


def _apply(tmp_path: Path, example: str, ns: str, interfaces: str | None = None):
    text = "\n".join(f"netns: {ns}" if line.startswith("netns:") else
                     f"interfaces: {interfaces}" if interfaces and line.startswith("interfaces:")
                     else line for line in (EXAMPLES / example).read_text().splitlines())
    spec = tmp_path / example
    spec.write_text(text + "\n")
    return pipeline.apply(spec)


def _counts(name: str, kind: str) -> dict[str, int]:
    (st,) = [s for s in pipeline.stats(name)[0]["stages"] if s["kind"] == kind]
    return {k: v["packets"] for k, v in st["counts"].items()}


def _forwarded_by_kernel(ns: str) -> int:
    """IPv4 ForwDatagrams + Ip6OutForwDatagrams of ``ns``: packets the kernel routed on."""
    with netns.enter(ns):
        with open("/proc/thread-self/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Ip:")]
        with open("/proc/thread-self/net/snmp6") as f:
            six = dict(line.split() for line in f if line.strip())
    v4 = int(lines[1][lines[0].index("ForwDatagrams")])
    return v4 + int(six["Ip6OutForwDatagrams"])


def _offloads_on(ns: str) -> bool:
    with netns.enter(ns):
        return bool(iface.tx_checksum_offload("eth0"))


def _exchange(src: str, dst: str, addrs: list[str]) -> None:
    """UDP and TCP (300 kB echoed) to each address: every byte must come back."""
    for addr in addrs:
        assert traffic.socket_udp(src, dst, addr, count=20, size=300) == 20, (src, addr)
        assert traffic.socket_tcp(src, dst, addr, size=300_000) == 300_000, (src, addr)


def _no_csum_errors(*namespaces: str) -> None:
    for ns in namespaces:
        assert set(traffic.csum_errors(ns).values()) == {0}, ns


def _addrs(i: int) -> list[str]:
    return [f"198.18.10{i}.2", f"2001:db8:100:{i}::2"]


def test_routed_containers_forwarded_by_tc(ebp_env, routed, tmp_path):
    host, ext = routed.ns("host"), routed.ns("ext")
    cs = [routed.ns(c) for c in CONTAINERS]
    res = _apply(tmp_path, "route.yaml", host)
    try:
        # the uplink is a veth too (ext is a namespace): a peer target like the containers
        assert any("bpf_redirect_peer into the namespaces behind up0, c1, c2, c3, c4" in n
                   for n in res.notes), res.notes
        assert not any(n.startswith("checksums:") for n in res.notes)
        # container to container, both directions of each pair; offloads stay as they were
        before = _forwarded_by_kernel(host)
        for a, b in ((0, 1), (2, 3), (1, 2), (3, 0)):
            _exchange(cs[a], cs[b], _addrs(b + 1))
        assert all(_offloads_on(c) for c in cs)
        n = _counts(res.name, "route")
        assert n["peer"] > 200, n                  # data and acks, both ways (GRO merges some)
        assert n["neigh"] >= 1                     # first packets: the kernel resolved them
        assert _forwarded_by_kernel(host) - before == 0   # none went the kernel's way

        # the outside to a container and back: in from the uplink, out of it (both by peer
        # redirect here; a physical uplink takes bpf_redirect_neigh, see test_tc_forwarding)
        peer0 = n["peer"]
        _exchange(ext, cs[3], _addrs(4))
        n = _counts(res.name, "route")
        assert n["peer"] - peer0 > 50, n   # GRO merges segments: fewer, larger packets

        # the host to a container: the host's own packets leave by its output routing;
        # the container's answers meet the program, which hands them to the host's stack
        local0 = n["local"]
        _exchange(host, cs[0], _addrs(1))
        assert _counts(res.name, "route")["local"] - local0 > 20   # acks, echoes (GRO)
        _no_csum_errors(host, ext, *cs)
        assert _forwarded_by_kernel(host) - before == 0
    finally:
        pipeline.detach(res.name)
    # without the program the kernel forwards, as the baseline of `ebplane bench`
    before = _forwarded_by_kernel(host)
    _exchange(cs[0], cs[1], _addrs(2)[:1])
    assert _forwarded_by_kernel(host) - before > 50


def test_an_uplink_that_is_no_veth_takes_bpf_redirect_neigh(ebp_env, routed, tmp_path):
    """On a real host the uplink is a NIC, not a veth: routes out of it go through the
    neighbour layer.  A macvlan on up0, holding the host's uplink addresses, stands in for
    one here; the outside's frames reach the program on it (after the macvlan took them)."""
    host, ext, c4 = routed.ns("host"), routed.ns("ext"), routed.ns("c4")
    # arp_ignore: up0 must not answer ARP for mv0's address (with its own MAC, which
    # would steer the outside's frames past the macvlan and the program)
    for cmd in ("sysctl -qw net.ipv4.conf.up0.arp_ignore=1",
                "ip addr flush dev up0", "ip link add mv0 link up0 type macvlan mode bridge",
                "ip link set mv0 up", "ip addr add 198.18.100.1/24 dev mv0",
                "ip addr add 2001:db8:100::1/64 dev mv0 nodad"):
        netns.run(host, cmd.split())
    with netns.enter(host):
        iface.wait_up("mv0")
    res = _apply(tmp_path, "route.yaml", host, "[mv0, c1, c2, c3, c4]")
    try:
        assert not any("mv0" in n for n in res.notes), res.notes   # no peer target
        before = _forwarded_by_kernel(host)
        _exchange(ext, c4, _addrs(4))
        n = _counts(res.name, "route")
        assert n["forwarded"] > 20 and n["peer"] > 20, n   # out of mv0 / into c4 (GRO: few)
        assert _forwarded_by_kernel(host) - before == 0
        _no_csum_errors(ext, c4)
    finally:
        pipeline.detach(res.name)


def test_bridged_containers_switched_by_tc(ebp_env, bridged, tmp_path):
    cs = [bridged.ns(c) for c in CONTAINERS]
    res = _apply(tmp_path, "bridge.yaml", bridged.ns("host"))
    try:
        for a, b in ((0, 1), (2, 3), (1, 3)):
            _exchange(cs[a], cs[b], [f"198.18.110.{b + 1}", f"2001:db8:110::{b + 1}"])
        assert all(_offloads_on(c) for c in cs)
        n = _counts(res.name, "bridge")
        assert n["peer"] > 200, n                  # known unicast, straight into the container
        assert n["broadcast"] >= 3                 # ARP requests and IPv6 ND multicast, flooded
        assert n["learned"] == 4 and n["filtered"] == 0
        _no_csum_errors(*cs)
        fdb = {e["port"] for e in pipeline.stats(res.name)[0]["stages"][0]["fdb"]}
        assert fdb == set(CONTAINERS)
    finally:
        pipeline.detach(res.name)
