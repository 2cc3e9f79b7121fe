"""The conntrack stage and filter rules on `state:` (the stateful firewall): constructed
packets through BPF_PROG_TEST_RUN (handshakes, replies, ICMP errors, truncated and fragmented
packets, timeouts, a full table), then real TCP and UDP sockets through a dut."""

from __future__ import annotations

import select
import socket
import time

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, fragment, raw

from pipeline_fixtures import ebp_env, write_spec  # noqa: F401  (fixture)
from ebplane.errors import SpecError
from ebplane.lab import traffic
from ebplane.net import netns
from ebplane.runtime import pipeline
from ebplane.runtime.l4 import connections
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec

FIREWALL = """\
pipeline: sfw
hook: tc-ingress
{extra}protocols: [ethernet, ipv4, ipv6, tcp, udp, icmp, icmpv6]
stages:
  - conntrack: {{size: {size}, when_full: drop, timeouts: {{udp: 2, udp_replied: 2}}}}
  - filter:
      name: fw
      default: drop
      rules:
        - {{src: 198.18.1.0/24, action: pass}}
        - {{src: "2001:db8:1::/64", action: pass}}
        - {{state: [established, related], action: pass}}
        - {{state: new, proto: tcp, dport: 443, action: pass}}
        - {{state: untracked, action: pass}}
"""

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
C, S = "198.18.1.2", "198.18.2.2"  # inside (client), outside (server)


def _spec(size: int = 1024, extra: str = ""):
    return parse_spec(FIREWALL.format(size=size, extra=extra))


def _run(r: Replayer, pkt) -> tuple[str, int | None]:
    d = r.run(0, raw(pkt))
    return d.verdict, d.rule


def test_state_needs_a_conntrack_stage_before_the_filter():
    text = FIREWALL.format(size=8, extra="").replace("  - conntrack: {size: 8, when_full: drop, "
                                                     "timeouts: {udp: 2, udp_replied: 2}}\n", "")
    with pytest.raises(SpecError, match="needs a conntrack stage"):
        parse_spec(text)
    with pytest.raises(SpecError, match="unknown connection state"):
        parse_spec(FIREWALL.format(size=8, extra="").replace("[established, related]", "[open]"))


def test_tcp_handshake_replies_and_unsolicited_packets():
    with Replayer(_spec()) as r:
        assert _run(r, E/IP(src=S, dst=C)/TCP(sport=80, dport=40000, flags="A")) == \
            ("TC_ACT_SHOT", None)  # no connection: invalid
        assert _run(r, E/IP(src=C, dst=S)/TCP(sport=40000, dport=80, flags="S"))[0] == "TC_ACT_OK"
        # a reply that is no SYN-ACK does not establish the connection
        assert _run(r, E/IP(src=S, dst=C)/TCP(sport=80, dport=40000, flags="A"))[0] == \
            "TC_ACT_SHOT"
        assert _run(r, E/IP(src=S, dst=C)/TCP(sport=80, dport=40000, flags="SA")) == \
            ("TC_ACT_OK", 2)
        assert _run(r, E/IP(src=C, dst=S)/TCP(sport=40000, dport=80, flags="A"))[0] == "TC_ACT_OK"
        assert _run(r, E/IP(src=S, dst=C)/TCP(sport=80, dport=40000, flags="PA")) == \
            ("TC_ACT_OK", 2)
        # another port of the same hosts is not part of it
        assert _run(r, E/IP(src=S, dst=C)/TCP(sport=80, dport=40001, flags="PA"))[0] == \
            "TC_ACT_SHOT"
        # new connections from outside: only to 443
        assert _run(r, E/IP(src=S, dst=C)/TCP(sport=81, dport=22, flags="S"))[0] == "TC_ACT_SHOT"
        assert _run(r, E/IP(src=S, dst=C)/TCP(sport=81, dport=443, flags="S")) == ("TC_ACT_OK", 3)
        [conn] = [c for c in connections(r.built.map("ct_conntrack_tab"), r.spec.stages[0])
                  if c["dport"] == 80]
        assert conn["state"] == "established" and conn["packets"] == {"original": 2, "reply": 2}
        # FIN from both sides, then RST: the connection closes but its packets still pass
        assert _run(r, E/IP(src=C, dst=S)/TCP(sport=40000, dport=80, flags="FA"))[0] == "TC_ACT_OK"
        assert _run(r, E/IP(src=S, dst=C)/TCP(sport=80, dport=40000, flags="FA")) == \
            ("TC_ACT_OK", 2)
        [conn] = [c for c in connections(r.built.map("ct_conntrack_tab"), r.spec.stages[0])
                  if c["dport"] == 80]
        assert conn["state"] == "close"


