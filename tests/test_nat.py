"""The nat stage: constructed packets through both of its programs with BPF_PROG_TEST_RUN
(masquerade, replies, port allocation, port forwards, ICMP echo, checksums, truncated and
fragmented packets, timeouts, a full table), then real TCP and UDP sockets through a
masquerading dut (many clients, 10k concurrent flows, a port forward)."""

from __future__ import annotations

import ipaddress
import resource
import select
import socket
import threading
import time

import pytest
from scapy.all import (ICMP, IP, TCP, UDP, Ether, ICMPv6EchoReply, ICMPv6EchoRequest,
                       ICMPv6PacketTooBig, IPv6, IPv6ExtHdrFragment, fragment, raw)

from pipeline_fixtures import cli, ebp_env, write_spec  # noqa: F401  (fixture)
from ebplane.errors import SpecError
from ebplane.kernel.codec import COUNT, U32
from ebplane.lab import traffic
from ebplane.net import netns
from ebplane.runtime import pipeline
from ebplane.stages.nat.control import translations
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec
from ebplane.stages.nat.gen import COUNTERS, INGRESS_PROG

NAT = """\
pipeline: natp
hook: tc-egress
{extra}protocols: [ethernet, ipv4, tcp, udp, icmp]
stages:
  - nat:
      masquerade: {{from: [198.18.1.0/24], {outside}, ports: [{lo}, {hi}]}}
      forwards: [{{proto: tcp, port: 8080, to: 198.18.1.2, to_port: 80}},
                 {{proto: udp, port: 5353, to: 198.18.1.3}}]
      size: {size}
      when_full: drop
      timeouts: {{udp: {udp}}}
"""

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
C1, C2, S, OUT = "198.18.1.2", "198.18.1.3", "198.18.2.2", "198.18.2.1"


def _spec(size=1024, lo=1024, hi=32767, udp=60, outside=f"address: {OUT}", extra=""):
    return parse_spec(NAT.format(size=size, lo=lo, hi=hi, udp=udp, outside=outside,
                                 extra=extra))


def _checksums_ok(pkt) -> bool:
    """Whether the IP and L4 checksums are what scapy computes from scratch."""
    fresh = pkt.copy()
    if IP in fresh:
        del fresh[IP].chksum
    for layer in (TCP, UDP, ICMP):
        if layer in fresh and not (layer is UDP and fresh[UDP].chksum == 0):
            del fresh[layer].chksum
    for layer in (ICMPv6EchoRequest, ICMPv6EchoReply, ICMPv6PacketTooBig):
        if layer in fresh:
            del fresh[layer].cksum
    fresh = Ether(raw(fresh))
    return raw(fresh) == raw(pkt)


class Nat:
    def __init__(self, r: Replayer):
        self.r = r
        self.ingress = r.built.obj.programs[INGRESS_PROG]
        self.cnt = r.built.map("nat_nat_cnt").with_codecs(U32, COUNT)

    def out(self, pkt):
        """Egress (source translation): (verdict, packet as it leaves)."""
        d = self.r.run(0, raw(E/pkt))
        return d.verdict, Ether(d.packet)

    def into(self, pkt):
        """Ingress (destination translation)."""
        res = self.ingress.test_run(raw(E/pkt))
        return res.verdict, Ether(res.data)

    def count(self, name: str) -> int:
        return self.cnt.lookup_sum(COUNTERS.index(name)).packets


def test_spec_errors():
    with pytest.raises(SpecError, match="works at hook tc-egress only"):
        parse_spec(NAT.format(size=8, lo=1, hi=2, udp=1, outside=f"address: {OUT}", extra="")
                   .replace("tc-egress", "tc-ingress"))
    with pytest.raises(SpecError, match="not an IPv4 address"):
        _spec(outside="address: 2001:db8::1")
    with pytest.raises(SpecError, match="first port above last"):
        _spec(lo=2000, hi=1000)
    with pytest.raises(SpecError, match="needs the outside address"):
        parse_spec("pipeline: n\nhook: tc-egress\nprotocols: [ethernet, ipv4, udp]\n"
                   "stages:\n  - nat: {masquerade: {from: [198.18.1.0/24]}}\n")
    with pytest.raises(SpecError, match="port forwarded twice"):
        parse_spec("pipeline: n\nhook: tc-egress\nprotocols: [ethernet, ipv4, udp]\n"
                   "stages:\n  - nat: {address: 198.18.2.1, forwards: [{proto: udp, port: 1, "
                   "to: 198.18.1.2}, {proto: udp, port: 1, to: 198.18.1.3}]}\n")


