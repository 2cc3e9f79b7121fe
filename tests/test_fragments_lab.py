"""IP fragments under an L4 policy, with real traffic: kernel sockets send datagrams larger
than the MTU, the sending kernel fragments them, and the dut's filter decides each datagram
by the ports of its first fragment (the later fragments carry none).

The policy passes UDP to one port and drops all other UDP.  Without fragment tracking, the
later fragments (proto udp, no ports) would meet the "all other UDP" rule and be dropped, so
no large datagram to the allowed port could ever be reassembled.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_fixtures import ebp_env  # noqa: F401  (fixture; lab comes from conftest)
from ebplane.lab import traffic
from ebplane.runtime import pipeline

pytestmark = [pytest.mark.lab]

POLICY = """\
pipeline: {name}
hook: xdp
netns: {ns}
interfaces: {ifaces}
protocols: [ethernet, ipv4, ipv6, udp, icmp, icmpv6]
stages:
  - filter:
      name: acl
      default: {default}
      rules:
        - {{proto: udp, dport: 5000, action: pass}}
        - {{proto: udp, action: drop}}
{more}"""


def _apply(tmp_path: Path, lab, *, ifaces="[eth0]", default="pass", more=""):
    spec = tmp_path / "frag.yaml"
    spec.write_text(POLICY.format(name="frag", ns=lab.ns("dut"), ifaces=ifaces,
                                  default=default, more=more))
    return pipeline.apply(spec).name


def _acl(name: str) -> dict:
    return next(s for s in pipeline.stats(name)[0]["stages"] if s["stage"] == "acl")


@pytest.mark.parametrize("dst", ["198.18.2.2", "2001:db8:2::2"])
def test_port_policy_applies_to_every_fragment(ebp_env, lab, tmp_path, dst):
    client, server = lab.ns("client"), lab.ns("server")
    name = _apply(tmp_path, lab)
    try:
        # 4000-byte datagrams over MTU 1500: three fragments each
        assert traffic.socket_udp(client, server, dst, port=5000, count=10, size=4000) == 10
        assert traffic.socket_udp(client, server, dst, port=5001, count=10, size=4000,
                                  timeout=1) == 0
        # small datagrams (no fragments) still meet the rules as they are
        assert traffic.socket_udp(client, server, dst, port=5000, count=5, size=100) == 5
        assert traffic.socket_udp(client, server, dst, port=5001, count=5, size=100,
                                  timeout=0.5) == 0
        acl = _acl(name)
        fr = acl["fragments"]
        assert fr["mode"] == "track"
        assert fr["first"]["packets"] == 20
        assert fr["followed"]["packets"] == 40              # two later fragments each
        assert fr["other"]["packets"] == 0 and fr["bad"]["packets"] == 0
        # the rule counters include the later fragments that took their first's rule
        assert [r["packets"] for r in acl["rules"]] == [30 + 5, 30 + 5]
    finally:
        pipeline.detach(name)


def test_fragments_through_filter_and_route(ebp_env, lab, tmp_path):
    """A filter that drops one port in front of the XDP router: the datagrams it lets go
    on (default: next) reach the route stage fragment by fragment, the later fragments
    included (they follow their first fragment's "next"); the dropped port's later
    fragments follow its drop."""
    client, server = lab.ns("client"), lab.ns("server")
    spec = tmp_path / "fr.yaml"
    spec.write_text(f"""\
pipeline: fragroute
hook: xdp
netns: {lab.ns("dut")}
interfaces: [eth0, eth1]
protocols: [ethernet, ipv4, ipv6, udp]
stages:
  - filter:
      name: acl
      default: next
      rules:
        - {{proto: udp, dport: 5001, action: drop}}
  - route: {{}}
""")
    name = pipeline.apply(spec).name
    try:
        for dst in ("198.18.2.2", "2001:db8:2::2"):
            assert traffic.ping(client, dst, count=1) == 1     # neighbours resolved
            assert traffic.socket_udp(client, server, dst, port=5000, count=10,
                                      size=3000) == 10
            assert traffic.socket_udp(client, server, dst, port=5001, count=5, size=3000,
                                      timeout=0.5) == 0
        route = next(s for s in pipeline.stats(name)[0]["stages"] if s["kind"] == "route")
        # 3 fragments x 10 datagrams x 2 families, by XDP
        assert route["counts"]["forwarded"]["packets"] >= 60
        acl = _acl(name)
        assert acl["fragments"]["first"]["packets"] == 30
        assert acl["fragments"]["followed"]["packets"] == 60
        assert acl["rules"][0]["packets"] == 15 * 2          # 5 datagrams x 3 fragments x 2
    finally:
        pipeline.detach(name)
