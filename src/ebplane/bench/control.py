"""Section 3, the control plane: how fast rules and tables load, how long ``apply`` takes
cold (clang runs) and warm (compiled object cached), and whether a re-apply under traffic
loses packets (it must not: the program is replaced atomically on its link, and changed
rules are installed by a generation flip)."""

from __future__ import annotations

import ipaddress
import os
import statistics
import tempfile
import threading
import time

from ebplane.bench.harness import Progress, load_pipeline
from ebplane.bench.live import LiveLab
from ebplane.bench.scaling import filter_spec, host_rules
from ebplane.kernel.maps import Map
from ebplane.runtime.build import compile_filter
from ebplane.runtime.tables import assign_ids, fresh_ids
from ebplane.spec import Rule

EXTRA_RULE = {"proto": "udp", "dport": 5353, "action": "drop"}


def table_load(sizes: tuple[int, ...], progress: Progress) -> list[dict]:
    """Rules compiled and installed into a loaded filter table (tree form), and raw entries
    into a plain BPF hash.

    ``install`` = compile the rules (boxes and the decision tree, in Python), batch-write the
    tree into the inactive half of the arrays, flip the root, wait for an RCU grace period.
    ``replace`` = the same with another rule set of the same size in place."""
    rows = []
    for n in sizes:
        progress(f"control: table load, {n} rules")
        rules = _many_rules(n)
        spec = filter_spec("load", ("ethernet", "ipv4", "udp"), rules, n, classifier="tree")
        built = load_pipeline(spec)
        try:
            stage = spec.stages[0]
            table = built.table(stage)
            plan = built.gen.filters[stage.name]
            entries = assign_ids(rules, [], n)
            t0 = time.perf_counter()
            ct = compile_filter(stage, entries, built.gen.user_layout, plan)
            table.install(ct, [e.id for e in entries])
            t_install = time.perf_counter() - t0
            other = assign_ids(_many_rules(n, dport=54), entries, n)
            t0 = time.perf_counter()
            ct = compile_filter(stage, other, built.gen.user_layout, plan)
            if not ct.plan.same_code(plan):
                raise AssertionError("the replacement rule set does not fit the program")
            table.install(ct, fresh_ids(other, entries), keep_mirror=True)
            t_replace = time.perf_counter() - t0
            t_del, t_add = _one_rule_edits(table, other, built.gen.user_layout)
        finally:
            built.close()
        keys = b"".join(i.to_bytes(4, "little") for i in range(n))
        with Map.create("hash", 4, 8, n, name="ebp_bench_load") as m:
            t0 = time.perf_counter()
            m.update_batch(keys, bytes(8 * n))
            t_raw = time.perf_counter() - t0
        rows.append({"entries": n,
                     "install_s": round(t_install, 4), "install_rules_per_s": round(n / t_install),
                     "replace_s": round(t_replace, 4), "replace_rules_per_s": round(n / t_replace),
                     "one_rule_delete_ms": t_del, "one_rule_add_ms": t_add,
                     "raw_hash_batch_s": round(t_raw, 4),
                     "raw_hash_entries_per_s": round(n / t_raw)})
    return rows


def _one_rule_edits(table, entries, layout, times: int = 5) -> tuple[float, float]:
    """Median ms of deleting one rule from the tree in force and of appending one, as
    incremental edits (``FilterTable.install_edit``: the rule's leaves and paths written
    copy-on-write, one root flip, an RCU grace period)."""
    mirror = table.mirror
    last = entries[-1].id
    dels, adds = [], []
    for k in range(times):
        rid = entries[k].id
        t0 = time.perf_counter()
        table.install_edit(mirror, [rid], [], layout, [])
        dels.append(time.perf_counter() - t0)
        rule = Rule(action="drop", src=ipaddress.IPv4Network(("198.19.255.%d" % k)), proto=17,
                    dport=(53, 53))
        t0 = time.perf_counter()
        table.install_edit(mirror, [], [(rid, rule, last, None)], layout, [rid])
        adds.append(time.perf_counter() - t0)
        last = rid
    return round(1000 * statistics.median(dels), 2), round(1000 * statistics.median(adds), 2)