def test_masquerade_tcp_replies_and_port_collisions():
    with Replayer(_spec()) as r:
        n = Nat(r)
        # the client's own port is kept when it is in the range and free
        v, p = n.out(IP(src=C1, dst=S)/TCP(sport=3000, dport=80, flags="S"))
        assert v == "TC_ACT_OK" and (p[IP].src, p[TCP].sport) == (OUT, 3000)
        assert _checksums_ok(p)
        # another client with the same port towards the same server gets another port
        v, p2 = n.out(IP(src=C2, dst=S)/TCP(sport=3000, dport=80, flags="S"))
        assert p2[IP].src == OUT and p2[TCP].sport != 3000 and 1024 <= p2[TCP].sport <= 32767
        assert _checksums_ok(p2)
        # ... and a port outside the range is replaced by one inside it
        v, p3 = n.out(IP(src=C1, dst=S)/TCP(sport=40000, dport=80, flags="S"))
        assert 1024 <= p3[TCP].sport <= 32767
        # replies go back to the right client and port
        for sent, (client, cport) in ((p, (C1, 3000)), (p2, (C2, 3000)), (p3, (C1, 40000))):
            v, back = n.into(IP(src=S, dst=OUT)/TCP(sport=80, dport=sent[TCP].sport,
                                                     flags="SA")/b"hello")
            assert v == "TC_ACT_OK" and (back[IP].dst, back[TCP].dport) == (client, cport)
            assert _checksums_ok(back) and back[TCP].load == b"hello"
        # the same flow keeps its translation
        v, again = n.out(IP(src=C2, dst=S)/TCP(sport=3000, dport=80, flags="A")/b"data")
        assert again[TCP].sport == p2[TCP].sport and _checksums_ok(again)
        # an unknown reply, and a source not masqueraded, are left alone
        v, q = n.into(IP(src=S, dst=OUT)/TCP(sport=80, dport=999, flags="A"))
        assert (q[IP].dst, q[TCP].dport) == (OUT, 999)
        v, q = n.out(IP(src=OUT, dst=S)/TCP(sport=999, dport=80, flags="S"))
        assert (q[IP].src, q[TCP].sport) == (OUT, 999)
        assert n.count("new_snat") == 3 and n.count("translated_in") == 3
        assert n.count("untranslated_in") == 1 and n.count("untranslated_out") == 1
        conns = translations(r.built.map("nat_nat_tab"))
        assert len(conns) == 3 and {c["state"] for c in conns} == {"replied"}
        assert {c["inside"] for c in conns} == {f"{C1}:3000", f"{C2}:3000", f"{C1}:40000"}


def test_udp_checksums_and_icmp_echo_identifiers():
    with Replayer(_spec()) as r:
        n = Nat(r)
        v, p = n.out(IP(src=C1, dst=S)/UDP(sport=5000, dport=53)/b"query")
        assert p[IP].src == OUT and _checksums_ok(p)
        # a UDP datagram without checksum (0) keeps none
        nocsum = IP(src=C1, dst=S)/UDP(sport=5001, dport=53, chksum=0)/b"x"
        v, p0 = n.out(nocsum)
        assert p0[UDP].chksum == 0 and p0[IP].src == OUT
        v, back = n.into(IP(src=S, dst=OUT)/UDP(sport=53, dport=p[UDP].sport)/b"answer")
        assert (back[IP].dst, back[UDP].dport) == (C1, 5000) and _checksums_ok(back)
        # echo requests of two clients with one identifier: distinct identifiers outside
        v, e1 = n.out(IP(src=C1, dst=S)/ICMP(type=8, id=77, seq=1)/b"ping")
        v, e2 = n.out(IP(src=C2, dst=S)/ICMP(type=8, id=77, seq=1)/b"ping")
        assert e1[IP].src == e2[IP].src == OUT and e1[ICMP].id != e2[ICMP].id
        assert _checksums_ok(e1) and _checksums_ok(e2)
        for req, client in ((e1, C1), (e2, C2)):
            v, rep = n.into(IP(src=S, dst=OUT)/ICMP(type=0, id=req[ICMP].id, seq=1)/b"ping")
            assert rep[IP].dst == client and rep[ICMP].id == 77 and _checksums_ok(rep)



