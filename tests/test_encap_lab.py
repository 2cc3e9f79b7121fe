"""encap / decap with real traffic between two namespaces (a -- b over one veth pair; b holds
the kernel VXLAN devices encap traffic goes to, a has none).

- VXLAN decap at a's XDP or tc-ingress delivers the inner packet to a socket of a;
- a tenant header (examples/tenant.p4) removed at a's XDP: a's kernel gets plain IP;
- VLAN: tagged frames popped at XDP reach b's socket; a tag pushed at a's tc-egress is seen
  by scapy listening on b;
- encap: a's tc-egress (and b's own XDP) put packets in VXLAN that b's kernel VXLAN device
  decapsulates and delivers (over IPv4 and IPv6), a TCP stream (GSO) among them.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest
from scapy.config import conf
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import bind_layers

from pipeline_fixtures import ebp_env, send_frames  # noqa: F401  (fixture)
from test_encap import Tenant
from ebplane.net import iface, netns
from ebplane.runtime import pipeline

pytestmark = [pytest.mark.lab, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
A_IP, B_IP, B_VX_IP = "198.18.200.1", "198.18.200.2", "198.18.210.2"
A_IP6, B_IP6, B_VX6_IP = "2001:db8:200::1", "2001:db8:200::2", "198.18.211.2"


class Pair:
    def __init__(self, a: str, b: str):
        self.a, self.b = a, b
        with netns.enter(a):
            self.a_mac = iface.info("va").mac
        with netns.enter(b):
            self.b_mac = iface.info("vb").mac
            self.vx_mac = iface.info("vx0").mac


@pytest.fixture(scope="module")
def pair():
    with netns.temporary("ebp-ea") as a, netns.temporary("ebp-eb") as b:
        netns.run(a.name, ["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb",
                           "netns", b.name])
        for cmd in (f"ip addr add {A_IP}/24 dev va", f"ip addr add {A_IP6}/64 dev va nodad",
                    "ip link set va up", "ip route add 198.18.210.0/24 dev va",
                    "ip route add 198.18.211.0/24 dev va"):
            netns.run(a.name, cmd.split())
        for cmd in (f"ip addr add {B_IP}/24 dev vb", f"ip addr add {B_IP6}/64 dev vb nodad",
                    "ip link set vb up",
                    # the kernel VXLAN endpoints encap traffic is sent to: over IPv4, and
                    # over IPv6 taking a zero UDP checksum (RFC 6935; what encap sends)
                    f"ip link add vx0 type vxlan id 42 local {B_IP} dstport 4789 nolearning",
                    f"ip addr add {B_VX_IP}/24 dev vx0", "ip link set vx0 up",
                    f"ip link add vx6 type vxlan id 43 local {B_IP6} dstport 4790 nolearning "
                    "udp6zerocsumrx",
                    f"ip addr add {B_VX6_IP}/24 dev vx6", "ip link set vx6 up"):
            netns.run(b.name, cmd.split())
        with netns.enter(a.name):
            iface.wait_up("va")
        with netns.enter(b.name):
            iface.wait_up("vb")
            vb_mac = iface.info("vb").mac
        # vx0 shares vb's MAC: a frame that b's XDP encapsulates must be addressed to vb
        # already, since veth keeps the packet type the kernel gave the frame before XDP
        # (another host's MAC: IP drops it after XDP_PASS, whatever the program wrote)
        for vx in ("vx0", "vx6"):
            netns.run(b.name, ["ip", "link", "set", vx, "address", vb_mac])
        p = Pair(a.name, b.name)
        for ip, mac in ((B_IP, p.b_mac), (B_VX_IP, p.vx_mac), (B_VX6_IP, p.vx_mac),
                        (B_IP6, p.b_mac)):
            netns.run(a.name, ["ip", "neigh", "replace", ip, "lladdr", mac, "dev", "va",
                               "nud", "permanent"])
        netns.run(b.name, ["ip", "neigh", "replace", A_IP, "lladdr", p.a_mac, "dev", "vb",
                           "nud", "permanent"])
        yield p


def _apply(tmp_path: Path, ns: str, ifname: str, hook: str, protocols: str, *stages: str):
    text = (f"pipeline: hdr-{secrets.token_hex(2)}\nhook: {hook}\nnetns: {ns}\n"
            f"interfaces: [{ifname}]\nprotocols: [{protocols}]\nstages:\n"
            + "".join(f"  - {s}\n" for s in stages))
    path = tmp_path / "hdr.yaml"
    path.write_text(text)
    return pipeline.apply(path).name


def _listen(ns: str, addr: str, port: int) -> socket.socket:
    with netns.enter(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(2.0)
    return s


def _recv(s: socket.socket) -> bytes | None:
    try:
        return s.recv(2048)
    except socket.timeout:
        return None


def _counts(name: str, stage: str) -> dict[str, int]:
    (st,) = [x for x in pipeline.stats(name)[0]["stages"] if x["stage"] == stage]
    return {k: v["packets"] for k, v in st["counts"].items()}


def _outer(p: Pair) -> Ether:
    return Ether(src=p.a_mac, dst=p.b_mac) / IP(src=A_IP, dst=B_IP)


@pytest.mark.parametrize("hook", ["xdp", "tc-ingress"])
def test_vxlan_decap_delivers_inner_packet_without_a_vxlan_device(pair, ebp_env, tmp_path,
                                                                    hook):
    """b sends VXLAN to a, which has no VXLAN device: a's decap hands its kernel the inner
    packet, which a socket of a receives."""
    assert netns.run(pair.a, ["ip", "-d", "link", "show", "type", "vxlan"]).stdout.strip() == ""
    port = 6000 if hook == "xdp" else 6001
    inner = (Ether(src=pair.b_mac, dst=pair.a_mac) / IP(src=B_IP, dst=A_IP)
             / UDP(sport=1234, dport=port) / b"via vxlan")
    frame = bytes(Ether(src=pair.b_mac, dst=pair.a_mac) / IP(src=B_IP, dst=A_IP)
                  / UDP(sport=50000, dport=4789) / VXLAN(vni=9) / inner)
    sock = _listen(pair.a, A_IP, port)
    try:
        send_frames(pair.b, "vb", [frame])      # no decap yet: the kernel drops it
        assert _recv(sock) is None
        name = _apply(tmp_path, pair.a, "va", hook, "ethernet, ipv4, udp, vxlan",
                      "decap: {name: untun, tunnels: [vxlan]}")
        send_frames(pair.b, "vb", [frame])
        assert _recv(sock) == b"via vxlan"
        assert _counts(name, "untun")["decapsulated"] == 1
    finally:
        sock.close()


def test_tenant_header_removed_before_the_kernel(pair, ebp_env, tmp_path):
    """b sends tenant-tagged packets (UDP 4789, examples/tenant.p4) to a, whose kernel knows
    no such header and has no tunnel device: a's XDP removes the outer headers up to the tag."""
    bind_layers(UDP, Tenant, dport=4789)
    ip = IP(src=B_IP, dst=A_IP) / UDP(sport=1, dport=6002) / b"tenant 5"
    frame = bytes(Ether(src=pair.b_mac, dst=pair.a_mac) / IP(src=B_IP, dst=A_IP)
                  / UDP(sport=999, dport=4789) / Tenant(id=5, app=3) / ip)
    sock = _listen(pair.a, A_IP, 6002)
    try:
        name = _apply(tmp_path, pair.a, "va", "xdp",
                      f"ethernet, ipv4, udp, {EXAMPLES / 'tenant.p4'}",
                      "decap: {name: untenant, header: tenant}",
                      "filter: {default: pass, rules: [{match: {tenant.id: 7}, action: drop}]}")
        send_frames(pair.b, "vb", [frame])
        assert _recv(sock) == b"tenant 5"
        assert _counts(name, "untenant")["decapsulated"] == 1
    finally:
        sock.close()


