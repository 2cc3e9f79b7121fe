"""The balancer stage under BPF_PROG_TEST_RUN: encapsulated output checked byte by byte
against scapy's (IPIP and GUE, outer IPv4 and IPv6), Maglev spread and disruption, the
connection table across backend changes, health, fragments, truncated frames, packet too
big (answered) and ICMP too-big to a VIP (sent on to its flow's backend).

The program runs in a throw-away namespace with routes and neighbours toward the backends,
so bpf_fib_lookup answers as on a real balancer."""

from __future__ import annotations

import collections

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (ICMPv6PacketTooBig, IPv6, IPv6ExtHdrFragment,
                                fragment6)
from scapy.layers.l2 import Ether

from pipeline_fixtures import (EBPLANE, cli, cli_json, ebp_env, ebp_module_env,  # noqa: F401
                               write_spec)
from ebplane.runtime import pipeline
from ebplane.errors import SpecError, UsageError
from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.programs import XdpMd
from ebplane.net import iface, netns
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec
from ebplane.stages.balancer import maglev
from ebplane.stages.balancer.control import Balancer
from ebplane.stages.balancer.gen import COUNTERS, LAYOUTS, map_names

NEXT_HOP_MAC = "02:00:00:00:00:02"
CLIENT_MAC = "02:00:00:00:00:09"
SETUP = [
    "sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1",
    "ip link add up0 type veth peer name up1", "ip link set up0 up", "ip link set up1 up",
    "ip link add dn0 type veth peer name dn1", "ip link set dn0 up", "ip link set dn1 up",
    "ip addr add 198.18.0.1/24 dev up0", "ip addr add 2001:db8::1/64 dev up0 nodad",
    "ip addr add 198.18.5.1/24 dev dn0",
    f"ip neigh add 198.18.0.2 lladdr {NEXT_HOP_MAC} dev up0 nud permanent",
    f"ip neigh add 2001:db8::2 lladdr {NEXT_HOP_MAC} dev up0 nud permanent",
    f"ip neigh add 198.18.5.2 lladdr {NEXT_HOP_MAC} dev dn0 nud permanent",
    "ip route add 198.18.20.0/24 via 198.18.0.2",
    "ip -6 route add 2001:db8:20::/64 via 2001:db8::2",
    "ip route add 198.18.21.0/24 via 198.18.5.2",           # another interface: redirect
    "ip route add 198.18.22.0/24 via 198.18.0.3",           # no neighbour entry: the stack
]

SPEC = """\
pipeline: lbt
hook: xdp
protocols: [ethernet, ipv4, ipv6, tcp, udp, icmp, icmpv6]
stages:
  - balancer:
      name: lb
      encap: {encap}
      source: {{ipv4: 198.18.0.1, ipv6: "2001:db8::1"}}
      table_size: {size}
      mtu: {mtu}
      vips:
{vips}
"""
VIP4 = "198.18.10.1"
VIP6 = "2001:db8:10::1"
CLIENT4 = "198.18.1.2"
CLIENT6 = "2001:db8:1::2"


def spec_text(vips: list[str], encap: str = "ipip", size: int = 4099, mtu: int = 1500) -> str:
    return SPEC.format(encap=encap, size=size, mtu=mtu,
                       vips="".join(f"        - {v}\n" for v in vips))


@pytest.fixture(scope="module")
def lbns(ebp_module_env):
    with netns.temporary() as ns:
        for cmd in SETUP:
            netns.run(ns.name, cmd.split())
        with netns.enter(ns.name):
            for dev in ("up0", "dn0"):
                iface.wait_up(dev)
        yield ns.name