def _quote_ok(pkt) -> bool:
    """The ICMP error's own checksums (outer IP, ICMP) and its quoted IP header's."""
    quoted = IP(raw(pkt[ICMP].payload)[:20])
    fresh = IP(raw(quoted))
    del fresh.chksum
    return _checksums_ok(pkt) and IP(raw(fresh)).chksum == quoted.chksum


def test_icmp_errors_about_translated_flows():
    with Replayer(_spec()) as r:
        n = Nat(r)
        v, p = n.out(IP(src=C1, dst=S)/UDP(sport=40001, dport=53)/b"query")
        port = p[UDP].sport
        # from outside (port unreachable, fragmentation needed): back to the client, the
        # quote as the client sent it
        for icmp in (ICMP(type=3, code=3), ICMP(type=3, code=4, nexthopmtu=1400),
                     ICMP(type=11, code=0)):
            err = IP(src="198.18.2.9", dst=OUT)/icmp/raw(p[IP])[:28]
            v, q = n.into(err)
            quoted = IP(raw(q[ICMP].payload)[:20] + raw(q[ICMP].payload)[20:28])
            assert q[IP].dst == C1 and quoted.src == C1 and quoted[UDP].sport == 40001
            assert quoted.dst == S and quoted[UDP].dport == 53 and _quote_ok(q)
        assert n.count("icmp_error") == 3
        # about an echo request: the identifier goes back too
        v, e = n.out(IP(src=C2, dst=S)/ICMP(type=8, id=99)/b"ping")
        err = IP(src="198.18.2.9", dst=OUT)/ICMP(type=11)/raw(e[IP])[:28]
        v, q = n.into(err)
        assert q[IP].dst == C2 and IP(raw(q[ICMP].payload))[ICMP].id == 99 and _quote_ok(q)
        # from inside about a forwarded flow: the inside server's error leaves from the
        # outside address, quoting what the remote end sent
        n.into(IP(src=S, dst=OUT)/UDP(sport=7000, dport=5353)/b"x")
        err = IP(src=C2, dst=S)/ICMP(type=3, code=3)/raw(IP(src=S, dst=C2)/UDP(
            sport=7000, dport=5353)/b"x")[:28]
        v, q = n.out(err)
        quoted = IP(raw(q[ICMP].payload))
        assert q[IP].src == OUT and (quoted.dst, quoted[UDP].dport) == (OUT, 5353)
        assert _quote_ok(q)
        # an error about nothing translated is left as it is
        stray = IP(src="198.18.2.9", dst=OUT)/ICMP(type=3, code=3)/raw(
            IP(src=OUT, dst=S)/UDP(sport=9, dport=9))[:28]
        assert raw(n.into(stray)[1]) == raw(E/stray)
        assert n.count("icmp_error") == 5 and n.count("untranslated_in") >= 1


def test_port_forwards():
    with Replayer(_spec()) as r:
        n = Nat(r)
        # only a SYN opens a forwarded TCP connection
        v, q = n.into(IP(src=S, dst=OUT)/TCP(sport=5555, dport=8080, flags="A"))
        assert q[IP].dst == OUT
        v, q = n.into(IP(src=S, dst=OUT)/TCP(sport=5555, dport=8080, flags="S"))
        assert (q[IP].dst, q[TCP].dport, q[IP].src) == (C1, 80, S) and _checksums_ok(q)
        # the inside server's answer leaves from the outside address and the forwarded port
        v, a = n.out(IP(src=C1, dst=S)/TCP(sport=80, dport=5555, flags="SA"))
        assert (a[IP].src, a[TCP].sport, a[IP].dst) == (OUT, 8080, S) and _checksums_ok(a)
        v, q = n.into(IP(src=S, dst=OUT)/TCP(sport=5555, dport=8080, flags="A")/b"GET")
        assert (q[IP].dst, q[TCP].dport) == (C1, 80)
        # UDP: to_port defaults to the port
        v, q = n.into(IP(src=S, dst=OUT)/UDP(sport=7, dport=5353)/b"mdns")
        assert (q[IP].dst, q[UDP].dport) == (C2, 5353) and _checksums_ok(q)
        # a port not forwarded is left to the dut itself
        v, q = n.into(IP(src=S, dst=OUT)/TCP(sport=5555, dport=22, flags="S"))
        assert q[IP].dst == OUT
        assert n.count("new_dnat") == 2
        assert {c["kind"] for c in translations(r.built.map("nat_nat_tab"))} == {"dnat"}