def _many_rules(n: int, dport: int = 53):
    """``n`` one-shape rules; beyond the /15's 131072 hosts the port varies as well."""
    per_port = 2 ** 17
    rules = []
    for p in range(0, n, per_port):
        rules += host_rules(min(per_port, n - p), dport=dport + 2 * (p // per_port))
    return rules


def apply_latency(lab: LiveLab, progress: Progress) -> dict:
    """``apply`` with an empty compile cache (clang runs), with the object cached, and a
    re-apply of the applied pipeline (program replaced on its link)."""
    from ebplane.runtime.pipeline import apply, detach
    spec = lab.spec_for_dut(lab.suite.drop_pipeline)
    saved = os.environ.get("EBPLANE_CACHE_DIR")
    out = {}
    with tempfile.TemporaryDirectory(prefix="ebp-bench-cache-") as cache:
        os.environ["EBPLANE_CACHE_DIR"] = cache
        try:
            for label in ("cold", "warm"):
                progress(f"control: apply, {label}")
                t0 = time.perf_counter()
                name = apply(spec).name
                out[f"{label}_s"] = round(time.perf_counter() - t0, 4)
                if label == "warm":
                    progress("control: re-apply")
                    t0 = time.perf_counter()
                    apply(spec)
                    out["reapply_s"] = round(time.perf_counter() - t0, 4)
                detach(name)
        finally:
            if saved is None:
                os.environ.pop("EBPLANE_CACHE_DIR", None)
            else:
                os.environ["EBPLANE_CACHE_DIR"] = saved
    return out


def reapply_under_traffic(lab: LiveLab, reapplies: int, progress: Progress) -> dict:
    """Traffic (all of it matching the pipeline's drop rule) runs while the pipeline is
    re-applied ``reapplies`` times, alternating between its rules and its rules plus one
    (so the program is replaced and the rules flip generation).  Every frame dut:eth0
    receives must meet a program: lost = received - (dropped + passed).  The generator's
    frames all match the drop rule; ``passed`` counts the few other frames the interface
    receives meanwhile (IPv6 neighbour discovery from the peer), which the pipeline passes."""
    from ebplane.runtime.pipeline import apply, detach, stats
    specs = [lab.spec_for_dut(lab.suite.drop_pipeline),
             lab.spec_for_dut(lab.suite.drop_pipeline, extra_rules=(EXTRA_RULE,))]
    for path in specs:  # compile both first: the loop measures replacement, not clang
        name = apply(path).name
    detach(name)
    name = apply(specs[0]).name
    progress(f"control: {reapplies} re-applies under traffic")
    try:
        rx0, drop0, pass0, sent0 = (lab.dut_rx(), _verdict(stats, name, "XDP_DROP"),
                                    _verdict(stats, name, "XDP_PASS"), lab.sent())
        done = threading.Event()
        failure: list[BaseException] = []

        def traffic() -> None:
            try:
                lab.generate(0, stop=done.is_set)
            except BaseException as e:  # reported by the main thread
                failure.append(e)
        thread = threading.Thread(target=traffic, name="ebp-bench-gen")
        thread.start()
        times = []
        try:
            time.sleep(0.2)
            for i in range(reapplies):
                t0 = time.perf_counter()
                apply(specs[(i + 1) % 2])
                times.append(time.perf_counter() - t0)
            time.sleep(0.2)
        finally:
            done.set()
            thread.join()
        if failure:
            raise failure[0]
        received = lab.dut_rx() - rx0
        dropped = _verdict(stats, name, "XDP_DROP") - drop0
        passed = _verdict(stats, name, "XDP_PASS") - pass0
        sent = lab.sent() - sent0
    finally:
        detach(name)
    return {"reapplies": reapplies, "sent": sent, "received": received, "dropped": dropped,
            "passed": passed, "lost": received - dropped - passed,
            "reapply_s": {"min": round(min(times), 4), "max": round(max(times), 4)}}


def _verdict(stats, name: str, verdict: str) -> int:
    return int(stats(name)[0]["verdicts"][verdict]["packets"])


def run_control(lab: LiveLab, sizes: tuple[int, ...], reapplies: int, progress: Progress) -> dict:
    return {"table_load": table_load(sizes, progress),
            "apply": apply_latency(lab, progress),
            "reapply_under_traffic": reapply_under_traffic(lab, reapplies, progress)}