class LB:
    """A balancer pipeline loaded for replay in the namespace; frames arrive on up0."""

    def __init__(self, ns: str, text: str):
        self.ns = ns
        self.spec = parse_spec(text)
        self.stage = self.spec.stages[0]
        with netns.enter(ns):
            self.rp = Replayer(self.spec)
            self.ifindex = iface.ifindex("up0")
            self.mac = iface.info("up0").mac
        self.lb = Balancer(self.rp.built.map, self.stage)

    def __call__(self, frame) -> tuple[str, bytes]:
        data = bytes(frame)
        with netns.enter(self.ns):
            res = self.rp.program.test_run(
                data, ctx=XdpMd(data_end=len(data), ingress_ifindex=self.ifindex),
                out_size=len(data) + 256)
        return res.verdict, res.data

    def counts(self) -> dict[str, int]:
        m = self.rp.built.map(map_names(self.stage.name)["counters"]).with_codecs(U32, COUNT)
        return {n: m.lookup_sum(i).packets for i, n in enumerate(COUNTERS)}

    def close(self) -> None:
        self.rp.close()


@pytest.fixture
def make(lbns):
    made: list[LB] = []

    def f(vips: list[str], **kw) -> LB:
        lb = LB(lbns, spec_text(vips, **kw))
        made.append(lb)
        return lb
    yield f
    for lb in made:
        lb.close()


def expected_backend(lb: LB, vip_index: int, src: str, sport: int, dport: int, proto: int) -> str:
    """What Maglev gives the flow, computed here from the spec (slots as install numbers
    them) and the hash balancer.h computes."""
    slot, slots = 0, {}
    for i, v in enumerate(lb.stage.vips):
        for b in v.backends:
            slots[slot] = (i, b)
            slot += 1
    table = maglev.populate([(s, b.address, b.weight) for s, (i, b) in slots.items()
                             if i == vip_index and b.state == "up"], lb.stage.table_size)
    h = maglev.flow_hash(src, sport, dport, proto)
    return slots[table[h % lb.stage.table_size]][1].address


def outer_dst(out: bytes) -> str:
    e = Ether(out)
    return e[IPv6].dst if e.type == 0x86DD else e[IP].dst


# -- spec ---------------------------------------------------------------------------------------

def test_spec_is_validated():
    with pytest.raises(SpecError, match="must be a prime"):
        parse_spec(spec_text([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1]}}"], size=4096))
    with pytest.raises(SpecError, match="needs an outer IPv6 source"):
        parse_spec(spec_text([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1]}}"])
                   .replace(', ipv6: "2001:db8::1"', ""
                            ).replace("198.18.20.1", "2001:db8:20::1"))
    with pytest.raises(SpecError, match="works at hook xdp only"):
        parse_spec(spec_text([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1]}}"])
                   .replace("hook: xdp", "hook: tc-ingress"))
    with pytest.raises(SpecError, match="listed twice"):
        parse_spec(spec_text([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1, 198.18.20.1]}}"]))


def test_layouts_match_the_loaded_maps(make):
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1]}}"])
    n = map_names("lb")
    layouts = {t.name: t for t in LAYOUTS}
    sizes = {n["vips"]: ("ebp_lb_vip_key", "ebp_lb_vip"), n["backends"]: (None, "ebp_lb_backend"),
             n["connections"]: ("ebp_lb_flow", "ebp_lb_conn")}
    for cname, (k, v) in sizes.items():
        spec = lb.rp.built.map(cname).spec
        if k:
            assert spec.key_size == layouts[k].size, cname
        assert spec.value_size == layouts[v].size, cname


# -- Maglev -------------------------------------------------------------------------------------

def test_maglev_weights_and_minimal_disruption():
    M = 65537
    bes = [(i, f"198.18.20.{i + 1}", w) for i, w in enumerate((1, 2, 3, 4))]
    table = maglev.populate(bes, M)
    share = collections.Counter(table)
    for slot, _, w in bes:
        assert abs(share[slot] / M - w / 10) < 0.01 * w / 10
    # removing backend 2: its entries move, the others' (almost) all stay
    after = maglev.populate([b for b in bes if b[0] != 2], M)
    assert all(after[i] != 2 for i in range(M))
    moved_others = sum(1 for a, b in zip(table, after) if a != 2 and a != b)
    assert moved_others / M < 0.01
    # the table depends on the set only, not on the slot order
    assert maglev.populate(list(reversed(bes)), M) == table
    assert maglev.populate([], 7) == [maglev.EMPTY] * 7


