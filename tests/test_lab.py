"""The lab (client -- dut -- server in namespaces) and the traffic helpers, on the real kernel."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from ebplane.errors import KernelError, SpecError, UsageError
from ebplane.lab import traffic
from ebplane.lab.topology import DEFAULT_LAB, Lab, Topology
from ebplane.net import netns


def _fresh_name() -> str:
    return f"ebp-tl{secrets.token_hex(3)}"


# -- a running lab ---------------------------------------------------------------


def test_default_topology_names():
    lab = Lab.load()
    assert lab.name == DEFAULT_LAB
    assert lab.namespaces() == ["ebp-lab-client", "ebp-lab-dut", "ebp-lab-server"]
    assert lab.topology.nodes["dut"].forward and not lab.topology.nodes["client"].forward


@pytest.mark.parametrize("dst", ["198.18.2.2", "2001:db8:2::2", "198.18.1.1", "2001:db8:2::1"])
def test_ping_through_the_dut(lab, dst):
    assert traffic.ping(lab.ns("client"), dst, count=3, timeout=1.0) == 3


def test_ping_counts_losses(lab):
    # 198.18.3.0/24 is routed (default route) but nobody answers there.
    assert traffic.ping(lab.ns("client"), "198.18.3.9", count=2, timeout=0.2) == 0


def test_forwarding_only_on_the_dut(lab):
    def sysctl(node: str, key: str) -> str:
        with netns.enter(lab.ns(node)):
            return Path("/proc/sys", key).read_text().strip()

    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        assert sysctl("dut", key) == "1"
        assert sysctl("client", key) == "0"
    assert sysctl("server", "net/ipv6/conf/eth0/accept_dad") == "0"


def test_state_and_record(lab):
    state = lab.state()
    json.dumps(state)  # --json must be able to print it
    assert state["lab"] == lab.name and state["up"]
    assert state["nodes"]["dut"]["interfaces"] == {
        "eth0": ["198.18.1.1/24", "2001:db8:1::1/64"],
        "eth1": ["198.18.2.1/24", "2001:db8:2::1/64"]}
    assert all(n["exists"] for n in state["nodes"].values())
    again = Lab.running(lab.name)
    assert again is not None and again.namespaces() == lab.namespaces()
    assert lab.name in Lab.recorded()
    addrs = json.loads(netns.run(lab.ns("server"), ["ip", "-j", "addr", "show", "eth0"]).stdout)
    have = {f"{a['local']}/{a['prefixlen']}" for a in addrs[0]["addr_info"]}
    assert {"198.18.2.2/24", "2001:db8:2::2/64"} <= have


def test_second_up_is_refused_and_keeps_the_lab(lab):
    with pytest.raises(UsageError, match="already up"):
        Lab(lab.topology).up()
    assert lab.is_up()
    assert traffic.ping(lab.ns("client"), "198.18.2.2", count=1) == 1


@pytest.mark.parametrize("proto", ["udp", "tcp", "icmp"])
@pytest.mark.parametrize("family", [4, 6])
def test_traffic_counts_n_of_n_through_the_dut(lab, proto, family):
    src, dst = ("198.18.1.2", "198.18.2.2") if family == 4 else ("2001:db8:1::2", "2001:db8:2::2")
    flow = traffic.Flow(proto, src, dst, sport=4000 + family, dport=53)
    other = traffic.Flow(proto, src, dst, sport=4000 + family, dport=54)
    with traffic.Capture(lab.ns("server"), "eth0", flow) as cap, \
            traffic.Capture(lab.ns("server"), "eth0", other) as miss, \
            traffic.Capture(lab.ns("dut"), "eth0", flow) as at_dut:
        assert traffic.send(lab.ns("client"), "eth0", flow, count=50) == 50
        assert cap.wait(50, timeout=2.0) == 50
        assert at_dut.wait(50, timeout=1.0) == 50
        if proto != "icmp":  # an ICMP flow has no destination port to differ in
            assert miss.wait(1, timeout=0.1) == 0


def test_capture_times_out_with_what_arrived(lab):
    flow = traffic.Flow("udp", "198.18.1.2", "198.18.2.2", 1, 2)
    with traffic.Capture(lab.ns("server"), "eth0", flow) as cap:
        traffic.send(lab.ns("client"), "eth0", flow, count=3)
        assert cap.wait(10, timeout=0.3) == 3


def test_traffic_argument_errors(lab):
    with pytest.raises(UsageError):
        traffic.Flow("sctp", "198.18.1.2", "198.18.2.2")
    with pytest.raises(UsageError):
        traffic.Flow("udp", "198.18.1.2", "2001:db8:2::2")
    with pytest.raises(UsageError):
        traffic.ping(lab.ns("client"), "not-an-address")
    with pytest.raises(UsageError, match="destination MAC"):
        traffic.send(lab.ns("client"), "lo", traffic.Flow("udp", "198.18.1.2", "198.18.2.2"))


# -- up and down -----------------------------------------------------------------


def test_down_removes_everything_and_is_idempotent():
    lab = Lab.load(name=_fresh_name())
    lab.up()
    assert all(netns.exists(n) for n in lab.namespaces())
    lab.down()
    assert not any(n.startswith(lab.name + "-") for n in netns.list_ours())
    assert not lab.record_path.exists() and Lab.running(lab.name) is None
    lab.down()


def test_down_from_another_process():
    lab = Lab.load(name=_fresh_name())
    lab.up()
    try:
        code = ("from ebplane.lab.topology import Lab; import sys; "
                "Lab.running(sys.argv[1]).down()")
        subprocess.run([sys.executable, "-c", code, lab.name], check=True, timeout=30)
        assert not any(netns.exists(n) for n in lab.namespaces())
    finally:
        lab.down()


BROKEN = {
    # The kernel refuses a second "lo": fails after namespaces and the first link exist.
    "link": """