def test_truncated_and_fragmented_packets():
    with Replayer(_spec()) as r:
        n = Nat(r)
        cut = raw(E/IP(src=C1, dst=S)/TCP(sport=80, dport=443, flags="S"))[:14 + 20 + 10]
        d = r.run(0, cut)
        assert d.verdict == "TC_ACT_OK" and d.packet == cut  # left unchanged
        assert n.count("malformed") == 1
        # a datagram in fragments: the first carries the ports, the others follow it
        frags = fragment(IP(src=C1, dst=S, id=4242)/UDP(sport=6000, dport=9)/(b"x" * 3000),
                         fragsize=1000)
        outs = [n.out(f)[1] for f in frags]
        assert [o[IP].src for o in outs] == [OUT] * len(frags)
        assert all(_checksums_ok(o) for o in outs[1:])  # (a first fragment's UDP checksum
        # covers the whole datagram: checked on the reassembly below)
        port = outs[0][UDP].sport
        whole = IP(raw(IP(src=OUT, dst=S, id=4242)/UDP(sport=port, dport=9)/(b"x" * 3000)))
        assert raw(outs[0][IP])[26:28] == whole[UDP].chksum.to_bytes(2, "big")
        port = outs[0][UDP].sport
        back = fragment(IP(src=S, dst=OUT, id=99)/UDP(sport=9, dport=port)/(b"y" * 3000),
                        fragsize=1000)
        ins = [n.into(f)[1] for f in back]
        assert [i[IP].dst for i in ins] == [C1] * len(back)
        assert n.count("fragments") == 2 * (len(frags) - 1)
        # later fragments whose first fragment was not translated are left alone
        stray = fragment(IP(src=S, dst=OUT, id=100)/UDP(sport=9, dport=port)/(b"z" * 3000),
                         fragsize=1000)[1]
        assert n.into(stray)[1][IP].dst == OUT and n.count("frag_unknown") == 1


def test_a_translation_that_times_out_is_forgotten():
    with Replayer(_spec(udp=1)) as r:
        n = Nat(r)
        v, p = n.out(IP(src=C1, dst=S)/UDP(sport=5000, dport=53))
        assert n.into(IP(src=S, dst=OUT)/UDP(sport=53, dport=p[UDP].sport))[1][IP].dst == C1
        time.sleep(1.5)
        assert n.into(IP(src=S, dst=OUT)/UDP(sport=53, dport=p[UDP].sport))[1][IP].dst == OUT
        assert n.count("expired") == 1
        assert translations(r.built.map("nat_nat_tab")) == []


@pytest.mark.parametrize("prealloc", [False, True])
def test_a_full_table_refuses_new_flows_not_established_ones(prealloc):
    spec = _spec(size=2, udp=1)
    if prealloc:
        spec = parse_spec(NAT.format(size=2, lo=1024, hi=32767, udp=1,
                                     outside=f"address: {OUT}", extra="")
                          .replace("when_full: drop", "when_full: drop\n      prealloc: true"))
        assert spec.stages[0].prealloc
    with Replayer(spec) as r:
        n = Nat(r)
        ports = [n.out(IP(src=C1, dst=S)/UDP(sport=5000 + i, dport=53))[1][UDP].sport
                 for i in range(2)]
        v, p = n.out(IP(src=C1, dst=S)/UDP(sport=5002, dport=53))
        assert v == "TC_ACT_SHOT" and n.count("full") == 1  # never leaves untranslated
        for i, port in enumerate(ports):  # the translated flows go on, both ways
            assert n.out(IP(src=C1, dst=S)/UDP(sport=5000 + i, dport=53))[0] == "TC_ACT_OK"
            assert n.into(IP(src=S, dst=OUT)/UDP(sport=53, dport=port))[1][UDP].dport == \
                5000 + i
        time.sleep(1.5)  # expired: the collector makes room
        v, p = n.out(IP(src=C1, dst=S)/UDP(sport=5002, dport=53))
        assert v == "TC_ACT_OK" and p[IP].src == OUT and n.count("collected") >= 2