# -- encapsulation, byte by byte ------------------------------------------------------------------

def _client4(dport=80, proto=TCP, tos=0x10, size=40, **kw):
    l4 = TCP(sport=40000, dport=dport, flags="S") if proto is TCP else UDP(sport=40000, dport=dport)
    return Ether(src=CLIENT_MAC, dst="02:00:00:00:00:01") / IP(src=CLIENT4, dst=VIP4, tos=tos,
                                                              **kw) / l4 / (b"p" * size)


def _client6(dport=53, size=40, tc=0x20):
    return (Ether(src=CLIENT_MAC, dst="02:00:00:00:00:01")
            / IPv6(src=CLIENT6, dst=VIP6, tc=tc) / UDP(sport=40001, dport=dport) / (b"q" * size))


@pytest.mark.parametrize("encap", ["ipip", "gue"])
def test_encapsulation_ipv4_in_ipv4_byte_by_byte(make, lbns, encap):
    lb = make([f"{{vip: {VIP4}, port: 80, proto: tcp, backends: [198.18.20.1, 198.18.20.2, "
               "198.18.20.3]}"], encap=encap)
    frame = _client4()
    verdict, out = lb(frame)
    assert verdict == "XDP_TX"
    be = expected_backend(lb, 0, CLIENT4, 40000, 80, 6)
    inner = bytes(frame)[14:]
    h = maglev.flow_hash(CLIENT4, 40000, 80, 6)
    outer = IP(src="198.18.0.1", dst=be, tos=0x10, id=0, flags="DF", ttl=64)
    if encap == "ipip":
        outer.proto = 4
        want = Ether(src=lb.mac, dst=NEXT_HOP_MAC) / outer / inner
    else:
        want = (Ether(src=lb.mac, dst=NEXT_HOP_MAC) / outer
                / UDP(sport=0xC000 | (h & 0x3FFF), dport=6080, chksum=0) / inner)
    assert out == bytes(want)  # scapy computed the outer lengths and the IPv4 checksum
    assert lb.counts()["new"] == 1 and lb.counts()["tx"] == 1
    # the next packet of the flow: the connection table
    verdict, out2 = lb(frame)
    assert out2 == out and lb.counts()["known"] == 1


@pytest.mark.parametrize("encap", ["ipip", "gue"])
def test_encapsulation_ipv6_vip_to_both_backend_families(make, encap):
    lb = make([f"{{vip: \"{VIP6}\", port: 53, proto: udp, backends: [\"2001:db8:20::1\", "
               "198.18.20.7]}"], encap=encap)
    seen = set()
    for sport in range(40001, 40101):
        frame = _client6()
        frame[UDP].sport = sport
        frame = Ether(bytes(frame))
        verdict, out = lb(frame)
        assert verdict == "XDP_TX"
        be = expected_backend(lb, 0, CLIENT6, sport, 53, 17)
        h = maglev.flow_hash(CLIENT6, sport, 53, 17)
        inner = bytes(frame)[14:]
        eth = Ether(src=lb.mac, dst=NEXT_HOP_MAC)
        gue = UDP(sport=0xC000 | (h & 0x3FFF), dport=6080, chksum=0)
        if ":" in be:
            outer = IPv6(src="2001:db8::1", dst=be, tc=0x20, fl=h & 0xFFFFF, hlim=64)
            if encap == "ipip":
                outer.nh = 41
                want = eth / outer / inner
            else:
                want = eth / outer / gue / inner
        else:
            outer = IP(src="198.18.0.1", dst=be, tos=0x20, id=0, flags="DF", ttl=64)
            if encap == "ipip":
                outer.proto = 41
                want = eth / outer / inner
            else:
                want = eth / outer / gue / inner
        assert out == bytes(want), sport
        seen.add(be)
    assert seen == {"2001:db8:20::1", "198.18.20.7"}


