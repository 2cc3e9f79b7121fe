"""Helpers shared by the forwarding tests that run a stage under BPF_PROG_TEST_RUN in a
throw-away "router" namespace (test_forwarding_replay at XDP, test_tc_forwarding at TC): the
namespace's routes and neighbours, a replayer in it that reads the stage's outcome counters,
and checks of the rewritten bytes."""

from __future__ import annotations

from ebplane.codegen.forwarding import map_name, outcomes
from ebplane.kernel.codec import COUNT, U32
from ebplane.net import netns
from ebplane.runtime.replay import Replayer
from ebplane.spec import parse_spec

NEXT_HOP_MAC = "02:00:00:00:00:02"
HOST_MAC = "02:00:00:00:00:09"

# up0 (198.18.10.1/24, 2001:db8:10::1/64) with a next hop 198.18.10.2 / 2001:db8:10::2 whose
# MAC is known; routes via it (20), via a neighbour never known (30), a blackhole (40), and
# one with a locked MTU of 1000 (50)
ROUTER_SETUP = [
    "sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv6.conf.all.forwarding=1",
    "ip link add up0 type veth peer name up1", "ip link set up0 up", "ip link set up1 up",
    "ip addr add 198.18.10.1/24 dev up0", "ip addr add 2001:db8:10::1/64 dev up0 nodad",
    f"ip neigh add 198.18.10.2 lladdr {NEXT_HOP_MAC} dev up0 nud permanent",
    f"ip neigh add 2001:db8:10::2 lladdr {NEXT_HOP_MAC} dev up0 nud permanent",
    "ip route add 198.18.20.0/24 via 198.18.10.2",
    "ip route add 198.18.30.0/24 via 198.18.10.3",        # no neighbour entry
    "ip route add blackhole 198.18.40.0/24",
    "ip route add 198.18.50.0/24 via 198.18.10.2 mtu lock 1000",
    "ip -6 route add 2001:db8:20::/64 via 2001:db8:10::2",
    "ip -6 route add 2001:db8:30::/64 via 2001:db8:10::3",  # no neighbour entry
]


def veth_pairs(n: int) -> list[str]:
    """Commands for veth pairs p0/q0 .. p{n-1}/q{n-1}, up."""
    return [c for i in range(n) for c in (f"ip link add p{i} type veth peer name q{i}",
                                          f"ip link set p{i} up", f"ip link set q{i} up")]


class StageRun:
    """A replayer of ``spec_text`` inside namespace ``ns``; a test's subclass runs frames
    (``__call__``) as its hook receives them."""

    def __init__(self, ns: str, spec_text: str, filename: str = "<spec>"):
        self.ns = ns
        self.spec = parse_spec(spec_text, filename)
        with netns.enter(ns):
            self.rp = Replayer(self.spec)

    def counts(self, stage: str) -> dict[str, int]:
        """Outcome -> packets of the stage's counters."""
        st = self.spec.stage(stage)
        m = self.rp.built.map(map_name(st, "counters")).with_codecs(U32, COUNT)
        return {name: m.lookup_sum(i).packets
                for i, name in enumerate(outcomes(st, self.spec.hook))}

    def close(self):
        self.rp.close()


def ipv4_checksum_ok(hdr: bytes) -> bool:
    """An IPv4 header's checksum is right (the ones' complement sum of its words is 0xffff)."""
    total = sum(int.from_bytes(hdr[i:i + 2], "big") for i in range(0, len(hdr), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF
