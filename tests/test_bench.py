"""``ebplane bench``: benchmarks are not tests, so this only checks that the command runs on
tiny sizes, writes well-formed JSON, Markdown and PNG with all four sections, and leaves
nothing behind.  The figures themselves are not asserted (they are machine-specific), except
the invariants the benchmark exists to show: verdicts of compared programs agree, and a
re-apply under traffic loses no packet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ebplane.bench import SECTIONS, parse_sections
from ebplane.bench.harness import Suite
from ebplane.bench.live import LAB
from ebplane.bench.report import markdown
from ebplane.cli.main import main
from ebplane.errors import UsageError
from ebplane.net import netns

pytestmark = [pytest.mark.kernel, pytest.mark.lab]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = main(["bench", "--quick", "--out", str(out)])
    return rc, out, json.loads((out / "bench.json").read_text())


def test_quick_run_writes_all_outputs(quick_run):
    rc, out, doc = quick_run
    assert rc == 0
    assert list(doc["sections"]) == list(SECTIONS)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench.md").read_text()
    for heading in ("## 1. Program cost", "## 2. Live throughput", "## 3. Control plane",
                    "## 4. Scaling", "## 6. ClassBench-style rule sets"):
        assert heading in md
    assert md.strip() == markdown(doc).strip()  # the report is derived from the JSON alone
    assert doc["command"].startswith("ebplane bench --quick")
    assert doc["machine"]["nproc"] == os.cpu_count()


def test_l4_section_compares_stateful_functions_with_nftables(quick_run):
    l4 = quick_run[2]["sections"]["l4"]
    names = {r["name"] for r in l4["rows"]}
    assert {"kernel", "ebplane-firewall", "nftables-firewall", "ebplane-nat",
            "nftables-nat"} <= names
    for r in l4["rows"]:
        assert "error" not in r, r
        assert r["handled_fraction"] > 0.9, r  # what was sent reached the sink
    assert set(l4["ratios"]) >= {"ebplane-firewall / nftables-firewall",
                                 "ebplane-nat / nftables-nat"}
    assert l4["checks"]["ebplane_nat_translated"] > 0  # the NAT rows did translate
    assert "## L4: stateful firewall and NAT" in markdown(quick_run[2])


def test_cost_section_compares_the_same_job(quick_run):
    cost = quick_run[2]["sections"]["cost"]
    assert cost["floor"]["ns_per_packet"]["median"] > 0
    cases = {r["case"] for r in cost["rows"]}
    assert cases == {c.name for c in Suite.load().cost}
    for r in cost["rows"]:
        assert r["verdicts_agree"], r
        assert r["ratio_to_floor"] == pytest.approx(
            r["ebplane"]["ns_per_packet"]["median"] / cost["floor"]["ns_per_packet"]["median"],
            abs=0.01)
        assert r["ebplane"]["verified_insns"] > 0
    # a peer exists for the cases that name one, and it was measured
    assert any(r["peer"] and r["ratio_to_peer"] for r in cost["rows"])


def test_live_section_has_every_device_under_test(quick_run):
    live = quick_run[2]["sections"]["live"]
    assert {r["name"] for r in live["drop"]} >= {"xdp-floor", "ebplane", "baseline", "nftables"}
    assert {r["name"] for r in live["forward"]} == {"kernel", "baseline", "ebplane"}
    for r in live["drop"] + live["forward"]:
        assert "error" in r or (r["mpps"]["min"] <= r["mpps"]["median"] <= r["mpps"]["max"]
                                and r["mpps"]["min"] > 0 and "dut_ns_per_packet" in r), r
    for name in ("xdp-floor", "ebplane", "baseline", "nftables"):
        row = next(r for r in live["drop"] if r["name"] == name)
        assert "mpps" in row, row


def test_containers_section_compares_tc_with_the_kernel(quick_run):
    """TC forwarding against the kernel's own path in the container lab, in one run."""
    ct = quick_run[2]["sections"]["containers"]
    for pair in ("routed", "bridged"):
        kernel, tc = ct[pair]
        assert (kernel["name"], tc["name"]) == ("kernel", "ebplane-tc")
        for r in (kernel, tc):
            assert r["mpps"]["min"] > 0 and r["handled_fraction"] > 0.5, r
        assert tc["speedup_per_turn"]["n"] >= 1 and "_pps" not in tc
        assert tc["speedup_vs_kernel"] == round(tc["mpps"]["median"]
                                                / kernel["mpps"]["median"], 2)
    assert "## 7. Forwarding at TC in the container lab" in markdown(quick_run[2])
    assert not [n for n in netns.list_ours() if n.startswith("ebp-bct")]


def test_control_section_loses_no_packet(quick_run):
    control = quick_run[2]["sections"]["control"]
    r = control["reapply_under_traffic"]
    assert r["received"] > 0 and r["lost"] == 0
    assert control["apply"]["cold_s"] > 0 and control["apply"]["reapply_s"] > 0
    assert [row["entries"] for row in control["table_load"]] == [1000]


def test_scaling_section(quick_run):
    sc = quick_run[2]["sections"]["scaling"]
    assert [r["rules"] for r in sc["rules"]] == [1, 100]
    assert all(r["hit"]["verdict"] == "XDP_DROP" and r["miss"]["verdict"] == "XDP_PASS"
               for r in sc["rules"])
    assert len(sc["protocols"]) >= 2


def test_balancer_section_compares_the_same_job(quick_run):
    b = quick_run[2]["sections"]["balancer"]
    cost = b["cost"]
    # ebplane and the hand-written baseline both balanced and sent every packet
    for name in ("ebplane", "baseline"):
        for kind in ("established", "new"):
            assert cost[name][kind]["verdicts"] == ["XDP_TX"], (name, kind)
            assert cost[name][kind]["ns_per_packet"]["median"] > \
                cost["floor"][kind]["ns_per_packet"]["median"]
    assert b["summary"]["cost_ratio_established"] > 0
    rows = {r["name"]: r for r in b["live"]["rows"]}
    assert set(rows) == {"ebplane", "baseline", "nftables-dnat"}
    for r in rows.values():
        assert "mpps" in r and r["mpps"]["min"] > 0, r
    assert "## 8. Balancer" in (quick_run[1] / "bench.md").read_text()


def test_nothing_left_behind(quick_run):
    assert not [n for n in netns.list_ours() if n.startswith(LAB)]
    assert not list(Path("/sys/fs/bpf").glob(f"ebplane-bench-{os.getpid()}"))
    assert not Path(f"/run/ebplane/labs/{LAB}.json").exists()


def test_unknown_section_is_refused():
    with pytest.raises(UsageError, match="unknown benchmark section 'speed'"):
        parse_sections("cost,speed")
    assert parse_sections("live, cost") == ("live", "cost")


def test_missing_suite_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError) as e:
        Suite.load(tmp_path)
    assert "cases.yaml" in str(e.value) and "--suite" in e.value.hint


def test_jumbo_section_measures_every_row(tmp_path):
    out = tmp_path / "jumbo"
    assert main(["bench", "--quick", "--sections", "jumbo", "--out", str(out)]) == 0
    doc = json.loads((out / "bench.json").read_text())
    j = doc["sections"]["jumbo"]
    assert [r["name"] for r in j["rows"]] == ["sender-floor", "kernel", "generic", "native"]
    for r in j["rows"]:
        assert "error" not in r, r
        assert r["kpps"]["median"] > 0 and r["handled_fraction"] > 0.9
    assert "## 9. Jumbo frames (MTU 9000)" in (out / "bench.md").read_text()
    assert not any(n.startswith("ebp-bjumbo") for n in netns.list_ours())