def test_transmit_redirect_and_stack(make):
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [198.18.21.1]}}",
               f"{{vip: {VIP4}, port: 81, backends: [198.18.22.1]}}",
               f"{{vip: {VIP4}, port: 82, backends: []}}"])
    verdict, out = lb(_client4(dport=80))
    assert verdict == "XDP_REDIRECT" and Ether(out)[IP].dst == "198.18.21.1"
    verdict, out = lb(_client4(dport=81))  # no neighbour: the stack resolves and forwards
    assert verdict == "XDP_PASS" and Ether(out)[IP].dst == "198.18.22.1"
    assert Ether(out)[IP].proto == 4
    verdict, out = lb(_client4(dport=82))  # no backend
    assert verdict == "XDP_DROP"
    verdict, out = lb(_client4(dport=83))  # no VIP: untouched, passes
    assert verdict == "XDP_PASS" and out == bytes(_client4(dport=83))
    c = lb.counts()
    assert (c["redirect"], c["route_stack"], c["no_backend"]) == (1, 1, 1)
    # replay names the stage and the outcome that decided
    with netns.enter(lb.ns):
        assert [(d.stage, d.reason) for d in lb.rp.run_all(
            [bytes(_client4(dport=p)) for p in (80, 82, 83)])] == \
            [("lb", "redirect"), ("lb", "no_backend"), (None, "end")]


# -- spread, backend changes, health -----------------------------------------------------------

def _flows(n, sport0=1024):
    base = bytes(_client4(size=0))
    for i in range(n):
        src = f"198.18.{100 + i // 60000}.{1 + (i // 250) % 250}"
        sport = sport0 + i % 60000
        f = Ether(base)
        f[IP].src = src
        f[TCP].sport = sport
        del f[IP].chksum
        yield (src, sport), bytes(f)


@pytest.mark.slow
def test_10k_flows_spread_by_weight_within_5_percent(make):
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [{{address: 198.18.20.1, weight: 1}}, "
               "{address: 198.18.20.2, weight: 2}, {address: 198.18.20.3, weight: 3}, "
               "{address: 198.18.20.4, weight: 4}]}"], size=65537)
    per = collections.Counter()
    for _, frame in _flows(10_000):
        verdict, out = lb(frame)
        assert verdict == "XDP_TX"
        per[outer_dst(out)] += 1
    for i, w in enumerate((1, 2, 3, 4)):
        share = per[f"198.18.20.{i + 1}"] / 10_000
        assert abs(share - w / 10) <= 0.05 * w / 10, (per, w)
    # the per-backend new-flow counters say the same
    lst = lb.lb.list()[0]["backends"]
    assert {b["address"]: b["new_flows"] for b in lst} == dict(per)


@pytest.mark.slow
def test_changes_move_only_the_flows_that_must_move(make):
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1, 198.18.20.2, 198.18.20.3, "
               "198.18.20.4]}"], size=65537)
    vip = lb.stage.vips[0]
    flows = list(_flows(4000))
    before = {k: outer_dst(lb(f)[1]) for k, f in flows}
    # adding a backend: established flows (in the connection table) keep theirs
    res = lb.lb.add(vip, "198.18.20.5")
    assert 0 < res["moved"] <= 65537 // 5 + 200 and res["written"] == res["moved"]
    assert {k: outer_dst(lb(f)[1]) for k, f in flows} == before
    # new flows reach the new backend
    fresh = collections.Counter(outer_dst(lb(f)[1]) for _, f in _flows(2000, sport0=30000))
    assert fresh["198.18.20.5"] > 200
    # removing backend 2: exactly its flows move, to the others
    res = lb.lb.remove(vip, "198.18.20.2")
    after = {k: outer_dst(lb(f)[1]) for k, f in flows}
    moved = {k for k in flows_keys(flows) if after[k] != before[k]}
    assert moved == {k for k, b in before.items() if b == "198.18.20.2"}
    assert "198.18.20.2" not in after.values()
    assert lb.counts()["rehashed"] == len(moved)
    # the table: the removed backend's entries (about a fifth) changed, plus Maglev's few
    table = lb.lb.active_table(0)
    assert res["slot"] not in table
    assert res["moved"] < 65537 * 0.22