def test_a_small_port_range_runs_out_without_collisions():
    with Replayer(_spec(lo=2000, hi=2003)) as r:
        n = Nat(r)
        got = [n.out(IP(src=C1, dst=S)/UDP(sport=7000 + i, dport=53)) for i in range(6)]
        used = [p[UDP].sport for v, p in got if v == "TC_ACT_OK"]
        assert sorted(used) == [2000, 2001, 2002, 2003]
        assert n.count("no_port") == 2
        # towards another server the same ports are free again
        v, p = n.out(IP(src=C1, dst="198.18.2.3")/UDP(sport=7000, dport=53))
        assert v == "TC_ACT_OK" and 2000 <= p[UDP].sport <= 2003


# -- real connections through a masquerading dut ---------------------------------------------

CLIENTS = [f"198.18.1.{10 + i}" for i in range(20)]


def _tcp_echo_server(ns: str, addr: str, port: int, n: int, peers: list, stop: threading.Event):
    """Accept ``n`` connections at addr:port in ``ns``; echo each; record the peers."""
    with netns.enter(ns):
        ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET,
                           socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(64)
    ls.settimeout(5.0)

    def serve():
        with ls:
            for _ in range(n):
                try:
                    conn, peer = ls.accept()
                except OSError:
                    return
                peers.append(peer)
                with conn:
                    conn.settimeout(10.0)
                    try:
                        while data := conn.recv(1024):
                            conn.sendall(data)
                    except OSError:
                        pass
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.lab
@pytest.mark.slow
def test_masquerade_and_port_forward_with_real_connections(ebp_env, lab, tmp_path):
    client, dut, server = lab.ns("client"), lab.ns("dut"), lab.ns("server")
    for a in CLIENTS:  # (the lab lives for the module: the other test may have added them)
        netns.run(client, ["ip", "addr", "add", f"{a}/24", "dev", "eth0"], check=False)
    text = NAT.format(size=16384, lo=1024, hi=32767, udp=60, outside="interface: eth1",
                      extra=f"netns: {dut}\ninterfaces: [eth1]\n")
    text = text.replace("protocols: [ethernet, ipv4, tcp, udp, icmp]",
                        "protocols: [ethernet, ipv4, ipv6, tcp, udp, icmp, icmpv6]")
    text = text.replace("from: [198.18.1.0/24]", 'from: [198.18.1.0/24, "2001:db8:1::/64"]')
    spec = write_spec(tmp_path / "nat.yaml", text)
    pipeline.apply(spec)
    try:
        # NAT66: the server sees the dut's IPv6 address (the interface's global one)
        peers6: list = []
        srv = _tcp_echo_server(server, "2001:db8:2::2", 7006, 1, peers6, threading.Event())
        with netns.enter(client):
            cs = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        with cs:
            cs.settimeout(5.0)
            cs.connect(("2001:db8:2::2", 7006))
            cs.sendall(b"over IPv6")
            assert cs.recv(1024) == b"over IPv6"
        srv.join(10)
        assert peers6 and peers6[0][0] == "2001:db8:2::1"
        assert traffic.socket_tcp(client, server, "2001:db8:2::2", port=7007,
                                  size=200_000) == 200_000
        # many clients, one source port: the server sees the dut only, on distinct ports
        peers: list = []
        srv = _tcp_echo_server(server, S, 7000, len(CLIENTS), peers, threading.Event())
        for a in CLIENTS:
            with netns.enter(client):
                cs = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with cs:
                cs.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                cs.bind((a, 20000))
                cs.settimeout(5.0)
                cs.connect((S, 7000))
                cs.sendall(a.encode())
                assert cs.recv(1024) == a.encode()  # the reply reached the right client
        srv.join(10)
        assert len(peers) == len(CLIENTS)
        assert {p[0] for p in peers} == {OUT}
        assert len({p[1] for p in peers}) == len(CLIENTS)
        # bulk TCP in both directions through the translation (GSO, offloaded checksums)
        assert traffic.socket_tcp(client, server, S, port=7002, size=300_000) == 300_000
        assert traffic.ping(client, S, 2) == 2
        # the server's "port unreachable" comes back through the translation (ICMP errors)
        with netns.enter(client):
            us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with us:
            us.settimeout(2.0)
            us.connect((S, 9999))
            us.send(b"anyone?")
            with pytest.raises(ConnectionRefusedError):
                us.recv(64)
        # a re-apply (another timeout: a new program, the same table) keeps the translations:
        # an open connection goes on
        peers_r: list = []
        srv = _tcp_echo_server(server, S, 7011, 1, peers_r, threading.Event())
        with netns.enter(client):
            cs = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with cs:
            cs.settimeout(5.0)
            cs.connect((S, 7011))
            cs.sendall(b"before")
            assert cs.recv(1024) == b"before"
            write_spec(tmp_path / "nat.yaml", text.replace("udp: 60", "udp: 61"))
            res = pipeline.apply(tmp_path / "nat.yaml")
            assert any("nat_nat_tab" in m for m in res.reused_maps)
            cs.sendall(b"after")
            assert cs.recv(1024) == b"after"
        srv.join(10)
        # a port forward reaches the inside server, which sees the real remote end
        inside: list = []
        srv = _tcp_echo_server(client, C1, 80, 1, inside, threading.Event())
        with netns.enter(server):
            cs = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with cs:
            cs.settimeout(5.0)
            cs.connect((OUT, 8080))
            cs.sendall(b"forwarded")
            assert cs.recv(1024) == b"forwarded"
        srv.join(10)
        assert inside and inside[0][0] == S
        st = next(s for s in pipeline.stats("natp")[0]["stages"] if s["kind"] == "nat")
        assert st["address"] == OUT and st["address6"] == "2001:db8:2::1"
        assert st["table"]["capacity"] == 16384
        assert st["table"]["by_kind"]["snat"] >= len(CLIENTS) + 2
        assert st["table"]["by_kind"]["dnat"] == 1
        out = cli("stats", "natp").stdout  # the text form names the table and the counters
        assert "of 16384 entries, when full: drop" in out and "new_snat" in out
        assert st["counts"]["full"]["packets"] == 0 and st["counts"]["no_port"]["packets"] == 0
    finally:
        pipeline.detach("natp")


