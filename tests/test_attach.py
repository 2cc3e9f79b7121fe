"""Attaching for real, inside throw-away namespaces: XDP in every mode and method, tcx and
clsact, clear errors when a hook is taken, atomic replacement, and real packets."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from ebplane.errors import AttachError, KernelError, NotSupported
from ebplane.kernel.codec import U32, U64
from ebplane.kernel.programs import BpfObject, Program
from ebplane.net import attach
from ebplane.net import netns as _netns
from ebplane.toolchain.clang import compile_file

BPF_DIR = Path(__file__).parent / "bpf"
ETH_P_TEST = 0x88B5  # IEEE "local experimental" EtherType: no other traffic uses it

used_namespaces: list[str] = []
loaded_prog_ids: list[int] = []


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind(tmp_path_factory):
    """Set up first, torn down last: after every object of this module is closed, no
    namespace of ours exists and no program we loaded is still held by anything (an
    attachment left anywhere would keep it alive)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBPLANE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield
    left_ns = [n for n in used_namespaces if n in _netns.list_ours()]
    deadline = time.monotonic() + 2
    alive = list(loaded_prog_ids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _prog_alive(pid)]
        time.sleep(0.02)
    assert not left_ns, f"namespaces left behind: {left_ns}"
    assert not alive, f"programs still loaded (attached somewhere?): {alive}"


def _prog_alive(prog_id: int) -> bool:
    try:
        Program.from_id(prog_id).close()
        return True
    except KernelError as e:
        assert e.errno == errno.ENOENT
        return False


@pytest.fixture(scope="module")
def progs():
    """The test programs, loaded once: ``progs["xdp_swap"]``, ``progs.maps["xdp_counts"]``."""
    objs = [BpfObject.open_bytes(compile_file(BPF_DIR / f"{n}.bpf.c").elf, n).load()
            for n in ("xdp_swap", "count", "tc_mark")]
    loaded = Loaded(objs)
    loaded_prog_ids.extend(p.id for p in loaded.values())
    yield loaded
    for o in objs:
        o.close()


class Loaded(dict):
    """Programs of several objects by name, with their maps in ``.maps``."""

    def __init__(self, objs: list[BpfObject]):
        super().__init__((n, p) for o in objs for n, p in o.programs.items())
        self.maps = {n: m for o in objs for n, m in o.maps.items()}


@pytest.fixture
def inside(veth_pair):
    """The test body runs inside a fresh namespace holding veth0 <-> veth1 (both up)."""
    ns = veth_pair[0]
    used_namespaces.append(ns)
    with _netns.enter(ns):
        yield ns


def _xdp(ifname: str) -> dict:
    return attach.query_xdp(ifname)


# -- XDP -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["native", "generic"])
@pytest.mark.parametrize("use_link", [True, False], ids=["link", "netlink"])
def test_xdp_attach_and_detach(progs, inside, mode, use_link):
    prog = progs["xdp_pass"]
    a = attach.attach_xdp(prog.fd, "veth0", mode=mode, use_link=use_link)
    assert (a.hook, a.mode, a.method) == ("xdp", mode, "link" if use_link else "netlink")
    assert a.notes == [] and a.ifindex == attach.ifindex("veth0")
    q = _xdp("veth0")
    assert q["prog_id"] == prog.id and q["mode"] == mode
    assert q["drv_prog_id" if mode == "native" else "skb_prog_id"] == prog.id
    if use_link:
        assert a.link.type == "xdp" and a.link.prog_id() == prog.id
        a.link.close()
    else:
        assert a.link is None
        attach.detach_xdp("veth0", mode)
    assert _xdp("veth0")["prog_id"] is None


def test_auto_falls_back_to_generic_with_a_note(progs, inside):
    """lo has no native XDP: auto attaches in generic mode and says why."""
    prog = progs["xdp_pass"]
    with pytest.raises(NotSupported) as ei:
        attach.attach_xdp(prog.fd, "lo", mode="native")
    assert "generic" in ei.value.hint
    a = attach.attach_xdp(prog.fd, "lo", mode="auto")
    try:
        assert a.mode == "generic"
        assert len(a.notes) == 1 and "native XDP refused on lo" in a.notes[0]
        assert _xdp("lo")["mode"] == "generic"
    finally:
        a.link.close()
    # auto on a veth: native works, no note
    b = attach.attach_xdp(prog.fd, "veth0", mode="auto", use_link=False)
    assert (b.mode, b.notes) == ("native", [])
    attach.detach_xdp("veth0")
    assert _xdp("lo")["prog_id"] is None and _xdp("veth0")["prog_id"] is None


@pytest.mark.parametrize("second", [dict(mode="native"), dict(mode="generic"),
                                    dict(mode="auto", use_link=False)],
                         ids=["native-link", "generic-link", "auto-netlink"])
def test_attach_over_an_attached_program_is_a_clear_error(progs, inside, second):
    first = attach.attach_xdp(progs["xdp_swap"].fd, "veth0", mode="native")
    try:
        with pytest.raises(AttachError) as ei:
            attach.attach_xdp(progs["xdp_pass"].fd, "veth0", **second)
        e = ei.value
        assert e.errno in (errno.EBUSY, errno.EEXIST) and "veth0" in str(e)
        assert f"id {progs['xdp_swap'].id}" in e.hint and "detach it first" in e.hint
        assert "name 'xdp_swap'" in e.hint  # whose program is in the way
        assert _xdp("veth0")["prog_id"] == progs["xdp_swap"].id  # untouched
    finally:
        first.link.close()