@pytest.mark.slow
def test_changes_under_traffic_drop_no_packet(make):
    """Backends removed, added, marked down and up while new flows arrive: every packet is
    sent to a backend (the table a packet reads is the old or the new one, and a backend is
    taken out of the table before its record goes)."""
    import threading
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1, 198.18.20.2, 198.18.20.3, "
               "198.18.20.4]}"])
    vip = lb.stage.vips[0]
    stop = threading.Event()
    seen: collections.Counter = collections.Counter()
    frames = [f for _, f in _flows(20_000, sport0=2000)]

    def traffic():
        i = 0
        while not stop.is_set() and i < len(frames):
            verdict, out = lb(frames[i])
            seen[verdict if verdict != "XDP_TX" else outer_dst(out)] += 1
            i += 1
    t = threading.Thread(target=traffic)
    t.start()
    try:
        for _ in range(5):
            lb.lb.remove(vip, "198.18.20.4")
            lb.lb.down(vip, "198.18.20.3")
            lb.lb.add(vip, "198.18.20.4")
            lb.lb.up(vip, "198.18.20.3")
            lb.lb.set_weight(vip, "198.18.20.1", 3)
            lb.lb.set_weight(vip, "198.18.20.1", 1)
    finally:
        stop.set()
        t.join()
    assert sum(seen.values()) > 200
    assert set(seen) <= {f"198.18.20.{i}" for i in range(1, 5)}, seen  # no drop, no pass
    assert lb.counts()["no_backend"] == 0


def flows_keys(flows):
    return [k for k, _ in flows]


def test_down_gets_no_new_flows_but_keeps_its_established_ones(make):
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1, 198.18.20.2]}}"])
    vip = lb.stage.vips[0]
    flows = list(_flows(400))
    before = {k: outer_dst(lb(f)[1]) for k, f in flows}
    assert set(before.values()) == {"198.18.20.1", "198.18.20.2"}
    lb.lb.down(vip, "198.18.20.1")
    fresh = {outer_dst(lb(f)[1]) for _, f in _flows(400, sport0=20000)}
    assert fresh == {"198.18.20.2"}
    assert {k: outer_dst(lb(f)[1]) for k, f in flows} == before  # draining
    lb.lb.up(vip, "198.18.20.1")
    lb.lb.set_weight(vip, "198.18.20.2", 0)
    assert {outer_dst(lb(f)[1]) for _, f in _flows(200, sport0=40000)} == {"198.18.20.1"}
    lb.lb.down(vip, "198.18.20.1")
    verdict, _ = lb(next(_flows(1, sport0=50000))[1])
    assert verdict == "XDP_DROP" and lb.counts()["no_backend"] == 1
    with pytest.raises(UsageError, match="already"):
        lb.lb.add(vip, "198.18.20.1")


# -- fragments, truncated frames -------------------------------------------------------------------

def test_fragments_follow_their_first(make):
    lb = make([f"{{vip: {VIP4}, port: 80, proto: udp, backends: [198.18.20.1, 198.18.20.2, "
               "198.18.20.3]}"])
    pkt = IP(src=CLIENT4, dst=VIP4, id=4242) / UDP(sport=40000, dport=80) / (b"f" * 1000)
    frags = fragment(pkt, fragsize=400)
    assert len(frags) == 3
    be = expected_backend(lb, 0, CLIENT4, 40000, 80, 17)
    eth = Ether(src=CLIENT_MAC, dst="02:00:00:00:00:01")
    # a later fragment before its first: no record, the stack reassembles
    verdict, out = lb(eth / frags[2])
    assert verdict == "XDP_PASS" and out == bytes(eth / frags[2])
    for fr in frags:
        verdict, out = lb(eth / fr)
        assert verdict == "XDP_TX"
        assert outer_dst(out) == be
        assert out[34:] == bytes(fr)  # the inner fragment, unchanged
    c = lb.counts()
    assert (c["frag_first"], c["frag_followed"]) == (1, 2)


