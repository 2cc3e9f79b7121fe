"""ebplane trace on the lab's device under test: capture under real traffic into pcapng, read
it back with tshark, and the program is trace-free again afterwards; an orphaned capture (a
trace killed with SIGKILL) is removed by the next command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from pipeline_fixtures import (EBPLANE, cli, ebp_env, lab_firewall, rule_counts,  # noqa: F401
                               write_spec)
from ebplane.kernel.programs import Program
from ebplane.lab import traffic
from ebplane.lab.traffic import Flow
from ebplane.runtime import pipeline
from ebplane.runtime.state import PipelineState, pin_dir

# the firewall's rules (filter acl on the DUT: pipeline_fixtures.lab_firewall)
RULES = ['{dst: 198.18.2.2, proto: udp, dport: 53, action: drop}',
         '{dst: "2001:db8:2::2", proto: tcp, dport: 80, action: pass}']

# flow, frames, (verdict, stage, rule) the comment must carry
FLOWS = [
    (Flow("udp", "198.18.1.2", "198.18.2.2", 41000, 53), 5, ("XDP_DROP", "acl", "0")),
    (Flow("tcp", "2001:db8:1::2", "2001:db8:2::2", 41001, 80), 4, ("XDP_PASS", "acl", "1")),
    (Flow("udp", "198.18.1.2", "198.18.2.2", 41002, 5353), 3, ("XDP_PASS", "-", "-")),
]


def _insns(name: str) -> tuple[int, int]:
    p = Program.from_pin(pin_dir(name) / "prog")
    try:
        info = p.info()
        return info["id"], info["insns"]
    finally:
        p.close()


def _start_trace(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([*EBPLANE, "trace", "fw", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the capture is in force once the state says so
        st = PipelineState.load("fw")
        if st is not None and st.capture and st.capture["pid"] == proc.pid and not st.pending:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"trace exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the trace did not start")


def _tshark(path) -> list[list[str]]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|",
                          "-e", "ip.dst", "-e", "ipv6.dst", "-e", "udp.dstport",
                          "-e", "tcp.dstport", "-e", "frame.interface_name",
                          "-e", "frame.comment"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


@pytest.mark.lab
@pytest.mark.slow
def test_trace_to_pcapng_read_back_with_tshark(ebp_env, lab, tmp_path):
    client, dut = lab.ns("client"), lab.ns("dut")
    assert traffic.ping(client, "198.18.2.2", 1) == 1
    assert traffic.ping(client, "2001:db8:2::2", 1) == 1
    pipeline.apply(write_spec(tmp_path / "fw.yaml", lab_firewall(dut, RULES)))
    try:
        prog_before, insns_before = _insns("fw")
        out = tmp_path / "cap.pcapng"
        total = sum(n for _, n, _ in FLOWS)
        proc = _start_trace("-w", str(out), "--count", str(total), "--duration", "30",
                            "udp or tcp")
        traced_prog, traced_insns = _insns("fw")
        assert traced_prog != prog_before and traced_insns > insns_before
        for flow, n, _ in FLOWS:
            traffic.send(client, "eth0", flow, n)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        assert f"{total} packets written" in proc.stderr.read()

        rows = _tshark(out)
        assert len(rows) == total
        for flow, n, (verdict, stage, rule) in FLOWS:
            port = str(flow.dport)
            mine = [r for r in rows if port in (r[2], r[3])]
            assert len(mine) == n, rows
            for ip4, ip6, _u, _t, ifname, comment in mine:
                assert flow.dst in (ip4, ip6) and ifname == "eth0"
                assert f"verdict={verdict}" in comment and f"stage={stage}" in comment
                assert f"rule={rule}" in comment and "pipeline=fw" in comment

        # the trace-free program again: same instruction count; counters kept throughout
        prog_after, insns_after = _insns("fw")
        assert insns_after == insns_before and prog_after != traced_prog
        assert PipelineState.load("fw").capture is None
        assert not (pin_dir("fw") / "maps" / "ebp_cap_ring").exists()
        s = pipeline.stats("fw")[0]
        assert rule_counts(s)[:2] == [5, 4]
    finally:
        pipeline.detach("fw")


@pytest.mark.lab
@pytest.mark.slow
def test_trace_json_by_verdict_and_orphan_removed(ebp_env, lab, tmp_path):
    client, dut = lab.ns("client"), lab.ns("dut")
    assert traffic.ping(client, "198.18.2.2", 1) == 1
    pipeline.apply(write_spec(tmp_path / "fw.yaml", lab_firewall(dut, RULES)))
    try:
        _, insns_before = _insns("fw")
        proc = _start_trace("--json", "--verdict", "drop", "--count", "3", "--duration", "30")
        traffic.send(client, "eth0", FLOWS[2][0], 4)   # passes: not captured
        traffic.send(client, "eth0", FLOWS[0][0], 3)   # dropped by rule 0
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        recs = [json.loads(line) for line in proc.stdout.read().splitlines()]
        assert len(recs) == 3
        for r in recs:
            assert (r["verdict"], r["stage"], r["rule"], r["ifname"]) == \
                ("XDP_DROP", "acl", 0, "eth0")
            assert "UDP" in r["summary"] and r["length"] >= 42
        assert _insns("fw")[1] == insns_before

        # a trace killed with SIGKILL leaves its capture; the next command removes it
        proc = _start_trace()
        assert _insns("fw")[1] != insns_before
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        st = cli("status", "fw", "--json")
        assert json.loads(st.stdout)[0]["capture"] is None
        assert _insns("fw")[1] == insns_before
    finally:
        pipeline.detach("fw")
