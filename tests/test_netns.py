"""Network namespaces, interface facts and netdev XDP features against the real kernel."""

from __future__ import annotations

import json
import secrets
import socket
import threading

import pytest

from ebplane.errors import InterfaceNotFound, KernelError, NotFound, NotSupported, UsageError
from ebplane.net import iface, netdev
from ebplane.net import netns as nsapi  # the `netns` fixture is a namespace's name


def _ip_json(ns: str, *args: str):
    return json.loads(nsapi.run(ns, ["ip", "-j", *args]).stdout)


# -- namespaces ------------------------------------------------------------------


def test_create_list_remove():
    name = f"ebp-t-{secrets.token_hex(3)}"
    nsapi.create(name)
    try:
        assert nsapi.exists(name)
        assert name in nsapi.list_ours()
        listed = nsapi.run(name, ["ip", "netns", "list"]).stdout  # ip netns sees it too
        assert name in listed
        lo = _ip_json(name, "link", "show", "lo")[0]
        assert "UP" in lo["flags"]
        with pytest.raises(UsageError, match="already exists"):
            nsapi.create(name)
    finally:
        nsapi.remove(name)
    assert not nsapi.exists(name)
    assert name not in nsapi.list_ours()
    nsapi.remove(name)  # idempotent


@pytest.mark.parametrize("bad", ["foo", "lab-client", "ebp-a/b", "", "ebp-" + "x" * 70])
def test_names_outside_our_prefix_are_refused(bad):
    for op in (nsapi.create, nsapi.remove, nsapi.exists):
        with pytest.raises(UsageError) as e:
            op(bad)
        assert e.value.hint


def test_enter_switches_only_this_thread_and_restores(netns):
    home = nsapi.current_inode()
    with nsapi.enter(netns) as entered:
        assert entered == netns
        assert nsapi.current_inode() == nsapi.inode(netns) != home
        assert nsapi.current_name() == netns
        assert [n for _, n in socket.if_nameindex()] == ["lo"]
    assert nsapi.current_inode() == home


def test_enter_restores_on_exception(netns):
    home = nsapi.current_inode()
    with pytest.raises(RuntimeError, match="boom"):
        with nsapi.enter(netns):
            assert nsapi.current_inode() != home
            raise RuntimeError("boom")
    assert nsapi.current_inode() == home


def test_enter_nested(netns, veth_pair):
    home = nsapi.current_inode()
    other = veth_pair[0]
    with nsapi.enter(netns):
        with nsapi.enter(other):
            assert nsapi.current_name() == other
        assert nsapi.current_name() == netns
    assert nsapi.current_inode() == home


def test_namespaces_are_per_thread(netns):
    home = nsapi.current_inode()
    inside, release = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def worker():
        with nsapi.enter(netns):
            seen["worker"] = nsapi.current_inode()
            inside.set()
            release.wait(5)
        seen["worker_after"] = nsapi.current_inode()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert inside.wait(5)
        assert nsapi.current_inode() == home  # the main thread did not move
    finally:
        release.set()
        t.join(5)
    assert seen["worker"] == nsapi.inode(netns)
    assert seen["worker_after"] == home


def test_missing_namespace_errors():
    with pytest.raises(NotFound) as e:
        with nsapi.enter("ebp-does-not-exist"):
            pass
    assert "ebp-does-not-exist" in str(e.value)
    assert "ip netns list" in e.value.hint and "ebplane lab up" in e.value.hint
    with pytest.raises(NotFound):
        nsapi.run("ebp-does-not-exist", ["true"])
    with pytest.raises(NotFound):
        nsapi.inode("ebp-does-not-exist")
    with pytest.raises(NotFound):  # not ours, but entering is allowed if it existed
        with nsapi.enter("no-such-ns-here"):
            pass


def test_temporary_removes_namespace_also_on_failure():
    with pytest.raises(ValueError):
        with nsapi.temporary() as ns:
            name = ns.name
            assert nsapi.exists(name)
            assert len(name) == len("ebp-t-") + 6
            raise ValueError("test failure inside")
    assert not nsapi.exists(name)


def test_temporary_names_are_unique():
    with nsapi.temporary() as a, nsapi.temporary(prefix="ebp-x") as b:
        assert a.name != b.name
        assert b.name.startswith("ebp-x-")


