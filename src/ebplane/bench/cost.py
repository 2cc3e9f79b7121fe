"""Section 1, program cost: each pipeline of the suite against (a) the empty XDP program, the
floor; (b) the same job written by hand; (c) xdp-filter configured equivalently, where it
can do the job.  Every program sees the same FRAME_SIZE-byte packets; their verdicts must
agree, or the comparison would be between different jobs (a disagreement is reported).
"""

from __future__ import annotations

import contextlib

from ebplane.bench.harness import (CostHarness, CostResult, Progress, Suite, frame, load_c,
                                   load_peer, load_pipeline, only_program, peer_version)
from ebplane.errors import EbplaneError
from ebplane.spec import load_spec


def _ratio(a: CostResult | None, b: CostResult | None) -> float | None:
    if a is None or b is None or not b.ns.median:
        return None
    return round(a.ns.median / b.ns.median, 2)


def run_cost(suite: Suite, harness: CostHarness, progress: Progress) -> dict:
    """Measure every cost case of ``suite``; returns the section's JSON."""
    with contextlib.closing(load_c(suite.floor)) as floor_obj:
        floor_prog = only_program(floor_obj)
        floor_pkt = frame(suite.cost[0].packets[next(iter(suite.cost[0].packets))])
        progress("cost: floor (empty XDP program)")
        floor = harness.measure(floor_prog, floor_pkt)
    rows = []
    for case in suite.cost:
        spec = load_spec(case.pipeline)
        with contextlib.ExitStack() as stack:
            progress(f"cost: {case.name}: loading ebplane pipeline, baseline"
                     + (", xdp-filter" if case.peer else ""))
            built = load_pipeline(spec)
            stack.callback(built.close)
            base_obj = load_c(case.baseline)
            stack.callback(base_obj.close)
            peer_prog, peer_error = None, None
            if case.peer is not None:
                try:
                    peer_obj = load_peer(case.peer)
                    stack.callback(peer_obj.close)
                    peer_prog = only_program(peer_obj)
                except EbplaneError as e:
                    peer_error = str(e)
            for pname, flow in case.packets.items():
                data = frame(flow)
                progress(f"cost: {case.name} / {pname} packet")
                eb = harness.measure(built.program, data)
                base = harness.measure(only_program(base_obj), data)
                peer = harness.measure(peer_prog, data) if peer_prog else None
                verdicts = {"ebplane": eb.verdict, "baseline": base.verdict}
                if peer:
                    verdicts["peer"] = peer.verdict
                rows.append({
                    "case": case.name, "packet": pname,
                    "packet_desc": f"{flow.proto} {flow.src}:{flow.sport} > {flow.dst}:{flow.dport}",
                    "ebplane": eb.to_dict(), "baseline": base.to_dict(),
                    "peer": peer.to_dict() if peer else None,
                    "peer_config": case.peer.describe() if case.peer else None,
                    "peer_error": peer_error,
                    "verdicts_agree": len(set(verdicts.values())) == 1, "verdicts": verdicts,
                    "ratio_to_floor": _ratio(eb, floor),
                    "ratio_to_baseline": _ratio(eb, base),
                    "ratio_to_peer": _ratio(eb, peer),
                    "baseline_to_floor": _ratio(base, floor),
                    "peer_to_floor": _ratio(peer, floor),
                })
    return {"method": f"BPF_PROG_TEST_RUN, {harness.repeat} repeats per call, median of "
                      f"{harness.runs} calls, program attached (native XDP on a veth) while "
                      f"measured; kernel-reported ns per run",
            "repeat": harness.repeat, "runs": harness.runs,
            "peer": {"name": "xdp-filter", "version": peer_version()},
            "floor": floor.to_dict(), "rows": rows}
