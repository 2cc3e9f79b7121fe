"""Prometheus metrics and the live view, on a pipeline with traffic in a veth pair: the
scrape parses with prometheus_client's parser and agrees with `ebplane stats`; `ebplane top`
runs in a pseudo-terminal, shows the rates of running traffic and quits on q."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request

import pexpect
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from pipeline_fixtures import EBPLANE, Sender, cli, ebp_env, send_frames, write_spec  # noqa: F401
from ebplane.runtime import pipeline

SPEC = """\
pipeline: mx
hook: xdp
netns: {ns}
interfaces: [veth0]
protocols: [ethernet, ipv4, ipv6, tcp, udp]
stages:
  - filter:
      name: acl
      default: pass
      rules:
        - {{dst: 198.18.2.2, proto: udp, dport: 53, action: drop}}
        - {{dst: 198.18.2.2, proto: udp, dport: 80, action: pass}}
  - count: {{}}
"""


def _frame(dport: int) -> bytes:
    return bytes(Ether(dst="02:00:00:00:00:01") / IP(src="198.18.1.2", dst="198.18.2.2") /
                 UDP(sport=1234, dport=dport) / (b"x" * 18))


def _scrape(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.lab
def test_metrics_scrape_agrees_with_stats(ebp_env, veth_pair, tmp_path):
    ns, _v0, v1 = veth_pair
    pipeline.apply(write_spec(tmp_path / "mx.yaml", SPEC.format(ns=ns)))
    try:
        proc = subprocess.Popen([*EBPLANE, "metrics", "--listen", "127.0.0.1:0", "--bpf-stats",
                                 "--duration", "60"], stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()
            url = re.search(r"http://\S+/metrics", line).group(0)
            # sent while the BPF run statistics are on
            send_frames(ns, v1, [_frame(53)], 7)
            send_frames(ns, v1, [_frame(80)], 5)
            send_frames(ns, v1, [_frame(9)], 3)
            before = json.loads(cli("stats", "mx", "--json").stdout)[0]
            m = _scrape(url)
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
        s = json.loads(cli("stats", "mx", "--json").stdout)[0]
        acl = next(x for x in s["stages"] if x["stage"] == "acl")
        acl0 = next(x for x in before["stages"] if x["stage"] == "acl")

        def pk(rule, verdict):
            return m[("ebplane_packets_total", (("pipeline", "mx"), ("rule", rule),
                                                ("stage", "acl"), ("verdict", verdict)))]
        assert pk("0", "drop") == acl["rules"][0]["packets"] == 7
        assert pk("1", "pass") == acl["rules"][1]["packets"] == 5
        # the host's own IPv6 traffic on the veth (router solicitations...) may add to the
        # default between the readings
        assert acl0["default"]["packets"] <= pk("default", "pass") <= acl["default"]["packets"]
        assert pk("default", "pass") >= 3
        assert m[("ebplane_bytes_total", (("pipeline", "mx"), ("rule", "0"), ("stage", "acl"),
                                          ("verdict", "drop")))] == acl["rules"][0]["bytes"]
        for v, c in s["verdicts"].items():
            assert before["verdicts"][v]["packets"] <= m[("ebplane_verdict_packets_total", (
                ("pipeline", "mx"), ("verdict", v)))] <= c["packets"]
        assert m[("ebplane_drops_total", (("pipeline", "mx"), ("reason", "rule 0"),
                                          ("stage", "acl")))] == 7
        assert m[("ebplane_table_rules", (("pipeline", "mx"), ("table", "acl")))] == 2
        cap = m[("ebplane_table_capacity", (("pipeline", "mx"), ("table", "acl")))]
        assert cap >= 2
        assert m[("ebplane_map_capacity", (("map", "ebp_verdicts"), ("pipeline", "mx"),
                                           ("type", "percpu_array")))] == 8
        assert m[("ebplane_capture_active", (("pipeline", "mx"),))] == 0
        assert m[("ebplane_apply_last_seconds", (("pipeline", "mx"),))] > 0
        runs = [v for (n, labels), v in m.items() if n == "ebplane_program_runs_total"]
        secs = [v for (n, labels), v in m.items() if n == "ebplane_program_run_seconds_total"]
        assert len(runs) == 1 and runs[0] >= 15 and secs[0] > 0
        count = next(x for x in s["stages"] if x["kind"] == "count")["counts"]
        count0 = next(x for x in before["stages"] if x["kind"] == "count")["counts"]
        assert count0["all"]["packets"] <= m[("ebplane_stage_packets_total", (
            ("kind", "count"), ("outcome", "all"), ("pipeline", "mx"), ("stage", "count")))] \
            <= count["all"]["packets"]
    finally:
        pipeline.detach("mx")


def test_in_process_registry_observes_applies(ebp_env, veth_pair, tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest
    from ebplane.runtime import metrics
    ns, _v0, _v1 = veth_pair
    reg = metrics.register(CollectorRegistry())
    pipeline.apply(write_spec(tmp_path / "mx.yaml", SPEC.format(ns=ns)))
    try:
        metrics.reconcile_event("mx", "reapplied")
        text = generate_latest(reg).decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        if metrics._inprocess.registry is reg:  # the first registry of the process
            counts = [s.value for s in fams["ebplane_apply_seconds"].samples
                      if s.name.endswith("_count") and s.labels.get("pipeline") == "mx"]
            assert counts and counts[0] >= 1
            assert [s.value for s in fams["ebplane_reconcile_events"].samples
                    if s.labels == {"pipeline": "mx", "event": "reapplied"}
                    and s.name.endswith("_total")] == [1]
        assert "ebplane_packets" in fams and "ebplane_verdict_packets" in fams
    finally:
        pipeline.detach("mx")


@pytest.mark.lab
@pytest.mark.slow
def test_top_shows_rates_of_running_traffic_and_quits_on_q(ebp_env, veth_pair, tmp_path):
    ns, _v0, v1 = veth_pair
    pipeline.apply(write_spec(tmp_path / "mx.yaml", SPEC.format(ns=ns)))
    sender = Sender(ns, v1, _frame(53)).__enter__()
    try:
        env = {**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"}
        child = pexpect.spawn(EBPLANE[0], EBPLANE[1:] + ["top", "mx"], dimensions=(40, 160),
                              encoding="utf-8", timeout=30, env=env)
        child.logfile_read = open(tmp_path / "top.log", "w")
        try:
            # a nonzero packet rate on the drop rule (rule 0), once the second reading is in
            child.expect(r"#0 [^\n]*drop[^\n]*?\s(\d+(?:\.\d)?) (k?)pps")
            deadline = time.monotonic() + 20
            rate = float(child.match.group(1)) * (1000 if child.match.group(2) else 1)
            while rate == 0 and time.monotonic() < deadline:
                child.expect(r"#0 [^\n]*drop[^\n]*?\s(\d+(?:\.\d)?) (k?)pps")
                rate = float(child.match.group(1)) * (1000 if child.match.group(2) else 1)
            assert rate > 0
            child.send("q")
            child.expect(pexpect.EOF, timeout=10)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0
        # the same rates as text and JSON, over one interval
        rows = json.loads(cli("stats", "mx", "--rate", "0.5", "--json").stdout)
        drop = next(r for r in rows if r["stage"] == "acl" and r["what"].startswith("#0 "))
        assert drop["pps"] > 0 and drop["verdict"] == "drop"
        assert rows[0]["pps"] >= drop["pps"]  # highest rate first
        assert "#0 dst=198.18.2.2/32" in cli("stats", "mx", "--rate", "0.5").stdout
    finally:
        sender.stop()
        pipeline.detach("mx")


def test_status_names_every_pinned_object(ebp_env, veth_pair, tmp_path):
    ns, _v0, _v1 = veth_pair
    pipeline.apply(write_spec(tmp_path / "mx.yaml", SPEC.format(ns=ns)))
    try:
        [d] = json.loads(cli("status", "mx", "-v", "--json").stdout)
        objs = {o["pin"].rsplit("/", 1)[1]: o for o in d["objects"]}
        assert objs["prog"]["name"] == "ebp_mx" and objs["prog"]["role"] == "program"
        assert (objs["flt_acl_cnt"]["stage"], objs["flt_acl_cnt"]["role"]) == ("acl", "counters")
        assert (objs["cnt_count"]["stage"], objs["cnt_count"]["role"]) == ("count", "counters")
        assert objs["ebp_verdicts"]["role"] == "verdicts"
        for o in d["objects"]:
            assert len(o["name"]) <= 15 and o["role"] != "?"
            # bpftool shows the same kernel name, and the pin that names the pipeline
            out = subprocess.run(["bpftool", "-j", "-f", o["kind"], "show", "id", str(o["id"])],
                                 capture_output=True, text=True, check=True).stdout
            shown = json.loads(out)
            assert shown["name"] == o["name"] and o["pin"] in shown.get("pinned", [])
        human = cli("status", "mx", "-v").stdout
        assert "kernel objects" in human and "flt_acl_cnt" in human
    finally:
        pipeline.detach("mx")


def test_grafana_dashboard_uses_only_metrics_ebplane_serves():
    from pathlib import Path

    from prometheus_client import CollectorRegistry, generate_latest
    from ebplane.runtime import metrics
    dash = json.loads((Path(__file__).parents[1] / "packaging/grafana/ebplane-dashboard.json")
                      .read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|total|count|sum)$", "", n)
            for e in exprs for n in re.findall(r"ebplane_[a-z_]+", e)}
    reg = CollectorRegistry()
    metrics.register(reg)
    if metrics._inprocess.registry is not reg:  # histograms live in the first registry
        metrics._inprocess.__init__(reg)
    metrics.reconcile_event("x", "y")
    fams = {f.name for f in text_string_to_metric_families(generate_latest(reg).decode())}
    # families of a pipeline appear with one applied; their names are in the module's docs
    documented = set(re.findall(r"``(ebplane_[a-z_]+)``", metrics.__doc__))
    documented = {re.sub(r"_total$", "", n) for n in documented}
    assert used <= fams | documented, used - fams - documented


def test_stats_consumers_show_any_kind_by_its_rows():
    """stats, top, the chain demo and /metrics show a stage by what its kind says its
    counters are (StageControl.rows): a kind they do not know shows with its outcomes, a
    kind whose rows decide (as a filter's) with its rules and actions."""
    from ebplane.cli.chain import _human as chain_human
    from ebplane.cli.pipeline import stats_human
    from ebplane.cli.top import counters
    from ebplane.runtime.metrics import stage_samples
    from ebplane.stages.control import StageControl, StatRow, register_control

    class Limiter(StageControl):  # a kind that decides, with its own stats shape
        kind = "test-limiter"

        def rows(self, stats):
            return [StatRow("over", stats["over"], stats["over"] * 100, "drop"),
                    StatRow("under", stats["under"], 0)]

    register_control(Limiter())
    new = {"kind": "test-newkind", "stage": "nk", "counts": {"hit": {"packets": 3, "bytes": 300},
                                                              "miss": {"packets": 0, "bytes": 0}}}
    lim = {"kind": "test-limiter", "stage": "lim", "over": 4, "under": 9}
    filt = {"kind": "filter", "stage": "acl",
            "rules": [{"index": 0, "id": 1, "rule": {"dport": 53, "action": "drop"},
                       "packets": 7, "bytes": 700}],
            "default": {"action": "pass", "packets": 2, "bytes": 200},
            "malformed": {"action": "drop", "packets": 1, "bytes": 60}}
    item = {"name": "p", "verdicts": {"XDP_PASS": {"packets": 1, "bytes": 1}},
            "stages": [new, lim, filt]}
    c = counters([item])
    assert c[("p", "nk", "hit", "")] == (3, 300) and c[("p", "nk", "miss", "")] == (0, 0)
    assert c[("p", "lim", "(over)", "drop")] == (4, 400)
    assert c[("p", "acl", "#0 dport=53", "drop")] == (7, 700)
    assert c[("p", "acl", "(malformed)", "drop")] == (1, 60)
    text = stats_human([item])
    assert re.search(r"test-newkind nk\n.*class.*\n(.*\n)*.*hit\s+3\s+300", text)
    assert re.search(r"filter acl\n.*#.*action.*match(.*\n)*.*0\s+drop\s+dport=53\s+7\s+700", text)
    assert re.search(r"-\s+pass\s+\(default\)\s+2\s+200", text)
    chain = chain_human({"lab": "l", "ping": {"answered": 1, "sent": 1}, "flows": {},
                         "hops": {"fw": item}})
    assert re.search(r"test-newkind nk\s+hit\s+3", chain) and "miss" not in chain
    assert re.search(r"filter acl\s+rule 0 \(drop\)\s+7", chain)
    got = {(f, labels): v for s in (new, lim, filt) for f, labels, v in stage_samples("p", s)}
    assert got[("ebplane_stage_packets", ("p", "nk", "test-newkind", "hit"))] == 3
    assert got[("ebplane_packets", ("p", "lim", "over", "drop"))] == 4
    assert got[("ebplane_drops", ("p", "lim", "over"))] == 4
    assert got[("ebplane_stage_bytes", ("p", "lim", "test-limiter", "under"))] == 0
    assert got[("ebplane_packets", ("p", "acl", "0", "drop"))] == 7
    assert got[("ebplane_drops", ("p", "acl", "rule 0"))] == 7
    assert got[("ebplane_drops", ("p", "acl", "malformed"))] == 1
    assert got[("ebplane_table_rules", ("p", "acl"))] == 1