@pytest.mark.lab
@pytest.mark.slow
def test_10k_concurrent_udp_flows_without_port_collisions(ebp_env, lab, tmp_path):
    """20 client addresses x 500 source ports (the same 500 on each address) = 10k flows,
    all open at once; the server sees 10k distinct ports of the dut's address and each
    client gets its own answer."""
    client, dut, server = lab.ns("client"), lab.ns("dut"), lab.ns("server")
    for a in CLIENTS:
        netns.run(client, ["ip", "addr", "add", f"{a}/24", "dev", "eth0"], check=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 12000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 12000), hard))
    spec = write_spec(tmp_path / "nat.yaml", NAT.format(
        size=16384, lo=1024, hi=32767, udp=120, outside="interface: eth1",
        extra=f"netns: {dut}\ninterfaces: [eth1]\n"))
    pipeline.apply(spec)
    socks: list[socket.socket] = []
    with netns.enter(server):
        ss = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seen: dict[tuple[str, int], bytes] = {}
    stop = threading.Event()

    def echo():
        ss.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = ss.recvfrom(64)
            except OSError:
                continue
            seen[peer] = data
            ss.sendto(data, peer)
    try:
        ss.bind((S, 7001))
        t = threading.Thread(target=echo, daemon=True)
        t.start()
        with netns.enter(client):
            for a in CLIENTS:
                for port in range(21000, 21500):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.bind((a, port))
                    s.settimeout(2.0)
        answered = 0
        for start in range(0, len(socks), 250):  # in batches: the server's buffer is small
            batch = socks[start:start + 250]
            for i, s in enumerate(batch, start):
                s.sendto(str(i).encode(), (S, 7001))
            for i, s in enumerate(batch, start):
                for attempt in range(3):
                    try:
                        if s.recv(64) == str(i).encode():  # its own answer
                            answered += 1
                        break
                    except socket.timeout:
                        s.sendto(str(i).encode(), (S, 7001))  # lost in a queue: again
        assert answered == len(socks) == 10_000
        assert {p[0] for p in seen} == {OUT}
        assert len(seen) == 10_000  # 10k distinct ports: no collision
        assert sorted(int(v) for v in seen.values()) == list(range(10_000))
        st = next(s for s in pipeline.stats("natp")[0]["stages"] if s["kind"] == "nat")
        assert st["table"]["entries"] >= 10_000  # all at once
        assert st["counts"]["new_snat"]["packets"] >= 10_000
        assert st["counts"]["no_port"]["packets"] == 0 and st["counts"]["full"]["packets"] == 0
    finally:
        stop.set()
        for s in socks:
            s.close()
        ss.close()
        pipeline.detach("natp")