def test_run_returns_output_and_raises_with_stderr(netns):
    out = nsapi.run(netns, ["ip", "-j", "link"])
    assert [l["ifname"] for l in json.loads(out.stdout)] == ["lo"]
    with pytest.raises(KernelError) as e:
        nsapi.run(netns, ["ip", "link", "del", "nosuchdev"])
    assert "nosuchdev" in str(e.value) and "Cannot find device" in str(e.value)
    proc = nsapi.run(netns, ["ip", "link", "del", "nosuchdev"], check=False)
    assert proc.returncode != 0
    with pytest.raises(NotSupported, match="not installed"):
        nsapi.run(netns, ["ebplane-no-such-program"])
    with pytest.raises(KernelError, match="timed out"):
        nsapi.run(netns, ["sleep", "5"], timeout=0.2)


# -- interfaces ------------------------------------------------------------------


def test_iface_info_of_a_veth(veth_pair):
    ns, a, b = veth_pair
    links = {l["ifname"]: l for l in _ip_json(ns, "-d", "link")}
    with nsapi.enter(ns):
        info = iface.info(a)
        assert info.name == a
        assert info.ifindex == iface.ifindex(a) == links[a]["ifindex"]
        assert info.mac == links[a]["address"]
        assert info.mtu == links[a]["mtu"] == 1500
        assert info.kind == "veth" and info.driver == "veth"
        assert info.operstate == "UP" and info.up
        assert info.rx_queues == links[a]["num_rx_queues"]
        assert info.tx_queues == links[a]["num_tx_queues"]
        assert info.peer_ifindex == iface.ifindex(b)
        assert info.peer_netns == ns
        assert info.xdp_prog_id is None
        assert {i.name for i in iface.list_ifaces()} == {"lo", a, b}


def test_iface_peer_in_another_namespace(netns, veth_pair):
    ns = veth_pair[0]
    nsapi.run(netns, ["ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1",
                      "netns", ns])
    with nsapi.enter(ns):
        x1 = iface.ifindex("x1")
    with nsapi.enter(netns):
        info = iface.info("x0")
    assert (info.peer_netns, info.peer_ifindex) == (ns, x1)


def test_iface_gro_follows_ethtool(veth_pair):
    ns, _, b = veth_pair

    def ethtool_gro() -> bool:
        out = nsapi.run(ns, ["ethtool", "-k", b]).stdout
        line = next(l for l in out.splitlines() if l.startswith("generic-receive-offload:"))
        return line.split()[1] == "on"

    for state in ("off", "on"):
        nsapi.run(ns, ["ethtool", "-K", b, "gro", state])
        with nsapi.enter(ns):
            assert iface.info(b).gro is ethtool_gro() is (state == "on")


def test_interface_not_found_lists_existing(veth_pair):
    ns, a, b = veth_pair
    with nsapi.enter(ns):
        for call in (iface.ifindex, iface.info):
            with pytest.raises(InterfaceNotFound) as e:
                call("eth9")
            assert "eth9" in str(e.value) and ns in str(e.value)
            assert a in e.value.hint and b in e.value.hint


# -- netdev XDP features ---------------------------------------------------------


def test_xdp_features_of_a_veth(veth_pair):
    ns, a, b = veth_pair
    nsapi.run(ns, ["ethtool", "-K", b, "gro", "off"])
    with nsapi.enter(ns):
        feats = netdev.xdp_features(iface.ifindex(a))
        assert feats.ifindex == iface.ifindex(a)
        assert {"basic", "redirect", "rx_sg"} <= feats.names
        assert feats.raw & 0x23 == 0x23
        assert feats.basic and feats.redirect and feats.rx_sg
        assert not feats.redirect_target  # peer has neither XDP nor GRO
        assert not feats.xsk_zerocopy and not feats.hw_offload
        assert feats.to_dict()["names"][:2] == ["basic", "redirect"]
    nsapi.run(ns, ["ethtool", "-K", b, "gro", "on"])
    with nsapi.enter(ns):
        feats = netdev.xdp_features(iface.ifindex(a))
        assert feats.redirect_target and "ndo_xmit" in feats.names
        assert feats.raw & 0x4


def test_xdp_features_decodes_every_bit():
    feats = netdev.XdpFeatures.from_raw(7, 0x7F)
    assert feats.names == set(netdev.XDP_FEATURE_BITS.values())
    assert feats.ndo_xmit_sg and feats.hw_offload and feats.xsk_zerocopy


def test_xdp_features_unknown_ifindex(netns):
    with nsapi.enter(netns):
        with pytest.raises(InterfaceNotFound):
            netdev.xdp_features(4242)


def test_missing_genetlink_family_is_not_supported():
    with pytest.raises(NotSupported) as e:
        netdev.open_netdev("ebpnofamily")
    assert "ebpnofamily" in str(e.value) and e.value.exit_code == 4
    sock = netdev.open_netdev()
    try:
        assert sock.prid > 0x10  # a dynamic family id: past the fixed ones
    finally:
        sock.close()