def test_ipv6_fragments_follow_their_first(make):
    lb = make([f"{{vip: \"{VIP6}\", port: 53, proto: udp, backends: [\"2001:db8:20::1\", "
               "\"2001:db8:20::2\"]}"])
    pkt = (IPv6(src=CLIENT6, dst=VIP6) / IPv6ExtHdrFragment(id=77)
           / UDP(sport=40002, dport=53) / (b"g" * 1000))
    frags = fragment6(pkt, 500)
    be = expected_backend(lb, 0, CLIENT6, 40002, 53, 17)
    eth = Ether(src=CLIENT_MAC, dst="02:00:00:00:00:01")
    for fr in frags:
        verdict, out = lb(eth / fr)
        assert verdict == "XDP_TX" and outer_dst(out) == be
    assert lb.counts()["frag_followed"] == len(frags) - 1


def test_truncated_frames(make):
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1]}}"])
    full = bytes(_client4(size=0))
    # TCP header cut short: malformed, not balanced (goes on, passes)
    verdict, out = lb(full[:14 + 20 + 10])
    assert verdict == "XDP_PASS" and out == full[:44]
    # IP total length beyond the frame: dropped
    f = Ether(full)
    f[IP].len = 400
    del f[IP].chksum
    verdict, _ = lb(f)
    assert verdict == "XDP_DROP" and lb.counts()["truncated"] == 1
    # Ethernet only
    verdict, out = lb(full[:14])
    assert verdict == "XDP_PASS"


# -- packet too big ------------------------------------------------------------------------------

def test_too_big_is_answered_from_the_vip(make):
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1]}}",
               f"{{vip: \"{VIP6}\", port: 53, proto: udp, backends: [\"2001:db8:20::1\"]}}"],
              encap="gue", mtu=1400)
    frame = _client4(size=1400, flags="DF")
    verdict, out = lb(frame)
    assert verdict == "XDP_TX"
    e = Ether(out)
    assert (e.src, e.dst) == ("02:00:00:00:00:01", CLIENT_MAC)
    assert (e[IP].src, e[IP].dst, e[ICMP].type, e[ICMP].code) == (VIP4, CLIENT4, 3, 4)
    assert e[ICMP].nexthopmtu == 1400 - 28
    quote = bytes(frame)[14:14 + 28]
    assert bytes(e[ICMP].payload)[:28] == quote
    want = IP(src=VIP4, dst=CLIENT4, ttl=64, id=0) / ICMP(type=3, code=4, nexthopmtu=1372) / quote
    assert out[14:] == bytes(want)  # checksums as scapy computes them
    # without DF: the stack fragments it
    verdict, out = lb(_client4(size=1400))
    assert verdict == "XDP_PASS" and out == bytes(_client4(size=1400))
    # IPv6: packet too big
    frame6 = _client6(size=1400)
    verdict, out = lb(frame6)
    assert verdict == "XDP_TX"
    want6 = (IPv6(src=VIP6, dst=CLIENT6, hlim=64) / ICMPv6PacketTooBig(mtu=1400 - 48)
             / bytes(frame6)[14:14 + 48])
    assert out[14:] == bytes(want6)
    c = lb.counts()
    assert (c["too_big_answered"], c["too_big_stack"]) == (2, 1)