def test_vlan_pop_at_xdp_reaches_the_untagged_stack(pair, ebp_env, tmp_path):
    frame = bytes(Ether(src=pair.a_mac, dst=pair.b_mac) / Dot1Q(vlan=7)
                  / IP(src=A_IP, dst=B_IP) / UDP(sport=1, dport=6003) / b"was tagged")
    sock = _listen(pair.b, B_IP, 6003)
    try:
        send_frames(pair.a, "va", [frame])      # b has no VLAN device: dropped
        assert _recv(sock) is None
        _apply(tmp_path, pair.b, "vb", "xdp", "ethernet, vlan, ipv4, udp",
               "decap: {name: pop, tunnels: [vlan]}")
        send_frames(pair.a, "va", [frame])
        assert _recv(sock) == b"was tagged"
    finally:
        sock.close()


def test_vlan_push_at_tc_egress_seen_by_scapy(pair, ebp_env, tmp_path):
    _apply(tmp_path, pair.a, "va", "tc-egress", "ethernet, vlan, ipv4, udp",
           "encap: {name: push, tunnel: vlan, vid: 100, pcp: 2}")
    with netns.enter(pair.b):
        listen = conf.L2listen(iface="vb")
    try:
        with netns.enter(pair.a):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(3):
                    s.sendto(b"push me", (B_IP, 6004))
        seen = []
        for _ in range(10):
            pkt = listen.recv()
            if pkt is not None and UDP in pkt and pkt[UDP].dport == 6004:
                seen.append(pkt)
            if len(seen) == 3:
                break
        assert len(seen) == 3
        assert all(Dot1Q in p and p[Dot1Q].vlan == 100 and p[Dot1Q].prio == 2 for p in seen)
    finally:
        listen.close()