def test_link_update_replaces_atomically(progs, inside):
    swap, pas = progs["xdp_swap"], progs["xdp_pass"]
    a = attach.attach_xdp(swap.fd, "veth0", mode="native")
    try:
        link_id = a.link.id
        a.link.update(pas.fd, old_prog_fd=swap.fd)
        assert a.link.prog_id() == pas.id and a.link.id == link_id
        assert _xdp("veth0")["prog_id"] == pas.id
        # the expected old program is no longer there: refused, nothing changes
        with pytest.raises(AttachError) as ei:
            a.link.update(swap.fd, old_prog_fd=swap.fd)
        assert "replaced" in ei.value.hint
        assert _xdp("veth0")["prog_id"] == pas.id
        a.link.update(swap.fd)
        assert _xdp("veth0")["prog_id"] == swap.id
    finally:
        a.link.close()


def test_replace_xdp_on_a_netlink_attachment(progs, inside):
    swap, pas = progs["xdp_swap"], progs["xdp_pass"]
    attach.attach_xdp(swap.fd, "veth0", mode="generic", use_link=False)
    try:
        attach.replace_xdp("veth0", pas.fd, swap.fd, "generic")
        assert _xdp("veth0")["prog_id"] == pas.id
        with pytest.raises(AttachError):
            attach.replace_xdp("veth0", swap.fd, swap.fd, "generic")  # stale expectation
        assert _xdp("veth0")["prog_id"] == pas.id
    finally:
        attach.detach_xdp("veth0", "generic")
    assert _xdp("veth0")["prog_id"] is None


def _send(iface: str, count: int) -> None:
    from scapy.all import Ether, Raw, sendp
    frame = Ether(src="02:00:00:00:00:02", dst="ff:ff:ff:ff:ff:ff", type=ETH_P_TEST)
    frame /= Raw(b"x" * 50)
    sendp(frame, iface=iface, count=count, verbose=False)


def _wait_count(m, key: int, want: int) -> int:
    deadline = time.monotonic() + 2
    while (got := m.get(key, 0)) < want and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_a_real_packet_reaches_the_xdp_program(progs, inside, mode):
    counts = progs.maps["xdp_counts"].with_codecs(U32, U64)
    counts.clear()
    a = attach.attach_xdp(progs["xdp_count"].fd, "veth0", mode=mode)
    try:
        _send("veth1", 5)
        assert _wait_count(counts, ETH_P_TEST, 5) == 5
        time.sleep(0.05)
        assert counts[ETH_P_TEST] == 5  # exactly: no more arrive later
    finally:
        a.link.close()
    _send("veth1", 2)  # detached: no longer counted
    time.sleep(0.05)
    assert counts[ETH_P_TEST] == 5


# -- TC ------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_tcx_attach_and_detach(progs, inside, direction):
    prog = progs["tc_ok"]
    a = attach.attach_tc(prog.fd, "veth0", direction)
    assert (a.hook, a.method, a.notes) == (f"tc-{direction}", "tcx", [])
    assert a.link.type == "tcx" and a.link.prog_id() == prog.id
    assert attach.query_tcx("veth0", direction) == [prog.id]
    other = "egress" if direction == "ingress" else "ingress"
    assert attach.query_tcx("veth0", other) == []
    a.link.close()
    assert attach.query_tcx("veth0", direction) == []


def test_a_real_packet_reaches_the_tcx_program(progs, inside):
    counts = progs.maps["tc_counts"].with_codecs(U32, U64)
    counts.clear()
    ingress = attach.attach_tc(progs["tc_count"].fd, "veth0", "ingress")
    egress = attach.attach_tc(progs["tc_count"].fd, "veth1", "egress")
    try:
        _send("veth1", 3)  # leaves veth1 (egress), arrives at veth0 (ingress)
        assert _wait_count(counts, ETH_P_TEST, 6) == 6
    finally:
        ingress.link.close()
        egress.link.close()


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_clsact_attach_and_detach(progs, inside, direction):
    prog, other = progs["tc_ok"], progs["tc_mark"]
    a = attach.attach_tc(prog.fd, "veth0", direction, method="clsact", priority=3, handle=7)
    assert (a.method, a.link, a.tc_priority, a.tc_handle) == ("clsact", None, 3, 7)
    try:
        assert attach.query_clsact("veth0", direction, 3, 7) == prog.id
        with pytest.raises(AttachError) as ei:
            attach.attach_tc(other.fd, "veth0", direction, method="clsact", priority=3, handle=7)
        assert ei.value.errno == errno.EEXIST and "priority 3" in ei.value.hint
        attach.replace_clsact(other.fd, "veth0", direction, 3, 7)
        assert attach.query_clsact("veth0", direction, 3, 7) == other.id
    finally:
        attach.detach_clsact("veth0", direction, 3, 7)
    assert attach.query_clsact("veth0", direction, 3, 7) is None


def test_failed_clsact_attach_leaves_no_qdisc(progs, inside):
    with pytest.raises(AttachError):  # an XDP program is no TC classifier
        attach.attach_tc(progs["xdp_pass"].fd, "veth0", "ingress", method="clsact")
    qdiscs = _netns.run(inside, ["tc", "qdisc", "show", "dev", "veth0"]).stdout
    assert "clsact" not in qdiscs


def test_unknown_names_are_refused(progs, inside):
    from ebplane.errors import InterfaceNotFound
    with pytest.raises(InterfaceNotFound):
        attach.attach_xdp(progs["xdp_pass"].fd, "nope0")
    with pytest.raises(AttachError):
        attach.attach_xdp(progs["xdp_pass"].fd, "veth0", mode="turbo")
    with pytest.raises(AttachError):
        attach.attach_tc(progs["tc_ok"].fd, "veth0", "sideways")
