"""Driver features per interface in apply: the one table of building block -> XDP feature ->
fallback (ebplane.net.blocks), checked against the kernel's netdev features of real devices.

A Linux bridge device has no native XDP at all (no feature bits), a veth has basic,
redirect and rx_sg (ndo_xmit only while its peer runs XDP) and no AF_XDP zero-copy: enough
to see every path (refuse under mode: native, fall back with a note otherwise).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_fixtures import cli, ebp_env  # noqa: F401  (fixture)
from ebplane.errors import NotSupported
from ebplane.net import netns
from ebplane.net.blocks import BLOCKS, report
from ebplane.net.netdev import XDP_FEATURE_BITS, XdpFeatures
from ebplane.net.probe import probe_iface
from ebplane.runtime import pipeline

pytestmark = [pytest.mark.lab]


@pytest.fixture
def ns(ebp_env):
    with netns.temporary() as n:
        for cmd in ("ip link add br9 type bridge", "ip link set br9 up",
                    "ip link add va type veth peer name vb", "ip link set va up",
                    "ip link set vb up"):
            netns.run(n.name, cmd.split())
        yield n.name


def _spec(tmp_path: Path, ns: str, ifname: str, mode: str, stages: str = "  - count: {}\n"):
    p = tmp_path / "drv.yaml"
    p.write_text(f"pipeline: drv\nhook: xdp\nmode: {mode}\nnetns: {ns}\ninterfaces: [{ifname}]\n"
                 f"protocols: [ethernet, ipv4, udp]\nstages:\n{stages}")
    return p


def test_the_table_names_real_feature_bits():
    known = set(XDP_FEATURE_BITS.values())
    assert all(b.feature is None or b.feature in known for b in BLOCKS.values())
    assert {b.feature for b in BLOCKS.values()} >= known - {"hw_offload"}
    none = XdpFeatures.from_raw(1, 0)
    assert [r["ok"] for r in report(none)] == [b.feature is None for b in BLOCKS.values()]


def test_native_mode_on_a_device_without_xdp_is_refused_naming_the_feature(ebp_env, ns,
                                                                            tmp_path):
    with pytest.raises(NotSupported) as e:
        pipeline.apply(_spec(tmp_path, ns, "br9", "native"))
    assert "br9 lacks the XDP feature basic (native XDP)" in str(e.value)
    assert "mode: auto" in e.value.hint and "generic XDP" in e.value.hint
    assert e.value.exit_code == 4
    assert pipeline.status() == []                     # nothing changed
    proc = cli("apply", str(_spec(tmp_path, ns, "br9", "native")), check=False)
    assert proc.returncode == 4 and "basic" in proc.stderr


def test_auto_mode_falls_back_with_a_note(ebp_env, ns, tmp_path):
    res = pipeline.apply(_spec(tmp_path, ns, "br9", "auto"))
    try:
        assert any(n.startswith("driver features: br9 lacks the XDP feature basic")
                   and "generic XDP" in n for n in res.notes), res.notes
        assert [a["mode"] for a in res.attachments] == ["generic"]
    finally:
        pipeline.detach(res.name)


def test_redirecting_stage_needs_redirect_from(ebp_env, ns, tmp_path):
    with pytest.raises(NotSupported, match="redirect \\(redirect from\\)"):
        pipeline.apply(_spec(tmp_path, ns, "br9", "native", "  - redirect: {to: va}\n"))


def test_xsk_on_a_veth_notes_copy_mode(ebp_env, ns, tmp_path):
    res = pipeline.apply(_spec(tmp_path, ns, "va", "native", "  - xsk: {queue: 0}\n"))
    try:
        assert any("va lacks the XDP feature xsk_zerocopy" in n and "copy mode" in n
                   for n in res.notes), res.notes
        assert [a["mode"] for a in res.attachments] == ["native"]
    finally:
        pipeline.detach(res.name)


def test_jumbo_mtu_on_a_device_without_rx_sg(ebp_env, ns, tmp_path):
    netns.run(ns, "ip link set br9 mtu 9000".split())
    with pytest.raises(NotSupported, match="basic"):
        pipeline.apply(_spec(tmp_path, ns, "br9", "native"))
    res = pipeline.apply(_spec(tmp_path, ns, "br9", "auto"))
    try:
        assert any("lacks the XDP feature rx_sg (multi-buffer receive)" in n
                   for n in res.notes), res.notes
    finally:
        pipeline.detach(res.name)


def test_probe_reports_blocks(ns):
    d = probe_iface("va", netns=ns)
    by = {b["block"]: b for b in d["blocks"]}
    assert by["native XDP"]["ok"] and by["multi-buffer receive"]["ok"]
    assert not by["AF_XDP zero-copy"]["ok"]
    assert not by["redirect target"]["ok"]             # its peer runs no XDP
    assert not any(b["ok"] for b in probe_iface("br9", netns=ns)["blocks"] if b["feature"])


def test_a_redirect_target_without_ndo_xmit_is_refused_as_a_platform_limit(ebp_env, ns,
                                                                           tmp_path):
    """A bridge device offers no ndo_xmit: an XDP redirect to it would vanish.  That is a
    limit of the device (exit 4), and the hint says what serves (another device, or TC),
    not the veth-peer fix that does not apply to it."""
    spec = _spec(tmp_path, ns, "va", "auto", "  - redirect: {to: br9}\n")
    with pytest.raises(NotSupported) as e:
        pipeline.apply(spec)
    assert "br9" in str(e.value) and "would vanish" in str(e.value)
    assert "tc hook" in e.value.hint and "veth peer" not in e.value.hint
    assert e.value.exit_code == 4
    assert pipeline.status() == []                     # nothing changed