def test_icmp_echo_and_errors_are_related():
    with Replayer(_spec()) as r:
        assert _run(r, E/IP(src=S, dst=C)/ICMP(type=0, id=7))[0] == "TC_ACT_SHOT"
        assert _run(r, E/IP(src=C, dst=S)/ICMP(type=8, id=7))[0] == "TC_ACT_OK"
        assert _run(r, E/IP(src=S, dst=C)/ICMP(type=0, id=7)) == ("TC_ACT_OK", 2)
        assert _run(r, E/IP(src=S, dst=C)/ICMP(type=0, id=8))[0] == "TC_ACT_SHOT"
        err = E/IP(src="198.18.2.9", dst=C)/ICMP(type=3, code=3)/IP(src=C, dst=S)/UDP(
            sport=1000, dport=53)
        assert _run(r, err)[0] == "TC_ACT_SHOT"  # about nothing tracked: invalid
        assert _run(r, E/IP(src=C, dst=S)/UDP(sport=1000, dport=53))[0] == "TC_ACT_OK"
        assert _run(r, err) == ("TC_ACT_OK", 2)  # related
        # an error whose quote is cut short is invalid
        assert _run(r, E/IP(src="198.18.2.9", dst=C)/ICMP(type=3, code=3) /
                    raw(IP(src=C, dst=S)/UDP(sport=1000, dport=53))[:22])[0] == "TC_ACT_SHOT"


def test_truncated_and_fragmented_packets():
    with Replayer(_spec()) as r:
        # a TCP header cut short is malformed: untracked, and the filter drops malformed
        cut = raw(E/IP(src=S, dst=C)/TCP(sport=80, dport=443, flags="S"))[:14 + 20 + 10]
        assert r.run(0, cut).reason == "malformed"
        # a UDP datagram in fragments from inside opens a connection with its first fragment;
        # the reply's fragments follow their first fragment's decision
        out = fragment(IP(src=C, dst=S, id=11)/UDP(sport=2000, dport=9)/(b"x" * 3000),
                       fragsize=1000)
        assert [r.run(0, raw(E/f)).verdict for f in out] == ["TC_ACT_OK"] * len(out)
        back = fragment(IP(src=S, dst=C, id=12)/UDP(sport=9, dport=2000)/(b"y" * 3000),
                        fragsize=1000)
        assert [r.run(0, raw(E/f)).verdict for f in back] == ["TC_ACT_OK"] * len(back)
        unsolicited = fragment(IP(src=S, dst=C, id=13)/UDP(sport=9, dport=2001)/(b"z" * 3000),
                               fragsize=1000)
        assert [r.run(0, raw(E/f)).verdict for f in unsolicited] == \
            ["TC_ACT_SHOT"] * len(unsolicited)


def test_a_flow_that_times_out_is_forgotten():
    with Replayer(_spec()) as r:
        assert _run(r, E/IP(src=C, dst=S)/UDP(sport=3000, dport=9))[0] == "TC_ACT_OK"
        assert _run(r, E/IP(src=S, dst=C)/UDP(sport=9, dport=3000)) == ("TC_ACT_OK", 2)
        time.sleep(2.5)  # udp_replied: 2
        assert _run(r, E/IP(src=S, dst=C)/UDP(sport=9, dport=3000))[0] == "TC_ACT_SHOT"
        counts = r.built.map("ct_conntrack_cnt")
        from ebplane.kernel.codec import COUNT, U32
        assert counts.with_codecs(U32, COUNT).lookup_sum(7).packets == 1  # expired