def test_icmp_too_big_to_a_vip_goes_to_the_flows_backend(make):
    lb = make([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1, 198.18.20.2, 198.18.20.3]}}"])
    lb(_client4())  # the flow: client:40000 -> VIP:80
    be = expected_backend(lb, 0, CLIENT4, 40000, 80, 6)
    # a router between the VIP and the client answers the backend's (direct) reply
    reply = IP(src=VIP4, dst=CLIENT4) / TCP(sport=80, dport=40000, flags="SA")
    icmp = (Ether(src=CLIENT_MAC, dst="02:00:00:00:00:01")
            / IP(src="198.18.1.254", dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1300)
            / bytes(reply)[:28])
    verdict, out = lb(icmp)
    assert verdict == "XDP_TX" and outer_dst(out) == be
    assert out[34:] == bytes(icmp)[14:]
    assert lb.counts()["icmp_too_big"] == 1
    # an ICMP error about another port is no VIP's: it goes on
    verdict, _ = lb(Ether(src=CLIENT_MAC, dst="02:00:00:00:00:01") / IP(src="198.18.1.254", dst=VIP4)
                    / ICMP(type=3, code=4, nexthopmtu=1300) / bytes(IP(src=VIP4, dst=CLIENT4)
                                                                   / TCP(sport=81, dport=40000))[:28])
    assert verdict == "XDP_PASS"


def test_counter_names_come_from_the_header():
    assert COUNTERS[:3] == ("new", "known", "rehashed")
    assert "too_big_answered" in COUNTERS and len(set(COUNTERS)) == len(COUNTERS)


# -- run-time changes through the CLI on an applied pipeline -----------------------------------

@pytest.mark.slow
def test_backends_cli_on_an_applied_pipeline(ebp_env, veth_pair, tmp_path):
    ns, dev, _ = veth_pair
    text = spec_text([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1, 198.18.20.2]}}",
                      f"{{vip: \"{VIP6}\", port: 53, proto: udp, backends: [\"2001:db8:20::1\"]}}"],
                     size=4099).replace("hook: xdp\n", f"hook: xdp\nnetns: {ns}\n"
                                                       f"interfaces: [{dev}]\n")
    pipeline.apply(write_spec(tmp_path / "lb.yaml", text))
    try:
        vip = f"{VIP4}:80/tcp"
        lst = cli_json("backends", "lbt", "list")
        assert [v["vip"] for v in lst] == [vip, f"[{VIP6}]:53/udp"]
        assert {b["address"]: b["entries"] for b in lst[0]["backends"]} == \
            {"198.18.20.1": pytest.approx(2050, abs=60), "198.18.20.2": pytest.approx(2050, abs=60)}
        # several VIPs: the command must name one
        proc = cli("backends", "lbt", "add", "198.18.20.3", check=False)
        assert proc.returncode == 2 and "--vip" in proc.stderr
        res = cli_json("backends", "lbt", "add", "198.18.20.3", "--weight", "2", "--vip", vip)
        assert 0 < res["moved"] <= 4099 // 2 + 100 and res["written"] == res["moved"]
        share = {b["address"]: b["entries"] for b in cli_json("backends", "lbt", "list")[0]["backends"]}
        assert share["198.18.20.3"] == pytest.approx(4099 / 2, rel=0.03)
        # no change, nothing written
        res = cli_json("backends", "lbt", "set-weight", "198.18.20.3", "2", "--vip", vip)
        assert (res["moved"], res["written"]) == (0, 0)
        res = cli_json("backends", "lbt", "down", "198.18.20.1", "--vip", vip)
        # its entries, plus the few Maglev moves between the others (the table is a function
        # of the backend set, the same on every balancer)
        assert share["198.18.20.1"] <= res["moved"] <= share["198.18.20.1"] + 4099 * 0.02
        states = {b["address"]: (b["state"], b["entries"])
                  for b in cli_json("backends", "lbt", "list")[0]["backends"]}
        assert states["198.18.20.1"] == ("down", 0)
        cli_json("backends", "lbt", "up", "198.18.20.1", "--vip", vip)
        res = cli_json("backends", "lbt", "remove", "198.18.20.2", "--vip", vip)
        assert res["moved"] > 0
        assert "198.18.20.2" not in {b["address"] for b in
                                     cli_json("backends", "lbt", "list")[0]["backends"]}
        # bad input leaves everything as it was
        for args in (("remove", "198.18.20.99"), ("add", "not-an-address"),
                     ("set-weight", "198.18.20.1", "5000")):
            proc = cli("backends", "lbt", *args, "--vip", vip, check=False)
            assert proc.returncode == 2 and "error:" in proc.stderr, args
        proc = cli("backends", "lbt", "add", "2001:db8:20::7", "--vip", "198.18.99.1:80/tcp",
                   check=False)
        assert proc.returncode == 2 and "no VIP" in proc.stderr
        st = next(s for s in pipeline.stats("lbt")[0]["stages"] if s["kind"] == "balancer")
        assert st["connections"]["capacity"] == 65536 and "new" in st["counts"]
        # the human forms of stats, status and the connection list work with a balancer
        assert "lb" in cli("stats", "lbt").stdout
        assert cli("status", "lbt").returncode == 0
        assert cli("backends", "lbt", "connections").stdout.strip() == "no connections"
        assert "198.18.20.3" in cli("backends", "lbt", "list").stdout
        # a re-apply keeps the live backends (its maps are reused)
        res = pipeline.apply(tmp_path / "lb.yaml")
        assert {b["address"] for b in cli_json("backends", "lbt", "list")[0]["backends"]} == \
            {"198.18.20.1", "198.18.20.3"}
    finally:
        pipeline.detach("lbt")