# -- NAT66 -----------------------------------------------------------------------------------

NAT6 = """\
pipeline: nat6
hook: tc-egress
protocols: [ethernet, ipv4, ipv6, tcp, udp, icmp, icmpv6]
stages:
  - nat:
      masquerade: {from: [198.18.1.0/24, "2001:db8:1::/64"], address: 198.18.2.1,
                   address6: "2001:db8:2::1"}
      forwards: [{proto: tcp, port: 8080, to: "2001:db8:1::2", to_port: 80}]
"""
C6, C6B, S6, OUT6 = "2001:db8:1::2", "2001:db8:1::3", "2001:db8:2::2", "2001:db8:2::1"


def test_spec_errors_nat66():
    with pytest.raises(SpecError, match="no outside IPv6 address"):
        parse_spec(NAT6.replace(',\n                   address6: "2001:db8:2::1"', ""))
    with pytest.raises(SpecError, match="needs ipv6"):
        parse_spec(NAT6.replace("ipv6, ", "").replace(", icmpv6", ""))
    with pytest.raises(SpecError, match="not an IPv6 address"):
        parse_spec(NAT6.replace('"2001:db8:2::1"', "198.18.2.1"))


def test_nat66_masquerade_forward_icmpv6():
    with Replayer(parse_spec(NAT6)) as r:
        n = Nat(r)
        # TCP from two clients with one port: distinct outside ports, checksums right
        v, p = n.out(IPv6(src=C6, dst=S6)/TCP(sport=3000, dport=80, flags="S"))
        v, p2 = n.out(IPv6(src=C6B, dst=S6)/TCP(sport=3000, dport=80, flags="S"))
        assert p[IPv6].src == p2[IPv6].src == OUT6 and p[TCP].sport != p2[TCP].sport
        assert _checksums_ok(p) and _checksums_ok(p2)
        v, back = n.into(IPv6(src=S6, dst=OUT6)/TCP(sport=80, dport=p2[TCP].sport, flags="SA"))
        assert (back[IPv6].dst, back[TCP].dport) == (C6B, 3000) and _checksums_ok(back)
        # UDP, and IPv4 alongside in the same table
        v, u = n.out(IPv6(src=C6, dst=S6)/UDP(sport=5000, dport=53)/b"q")
        assert u[IPv6].src == OUT6 and _checksums_ok(u)
        v, u4 = n.out(IP(src=C1, dst=S)/UDP(sport=5000, dport=53)/b"q")
        assert u4[IP].src == OUT and _checksums_ok(u4)
        # ICMPv6 echo: identifier and the checksum (which covers the addresses)
        v, e = n.out(IPv6(src=C6, dst=S6)/ICMPv6EchoRequest(id=7, seq=1))
        assert e[IPv6].src == OUT6 and _checksums_ok(e)
        v, er = n.into(IPv6(src=S6, dst=OUT6)/ICMPv6EchoReply(id=e[ICMPv6EchoRequest].id,
                                                               seq=1))
        assert er[IPv6].dst == C6 and er[ICMPv6EchoReply].id == 7 and _checksums_ok(er)
        # packet too big from a router outside: back to the client, quote translated
        ptb = IPv6(src="2001:db8:2::9", dst=OUT6)/ICMPv6PacketTooBig(mtu=1280)/raw(u[IPv6])[:48]
        v, q = n.into(ptb)
        quoted = IPv6(raw(q[ICMPv6PacketTooBig].payload))
        assert q[IPv6].dst == C6 and quoted.src == C6 and quoted[UDP].sport == 5000
        assert _checksums_ok(q) and n.count("icmp_error") == 1
        # a port forward to an inside IPv6 server
        v, f = n.into(IPv6(src=S6, dst=OUT6)/TCP(sport=6000, dport=8080, flags="S"))
        assert (f[IPv6].dst, f[TCP].dport) == (C6, 80) and _checksums_ok(f)
        v, a = n.out(IPv6(src=C6, dst=S6)/TCP(sport=80, dport=6000, flags="SA"))
        assert (a[IPv6].src, a[TCP].sport) == (OUT6, 8080) and _checksums_ok(a)
        # extension headers (a fragment) are not translated: left as they are, counted
        frag = IPv6(src=C6, dst=S6)/IPv6ExtHdrFragment(id=5)/UDP(sport=1, dport=2)/b"x"
        assert n.out(frag)[1][IPv6].src == C6 and n.count("untranslated_out") >= 1
        fams = {c["family"] for c in translations(r.built.map("nat_nat_tab"))}
        assert fams == {4, 6}