@pytest.mark.parametrize("prealloc", [False, True])
def test_a_full_table_refuses_new_flows_not_established_ones(prealloc):
    spec = _spec(size=4)
    if prealloc:  # the whole table allocated up front: full is full all the same
        spec = parse_spec(FIREWALL.format(size=4, extra="").replace(
            "when_full: drop,", "when_full: drop, prealloc: true,"))
        assert spec.stages[0].prealloc
    with Replayer(spec) as r:
        for port in range(4):
            assert _run(r, E/IP(src=C, dst=S)/UDP(sport=4000 + port, dport=9))[0] == "TC_ACT_OK"
        assert _run(r, E/IP(src=C, dst=S)/UDP(sport=4100, dport=9)) == ("TC_ACT_SHOT", None)
        for port in range(4):  # the tracked flows go on, both ways
            assert _run(r, E/IP(src=S, dst=C)/UDP(sport=9, dport=4000 + port)) == \
                ("TC_ACT_OK", 2)
        from ebplane.kernel.codec import COUNT, U32
        cnt = r.built.map("ct_conntrack_cnt").with_codecs(U32, COUNT)
        assert cnt.lookup_sum(5).packets == 1  # full
        # once the entries expired, the collector makes room
        time.sleep(2.5)
        assert _run(r, E/IP(src=C, dst=S)/UDP(sport=4100, dport=9))[0] == "TC_ACT_OK"
        assert cnt.lookup_sum(6).packets >= 3  # collected


# -- real connections through the dut ------------------------------------------------------------

def _udp_pair(client: str, server: str):
    with netns.enter(client):
        cs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.enter(server):
        ss = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cs.bind((C, 41000))
    ss.bind((S, 6000))
    return cs, ss


def _recv(sock: socket.socket, timeout: float) -> bytes | None:
    return sock.recv(2048) if select.select([sock], [], [], timeout)[0] else None


@pytest.mark.lab
@pytest.mark.slow
def test_stateful_firewall_with_real_connections(ebp_env, lab, tmp_path):
    client, dut, server = lab.ns("client"), lab.ns("dut"), lab.ns("server")
    spec = write_spec(tmp_path / "sfw.yaml", FIREWALL.format(
        size=1024, extra=f"netns: {dut}\ninterfaces: [eth0, eth1]\n"))
    pipeline.apply(spec)
    try:
        # connections from inside succeed, their replies pass (IPv4 and IPv6)
        assert traffic.socket_tcp(client, server, S, port=5001, size=100_000) == 100_000
        assert traffic.socket_tcp(client, server, "2001:db8:2::2", port=5002,
                                  size=50_000) == 50_000
        assert traffic.socket_udp(client, server, S, port=5003, count=10) == 10
        assert traffic.ping(client, S, 2) == 2
        # unsolicited connections from outside are dropped, except new ones to port 443
        assert traffic.socket_tcp(server, client, C, port=5004, size=1000, timeout=1.5) == 0
        assert traffic.socket_udp(server, client, C, port=5005, count=5, timeout=0.5) == 0
        assert traffic.socket_tcp(server, client, C, port=443, size=20_000) == 20_000
        # a flow that times out is forgotten: the server's late answer is dropped
        cs, ss = _udp_pair(client, server)
        with cs, ss:
            cs.sendto(b"hello", (S, 6000))
            assert _recv(ss, 2.0) == b"hello"
            ss.sendto(b"reply", (C, 41000))
            assert _recv(cs, 2.0) == b"reply"
            time.sleep(3.0)  # udp_replied: 2
            ss.sendto(b"late", (C, 41000))
            assert _recv(cs, 1.0) is None
        st = next(s for s in pipeline.stats("sfw")[0]["stages"] if s["kind"] == "conntrack")
        assert st["table"]["capacity"] == 1024
        assert 0 < st["table"]["entries"] <= 1024
        assert st["counts"]["established"]["packets"] > 20  # (GRO: few, large packets)
        # the unsolicited SYNs were new connections the filter's default dropped
        fw = next(s for s in pipeline.stats("sfw")[0]["stages"] if s["kind"] == "filter")
        assert fw["default"]["packets"] >= 2
        assert st["counts"]["expired"]["packets"] >= 1
        assert st["counts"]["full"]["packets"] == 0
    finally:
        pipeline.detach("sfw")