def test_backends_change_of_a_pipeline_whose_namespace_is_gone_is_refused(ebp_env, tmp_path):
    """The pipeline's namespace deleted: a backend change used to rewrite the maps of a
    program that runs nowhere and then prime the next hops from the calling (host's)
    namespace, sending a datagram there.  It is refused (DEAD, with the repair)."""
    with netns.temporary() as ns:
        for cmd in ("ip link add v0 type veth peer name v1", "ip link set v0 up",
                    "ip link set v1 up"):
            netns.run(ns.name, cmd.split())
        text = spec_text([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1]}}"]).replace(
            "hook: xdp\n", f"hook: xdp\nnetns: {ns.name}\ninterfaces: [v0]\n")
        pipeline.apply(write_spec(tmp_path / "lb.yaml", text))
        try:
            before = cli_json("backends", "lbt", "list")
            netns.remove(ns.name)
            for args in (("add", "198.18.20.3"), ("remove", "198.18.20.1"),
                         ("down", "198.18.20.1")):
                proc = cli("backends", "lbt", *args, check=False)
                assert proc.returncode == 2, (args, proc.stderr)
                assert f"namespace {ns.name} is gone" in proc.stderr and "ebplane detach lbt" \
                    in proc.stderr, args
            assert cli_json("backends", "lbt", "list") == before
        finally:
            pipeline.detach("lbt")


def test_backends_change_without_privileges_changes_nothing(ebp_env, veth_pair, tmp_path):
    """Without CAP_BPF the pinned maps still open (the pins are root's files), so a change
    used to write the backend and flip the table, then fail creating the grace-period map:
    exit 4 reported for a change that had been made.  Now it fails before the first write."""
    import json
    import subprocess
    ns, dev, _ = veth_pair
    text = spec_text([f"{{vip: {VIP4}, port: 80, backends: [198.18.20.1, 198.18.20.2]}}"]
                     ).replace("hook: xdp\n", f"hook: xdp\nnetns: {ns}\ninterfaces: [{dev}]\n")
    pipeline.apply(write_spec(tmp_path / "lb.yaml", text))
    try:
        before = cli_json("backends", "lbt", "list")
        drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-bpf,-sys_admin,-net_admin,-perfmon",
                "--", *EBPLANE]
        for args in (("add", "198.18.20.3"), ("remove", "198.18.20.1"), ("down", "198.18.20.2"),
                     ("set-weight", "198.18.20.2", "7")):
            proc = subprocess.run([*drop, "backends", "lbt", *args, "--json"],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 4, (args, proc.stderr)
            err = json.loads(proc.stdout)
            assert err["error"] == "PermissionDenied" and "CAP_BPF" in err["hint"], args
            assert "Traceback" not in proc.stderr
            assert cli_json("backends", "lbt", "list") == before, args
    finally:
        pipeline.detach("lbt")