def test_tcp_close_shortens_the_translation():
    spec = parse_spec(NAT.format(size=64, lo=1024, hi=32767, udp=60, outside=f"address: {OUT}",
                                 extra="").replace("timeouts: {udp: 60}",
                                                   "timeouts: {udp: 60, tcp_close: 1}"))
    with Replayer(spec) as r:
        n = Nat(r)
        v, p = n.out(IP(src=C1, dst=S)/TCP(sport=3333, dport=80, flags="S"))
        n.into(IP(src=S, dst=OUT)/TCP(sport=80, dport=p[TCP].sport, flags="SA"))
        [c] = translations(r.built.map("nat_nat_tab"))
        assert c["state"] == "replied"
        n.out(IP(src=C1, dst=S)/TCP(sport=3333, dport=80, flags="FA"))
        [c] = translations(r.built.map("nat_nat_tab"))
        assert c["state"] == "closing"
        time.sleep(1.5)  # tcp_close: 1 (both directions' entries)
        v, q = n.into(IP(src=S, dst=OUT)/TCP(sport=80, dport=p[TCP].sport, flags="A"))
        assert q[IP].dst == OUT and n.count("expired") == 1
        assert translations(r.built.map("nat_nat_tab")) == []


def test_generated_structs_match_the_layouts(tmp_path):
    """The nat stage's structs, defined once as Layouts in gen.py, compile to the offsets the
    control plane's codecs use (BTF of the compiled object)."""
    import json
    import subprocess

    from ebplane.codegen.pipeline import generate
    from ebplane.kernel.codec import Packed
    from ebplane.stages.nat import gen as nat_gen
    from ebplane.toolchain.clang import compile_c

    prog = generate(parse_spec(NAT6))
    anchors = "".join(f"struct {t.name} *ebp_anchor_{t.name};\n" for t in nat_gen.LAYOUTS)
    path = tmp_path / "nat.o"
    path.write_bytes(compile_c(prog.source + anchors, name="natlayouts").elf)
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(path)], check=True,
                         capture_output=True, text=True).stdout
    btf = {t["name"]: t for t in json.loads(out)["types"] if t["kind"] == "STRUCT"}
    for layout in nat_gen.LAYOUTS:
        assert layout in prog.types.values()
        got = btf[layout.name]
        assert [(m["name"], m["bits_offset"] // 8) for m in got["members"]] == \
            list(zip((f.name for f in layout.fields), layout.offsets))
        assert got["size"] == layout.size == Packed(layout).size
