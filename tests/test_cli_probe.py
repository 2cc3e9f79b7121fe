"""``ebplane probe`` as a user runs it: a subprocess of the installed command."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ebplane.kernel.probe import load_trivial
from ebplane.net import attach, netns

EBPLANE = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "ebplane"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(EBPLANE), "probe", *args], capture_output=True, text=True,
                          timeout=60)


def _ip_link(ns: str, dev: str) -> dict:
    out = subprocess.run(["ip", "-n", ns, "-d", "-j", "link", "show", dev], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)[0]


@pytest.fixture(scope="module")
def probed() -> dict:
    proc = run("--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_json_has_every_section(probed):
    for key in ("kernel", "jit", "btf", "program_types", "map_types", "helpers", "attach"):
        assert key in probed, key
    assert probed["kernel"]["release"] == subprocess.run(["uname", "-r"], capture_output=True,
                                                         text=True).stdout.strip()
    assert probed["btf"]["vmlinux"] == Path("/sys/kernel/btf/vmlinux").exists()
    jit = Path("/proc/sys/net/core/bpf_jit_enable").read_text().strip()
    assert probed["jit"]["value"] == jit and probed["jit"]["enabled"] == (jit != "0")


def test_probes_tell_types_and_helpers_apart(probed):
    assert probed["program_types"]["xdp"] is True and probed["program_types"]["sched_cls"] is True
    assert probed["map_types"]["hash"] is True and probed["map_types"]["ringbuf"] is True
    xdp, tc = probed["helpers"]["xdp"], probed["helpers"]["sched_cls"]
    # skb helpers exist for TC only, xdp_adjust_head for XDP only
    assert (tc["skb_load_bytes"], xdp["skb_load_bytes"]) == (True, False)
    assert (xdp["xdp_adjust_head"], tc["xdp_adjust_head"]) == (True, False)
    assert xdp["map_lookup_elem"] is True


def test_attach_methods_were_tried(probed):
    assert set(probed["attach"]) == {"xdp_link_native", "xdp_link_generic",
                                     "xdp_netlink_generic", "tcx_ingress", "tcx_egress", "clsact"}
    # everything the attach tests exercise works on this kernel, so the probe must say so
    assert all(v is True for v in probed["attach"].values()), probed["attach"]


def test_missing_interface_exits_2_with_a_clear_message():
    proc = run("--iface", "missing")
    assert proc.returncode == 2
    assert "error: interface 'missing' does not exist" in proc.stderr
    assert "hint: interfaces there:" in proc.stderr and "lo" in proc.stderr
    proc = run("--iface", "missing", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == "InterfaceNotFound"


def test_missing_namespace_exits_2():
    proc = run("--iface", "veth0", "--netns", "ebp-no-such-ns")
    assert proc.returncode == 2 and "ebp-no-such-ns" in proc.stderr


def test_interface_in_a_namespace(veth_pair):
    """Facts of a veth in a namespace, and what is attached to it (a netlink XDP program
    and a tcx link that this process holds while the command runs)."""
    ns, dev, _peer = veth_pair
    xdp_fd, tc_fd = load_trivial("xdp", 2), load_trivial("sched_cls", 0)
    try:
        with netns.enter(ns):
            attach.attach_xdp(xdp_fd, dev, mode="generic", use_link=False)
            tcx = attach.attach_tc(tc_fd, dev, "ingress", method="tcx")
        tc_id = tcx.link.prog_id()
        try:
            proc = run("--iface", dev, "--netns", ns, "--json")
            text = run("--iface", dev, "--netns", ns).stdout
        finally:
            tcx.link.close()
    finally:
        os.close(xdp_fd)
        os.close(tc_fd)
    assert proc.returncode == 0, proc.stderr
    i = json.loads(proc.stdout)["interface"]
    link = _ip_link(ns, dev)
    assert (i["name"], i["ifindex"], i["netns"]) == (dev, link["ifindex"], ns)
    assert i["mtu"] == link["mtu"]
    assert (i["rx_queues"], i["tx_queues"]) == (link["num_rx_queues"], link["num_tx_queues"])
    names = i["xdp_features"]["names"]
    assert {"basic", "redirect"} <= set(names)
    xdp_id = link["xdp"]["prog"]["id"]
    assert i["xdp"]["prog_id"] == xdp_id and i["xdp"]["mode"] == "generic"
    assert i["tc"] == [f"tcx ingress prog {tc_id}"]
    # the human form says the same
    assert f"interface {dev} (ifindex {link['ifindex']}, veth)" in text
    assert "basic, redirect" in text and f"prog {xdp_id} (generic)" in text
