"""Shared fixtures: throw-away namespaces, veth pairs, the lab, and a leak check.

The tests exercise the real kernel, so they need root.  Every namespace a
test creates is an ``ebp-`` namespace that must be gone when the session
ends, and its pins live under a private bpffs directory it removes; the session fails
if a namespace or a pin is left over.
"""

from __future__ import annotations

import os
import secrets

import pytest

from ebplane.net import iface
from pins import foreign
from ebplane.net import netns as _netns


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() != 0:
        pytest.exit("ebplane's tests need root: they load BPF programs and create network "
                    "namespaces. Run them as root: sudo scripts/test (see README).", returncode=4)


@pytest.fixture(scope="session", autouse=True)
def no_leftover_namespaces(tmp_path_factory):
    """Fail the session if it leaves an ``ebp-`` namespace behind (and remove it).

    Only namespaces this session's processes created count (ebplane logs each
    creation to $EBPLANE_NETNS_LOG, inherited by subprocesses), so a
    concurrent test run on the same machine is neither blamed nor disturbed.
    """
    before = set(_netns.list_ours())
    log = tmp_path_factory.mktemp("netns") / "created.log"
    log.touch()
    saved = os.environ.get(_netns.LOG_ENV)
    os.environ[_netns.LOG_ENV] = str(log)
    try:
        yield
    finally:
        if saved is None:
            del os.environ[_netns.LOG_ENV]
        else:
            os.environ[_netns.LOG_ENV] = saved
    created = set(log.read_text().split())
    leftover = sorted(n for n in created - before if _netns.exists(n))
    for name in leftover:
        _netns.remove(name)
    if leftover:
        pytest.fail(f"tests left network namespaces behind (now removed): {', '.join(leftover)}",
                    pytrace=False)


BPFFS = "/sys/fs/bpf"


def _bpffs_entries() -> set[str]:
    try:
        return {e for e in os.listdir(BPFFS) if not e.endswith(".debug")}
    except OSError:
        return set()


@pytest.fixture(scope="session", autouse=True)
def no_leftover_pins():
    """Fail the session if it leaves anything new in /sys/fs/bpf: every test pins under a
    private root (``ebp-test-*``, ``ebplane-test-*``) that it must remove."""
    before = _bpffs_entries()
    yield
    # another test session on this machine may come and go meanwhile: its roots are not ours
    leftover = sorted(e for e in _bpffs_entries() - before if not foreign(e))
    if leftover:
        pytest.fail(f"tests left pins behind in {BPFFS}: {', '.join(leftover)}", pytrace=False)


@pytest.fixture
def netns():
    """The name of a fresh empty namespace (loopback up), removed afterwards.

    Enter it with ``ebplane.net.netns.enter(name)``.
    """
    with _netns.temporary() as ns:
        yield ns.name


@pytest.fixture
def veth_pair():
    """``(ns, "veth0", "veth1")``: a fresh namespace holding a veth pair, both ends up."""
    with _netns.temporary() as ns:
        _netns.run(ns.name, ["ip", "link", "add", "veth0", "type", "veth", "peer", "name",
                             "veth1"])
        for dev in ("veth0", "veth1"):
            _netns.run(ns.name, ["ip", "link", "set", dev, "up"])
        with _netns.enter(ns.name):
            for dev in ("veth0", "veth1"):
                iface.wait_up(dev)
        yield ns.name, "veth0", "veth1"


@pytest.fixture(scope="module")
def lab():
    """The default lab (client -- dut -- server), up for one test module.

    It runs under a private name (``ebp-tl<hex>``) so it neither collides
    with a lab started by hand nor with a parallel test run; address nodes
    with ``lab.ns("dut")``.
    """
    from ebplane.lab.topology import Lab

    the_lab = Lab.load(name=f"ebp-tl{secrets.token_hex(3)}")
    the_lab.up()
    try:
        yield the_lab
    finally:
        the_lab.down()