@pytest.mark.parametrize("where", ["tc-egress of a", "xdp of b"])
def test_encap_reaches_the_kernel_vxlan_device(pair, ebp_env, tmp_path, where):
    encap = (f"encap: {{name: tun, tunnel: vxlan, vni: 42, src: {A_IP}, dst: {B_IP}, "
             f"inner_dst: [{B_VX_IP}/32], "
             f"src_mac: '{pair.a_mac}', dst_mac: '{pair.b_mac}'}}")
    sock = _listen(pair.b, B_VX_IP, 6005)
    try:
        if where.startswith("tc"):
            name = _apply(tmp_path, pair.a, "va", "tc-egress", "ethernet, ipv4, udp", encap)
            with netns.enter(pair.a):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"into vx0", (B_VX_IP, 6005))
        else:
            # b's XDP wraps a plain frame for vx0's address and hands it to b's own kernel
            # (the frame is addressed to vb's MAC, which vx0 shares: see the fixture)
            name = _apply(tmp_path, pair.b, "vb", "xdp", "ethernet, ipv4, udp", encap)
            send_frames(pair.a, "va", [bytes(Ether(src=pair.a_mac, dst=pair.b_mac)
                                             / IP(src=A_IP, dst=B_VX_IP)
                                             / UDP(sport=7, dport=6005) / b"into vx0")])
        assert _recv(sock) == b"into vx0"
        assert _counts(name, "tun")["encapsulated"] == 1   # only the one for vx0's address
    finally:
        sock.close()



def test_encap_over_ipv6_reaches_the_kernel_vxlan_device(pair, ebp_env, tmp_path):
    encap = (f"encap: {{name: tun6, tunnel: vxlan, vni: 43, dport: 4790, src: '{A_IP6}', "
             f"dst: '{B_IP6}', inner_dst: [{B_VX6_IP}/32], "
             f"src_mac: '{pair.a_mac}', dst_mac: '{pair.b_mac}'}}")
    sock = _listen(pair.b, B_VX6_IP, 6007)
    try:
        name = _apply(tmp_path, pair.a, "va", "tc-egress", "ethernet, ipv4, ipv6, udp", encap)
        with netns.enter(pair.a):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"into vx6", (B_VX6_IP, 6007))
        assert _recv(sock) == b"into vx6"
        assert _counts(name, "tun6")["encapsulated"] == 1
    finally:
        sock.close()


def test_tcp_stream_through_tc_encap_gso(pair, ebp_env, tmp_path):
    """A TCP stream from a (TSO on: the stack hands tc-egress GSO packets of up to 64 KiB) to
    vx0's address: bpf_skb_adjust_room marks them as UDP tunnel GSO and shrinks their segment
    size, so they arrive as valid VXLAN packets; the bytes arrive intact."""
    import hashlib
    import threading
    netns.run(pair.a, ["ip", "route", "replace", "198.18.210.0/24", "dev", "va", "mtu", "1450"])
    encap = (f"encap: {{name: tun, tunnel: vxlan, vni: 42, src: {A_IP}, dst: {B_IP}, "
             f"inner_dst: [{B_VX_IP}/32], src_mac: '{pair.a_mac}', dst_mac: '{pair.b_mac}'}}")
    name = _apply(tmp_path, pair.a, "va", "tc-egress", "ethernet, ipv4, udp, tcp", encap)
    data = bytes(range(256)) * 8192       # 2 MiB
    with netns.enter(pair.b):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((B_VX_IP, 6010))
    srv.listen(1)
    srv.settimeout(10)
    got = hashlib.sha256()
    size = [0]

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(10)
        with conn:
            while chunk := conn.recv(65536):
                got.update(chunk)
                size[0] += len(chunk)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with netns.enter(pair.a):
            cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cli.settimeout(10)
        cli.connect((B_VX_IP, 6010))
        cli.sendall(data)
        cli.close()
        t.join(15)
    finally:
        srv.close()
    assert size[0] == len(data) and got.hexdigest() == hashlib.sha256(data).hexdigest()
    c = _counts(name, "tun")
    assert c["failed"] == 0 and c["too_big"] == 0
    # fewer encapsulated packets than 1398-byte segments: GSO packets were encapsulated whole
    assert 0 < c["encapsulated"] < len(data) // 1398
