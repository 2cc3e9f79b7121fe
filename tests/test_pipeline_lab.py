"""A firewall pipeline on the lab's device under test: real flows from the client to the
server through the dut, the firewall on the dut's eth0 (XDP, in the dut's namespace)."""

from __future__ import annotations

import pytest

from pipeline_fixtures import (ebp_env, filter_stats, lab_firewall, rule_counts,  # noqa: F401
                               write_spec)
from ebplane.lab import traffic
from ebplane.lab.traffic import Capture, Flow
from ebplane.net import attach as att
from ebplane.net import netns
from ebplane.runtime import pipeline

# the firewall's rules (filter acl on the DUT: pipeline_fixtures.lab_firewall)
RULES = ['{dst: 198.18.2.2, proto: udp, dport: 53, action: drop}',
         '{dst: "2001:db8:2::/64", proto: tcp, dport: "22-23", action: drop}',
         '{dst: "2001:db8:2::2", proto: tcp, dport: 80, action: pass}',
         '{src: 198.18.1.0/24, proto: udp, sport: "7000-7999", action: drop}']

# flow, frames sent, rule index that decides it (None: no rule, passes), arrives?
FLOWS = [
    (Flow("udp", "198.18.1.2", "198.18.2.2", 40000, 53), 20, 0, False),
    (Flow("udp", "198.18.1.2", "198.18.2.2", 40001, 5353), 15, None, True),
    (Flow("tcp", "2001:db8:1::2", "2001:db8:2::2", 40002, 22), 12, 1, False),
    (Flow("tcp", "2001:db8:1::2", "2001:db8:2::2", 40003, 23), 3, 1, False),
    (Flow("tcp", "2001:db8:1::2", "2001:db8:2::2", 40004, 80), 10, 2, True),
    (Flow("udp", "198.18.1.2", "198.18.2.2", 7500, 9), 8, 3, False),
    (Flow("icmp", "198.18.1.2", "198.18.2.2", 77), 5, None, True),
    (Flow("icmp", "2001:db8:1::2", "2001:db8:2::2", 78), 6, None, True),
]


@pytest.mark.lab
def test_firewall_on_the_dut(ebp_env, lab, tmp_path):
    client, dut, server = lab.ns("client"), lab.ns("dut"), lab.ns("server")
    # neighbours resolved before the firewall: no frame waits for ARP / ND below
    assert traffic.ping(client, "198.18.2.2", 1) == 1
    assert traffic.ping(client, "2001:db8:2::2", 1) == 1

    spec = write_spec(tmp_path / "fw.yaml", lab_firewall(dut, RULES))
    res = pipeline.apply(spec)
    [a] = res.attachments
    assert (a["ifname"], a["hook"]) == ("eth0", "xdp")
    with netns.enter(dut):
        assert att.query_xdp("eth0")["prog_id"] == res.prog_id
    try:
        caps = [Capture(server, "eth0", flow) for flow, *_ in FLOWS]
        try:
            for flow, n, *_ in FLOWS:
                traffic.send(client, "eth0", flow, n)
            arrived = [cap.wait(n if ok else 0, timeout=2.0 if ok else 0.2)
                       for cap, (_flow, n, _rule, ok) in zip(caps, FLOWS)]
        finally:
            for cap in caps:
                cap.close()
        assert arrived == [n if ok else 0 for _flow, n, _rule, ok in FLOWS]

        # ping still works through the firewall (ARP, ND and echo pass)
        assert traffic.ping(client, "198.18.2.2", 2) == 2
        assert traffic.ping(client, "2001:db8:2::2", 2) == 2

        s = pipeline.stats("fw")[0]
        want = [sum(n for _f, n, r, _ok in FLOWS if r == i) for i in range(4)]
        assert rule_counts(s) == want
        assert s["verdicts"]["XDP_DROP"]["packets"] == want[0] + want[1] + want[3]
        acl = filter_stats(s)
        assert acl["malformed"]["packets"] == 0
        count = next(x for x in s["stages"] if x["kind"] == "count")["counts"]
        # what no rule decided went on to the count stage: the flows above plus pings and
        # neighbour discovery
        assert count["ipv4"]["packets"] >= 15 + 5 + 2
        assert count["ipv6"]["packets"] >= 6 + 2
        assert count["all"]["packets"] == acl["default"]["packets"]
    finally:
        pipeline.detach("fw")
    with netns.enter(dut):
        assert att.query_xdp("eth0")["prog_id"] is None