lab: {name}
nodes: {{a: {{}}, b: {{}}}}
links:
  - {{a: a:eth0, b: b:eth0, a_addr: [198.18.7.1/24], b_addr: [198.18.7.2/24]}}
  - {{a: a:lo, b: b:eth1}}
""",
    # No link reaches the gateway: fails at the very last step, after everything else.
    "route": """
lab: {name}
nodes: {{a: {{}}, b: {{forward: true}}}}
links:
  - {{a: a:eth0, b: b:eth0, a_addr: [198.18.7.1/24, 2001:db8:7::1/64]}}
routes:
  a: [default via 198.18.7.254, 198.19.0.0/16 via 198.18.9.1]
""",
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_failing_up_leaves_nothing(tmp_path, what):
    name = _fresh_name()
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN[what].format(name=name))
    lab = Lab.load(path)
    with pytest.raises(KernelError) as e:
        lab.up()
    assert name in str(e.value)
    assert ("a:lo" if what == "link" else "198.18.9.1") in str(e.value)
    assert not [n for n in netns.list_ours() if n.startswith(name)]
    assert not lab.record_path.exists()


# -- topology validation ---------------------------------------------------------


@pytest.mark.parametrize("text, line, field", [
    ("lab: ebp-x\nnodes: {a: {}}\nlinks:\n  - a: a:eth0\n    b: z:eth0\n", 5, "links[0].b"),
    ("lab: ebp-x\nnodes: {a: {}}\nlinks:\n  - {a: a:eth0, b: a:eth0}\n", 4, "links[0].b"),
    ("lab: ebp-x\nnodes: {a: {}}\nlinks:\n  - {a: a:e0, b: a:e1, b_addr: [198.18.0.1]}\n", 4,
     "links[0].b_addr[0]"),
    ("lab: ebp-x\nnodes: {a: {}}\nlinks:\n  - {a: a:e0, b: a:e1, mtu: 10}\n", 4, "links[0].mtu"),
    ("lab: x\nnodes: {a: {}}\nlinks: []\n", 1, "lab"),
    ("lab: ebp-x\nnodes: {a: {forward: yes please}}\nlinks: []\n", 2, "nodes.a.forward"),
    ("lab: ebp-x\nnodes: {a: {}}\nlinks: []\nroutes: {a: [default 198.18.0.1]}\n", 4,
     "routes.a[0]"),
    ("lab: ebp-x\nnodes: {a: {}}\nlinks: []\nroutes: {b: []}\n", 4, "routes.b"),
    ("lab: ebp-x\nnodes: {a: {}}\nlinks: []\nswitches: 1\n", 4, "switches"),
    ("lab: ebp-x\nnodes: {a: {}}\n", 1, None),
])
def test_topology_errors_point_at_file_line_field(text, line, field):
    with pytest.raises(SpecError) as e:
        Topology.parse(text, "lab.yaml")
    assert (e.value.file, e.value.line, e.value.field) == ("lab.yaml", line, field)
    assert str(e.value).startswith(f"lab.yaml:{line}:")


def test_missing_topology_file(tmp_path):
    with pytest.raises(SpecError, match="not found") as e:
        Lab.load(tmp_path / "nope.yaml")
    assert e.value.hint
