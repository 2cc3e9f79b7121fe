"""Section 6, classbench: ebplane's filter on realistic rule sets (``bench/classbench.py``).

Program cost (as section 1, ``CostHarness``): for each size and family, a one-filter pipeline
with the generated rules (default pass) is loaded as ``apply`` would (generate, compile, load,
install: the load time), and measured on a packet that misses every rule and on a packet whose
first match is a rule near the end; the same spec cut to its first rule is measured in the same
run on the same packets (``ratio`` = cost with N rules / cost with 1 rule).  Every verdict is
checked against the first-match reference (``agree``).  A rule set the classifier refuses is a
row ``refused: <message>``, not a failure.

Live (as section 2, ``LiveLab``): a 10k-rule IPv4 ACL ending in a catch-all drop, traffic that
misses every other rule (dropped by the final rule) or hits a late drop rule; ebplane applied
on dut:eth0 against the empty XDP program (the floor) and nftables with the same rules at
netdev ingress (``classbench.nft_ruleset``: its encoding).  The low-shape variant of the rule
set runs too: the tuple-space classifier accepts it, so ebplane has a live figure either way.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from ebplane.bench import classbench as cb
from ebplane.bench.harness import (FRAME_SIZE, CostHarness, CostResult, Progress, frame, load_c,
                                   load_pipeline)
from ebplane.bench.live import (NFT_TABLE, LiveLab, LiveRow, Spread, XDP_DROP, _ebplane_drops,
                                _ratios, _run)
from ebplane.bench.scaling import filter_spec
from ebplane.errors import EbplaneError, UsageError
from ebplane.net import netns
from ebplane.spec import PipelineSpec, parse_rule

PROTOCOLS = {4: ("ethernet", "ipv4", "tcp", "udp", "icmp"),
             6: ("ethernet", "ipv6", "tcp", "udp", "icmpv6")}
NFT_COUNTER = "cbdrop"
CAPACITY_MIN = 64


def ruleset_spec(rules: list[dict], family: int, name: str = "classbench") -> PipelineSpec:
    """A one-filter pipeline (``acl``, default pass, capacity = the rule count, at least
    64 so that a few port ranges fit small tables) holding ``rules`` (dicts, each validated
    by the spec's rule parser)."""
    protocols = PROTOCOLS[family]
    parsed = [parse_rule(r, protocols=protocols, where=f"rule {i}") for i, r in enumerate(rules)]
    return filter_spec(name, protocols, parsed, max(CAPACITY_MIN, len(rules)))


def _ratio(a: CostResult, b: CostResult) -> float | None:
    return round(a.ns.median / b.ns.median, 2) if b.ns.median else None


def _describe(pkt: dict) -> str:
    return f"{pkt['proto']} {pkt['src']}:{pkt['sport']} > {pkt['dst']}:{pkt['dport']}"


def measure_ruleset(harness: CostHarness, size: int, family: int, kind: str, seed: int,
                    progress: Progress) -> dict:
    """One row: load time, cost of a miss and a late hit, against the 1-rule program."""
    row: dict = {"kind": kind, "family": family, "rules": size}
    t0 = time.monotonic()
    rules = cb.generate(size, kind=kind, family=family, seed=seed)
    spec = ruleset_spec(rules, family)
    row["generate_s"] = round(time.monotonic() - t0, 3)
    st = cb.stats(rules)
    row["distinct_prefix_lengths"] = {"src": len(st["src_len"]), "dst": len(st["dst_len"])}
    row["port_classes"] = {"sport": st["sport"], "dport": st["dport"]}
    ref = cb.Reference(rules)
    rng = random.Random(f"classbench/{kind}/{family}/{size}/{seed}")
    packets = {"miss": cb.TracePacket(cb.miss_packet(family, rng), None, None)}
    late = cb.late_hit(rules, family, rng, ref=ref)
    if late is not None:
        packets["late-hit"] = late
    progress(f"classbench: {kind} IPv{family} {size} rules: loading")
    try:
        built = load_pipeline(spec)
    except UsageError as e:
        row["refused"] = str(e)
        progress(f"classbench: {kind} IPv{family} {size} rules: refused: {e}")
        return row
    row["load_s"] = round(time.monotonic() - t0, 3)
    with contextlib.ExitStack() as stack:
        stack.callback(built.close)
        one_rules = rules[:1]
        one_ref = cb.Reference(one_rules)
        one = load_pipeline(ruleset_spec(one_rules, family, "classbench1"))
        stack.callback(one.close)
        out = []
        for pname, tp in packets.items():
            expected = ref.expected(tp.packet)
            data = frame(cb.to_flow(tp.packet))
            progress(f"classbench: {kind} IPv{family} {size} rules / {pname}")
            eb = harness.measure(built.program, data)
            base = harness.measure(one.program, data)
            want, want_one = ref.verdict(tp.packet), one_ref.verdict(tp.packet)
            out.append({"packet": pname, "packet_desc": _describe(tp.packet),
                        "expected_rule": expected, "expected_verdict": want,
                        "ebplane": eb.to_dict(), "one_rule": base.to_dict(),
                        "ratio_to_one_rule": _ratio(eb, base),
                        "agree": eb.verdict == want and base.verdict == want_one})
    row["packets"] = out
    row["agree"] = all(p["agree"] for p in out)
    return row


def run_classbench_cost(harness: CostHarness, sizes: tuple[int, ...], kinds: tuple[str, ...],
                        seed: int, progress: Progress) -> list[dict]:
    return [measure_ruleset(harness, size, family, kind, seed, progress)
            for kind in kinds for family in (4, 6) for size in sizes]


# -- live ---------------------------------------------------------------------------------------

def _spec_file(lab: LiveLab, rules: list[dict], name: str) -> Path:
    d = ruleset_spec(rules, 4, name).to_dict()
    d.update({"netns": lab.ns("dut"), "interfaces": ["eth0"], "mode": "native"})
    path = lab.workdir / f"{name}.yaml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(d, Dumper=dumper, sort_keys=False))
    return path


@contextlib.contextmanager
def _ebplane(lab: LiveLab, path: Path) -> Iterator[Callable[[], int]]:
    from ebplane.runtime.pipeline import apply, detach
    name = apply(path).name
    try:
        yield lambda: _ebplane_drops(name)
    finally:
        detach(name)


@contextlib.contextmanager
def _nft(lab: LiveLab, text: str) -> Iterator[Callable[[], int]]:
    dut = lab.ns("dut")
    netns.run(dut, ["nft", "-f", "-"], input=text, timeout=120)

    def count() -> int:
        out = netns.run(dut, ["nft", "-j", "list", "counter", "netdev", NFT_TABLE,
                              NFT_COUNTER]).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise UsageError(f"nftables counter {NFT_COUNTER} not found")
    try:
        yield count
    finally:
        netns.run(dut, ["nft", "delete", "table", "netdev", NFT_TABLE], check=False)


@contextlib.contextmanager
def _floor(lab: LiveLab) -> Iterator[Callable[[], int]]:
    with contextlib.closing(load_c(lab.suite.floor)) as obj, lab.xdp_program(obj):
        yield lab.dut_rx


def _live_row(lab: LiveLab, row: LiveRow, setup: Callable[[], contextlib.AbstractContextManager],
              seconds: float, repeats: int, progress: Progress) -> LiveRow:
    """Like the live section's rows; a rule set ebplane refuses is ``refused: <message>``."""
    progress(f"classbench live: {row.name} ({repeats} x {seconds:g} s)")
    try:
        with setup() as count:
            _run(lab, row, count, seconds, repeats)
    except UsageError as e:
        row.error = f"refused: {e}"
    except EbplaneError as e:
        row.error = str(e)
    if row.error:
        progress(f"classbench live: {row.name}: {row.error}")
    return row


def run_classbench_live(lab: LiveLab, size: int, kind: str, seed: int, seconds: float,
                        repeats: int, progress: Progress) -> dict:
    gen_row = LiveRow("generator-only", "the generator drops its own frames (subtracted)")
    variants = {kind: cb.generate(size, kind=kind, family=4, seed=seed, final="drop"),
                "low-shape": cb.generate(size, kind=kind, family=4, seed=seed, low_shape=True,
                                         final="drop")}
    rng = random.Random(f"classbench-live/{seed}")
    first_miss = cb.miss_packet(4, rng)
    with lab.sending(cb.to_flow(first_miss)):
        progress(f"classbench live: generator only ({repeats} x {seconds:g} s)")
        _run(lab, gen_row, lab.sent, seconds, repeats, action=XDP_DROP)
        gen_ns = 1e9 / Spread.of(gen_row.pps).median
        floor = _live_row(lab, LiveRow("xdp-floor", "XDP program that only drops"),
                          lambda: _floor(lab), seconds, repeats, progress)
    floor_d = floor.to_dict(gen_ns)
    out_variants = []
    for vname, rules in variants.items():
        ref = cb.Reference(rules)
        enc = cb.nft_ruleset(rules, family=4, table=NFT_TABLE, device="eth0",
                             counter=NFT_COUNTER)
        path = _spec_file(lab, rules, f"cb-{vname}")
        traffic = {"miss": cb.TracePacket(cb.miss_packet(4, rng), len(rules) - 1,
                                          len(rules) - 1)}
        late = cb.late_hit(rules, 4, rng, action="drop", ref=ref)
        if late is not None:
            traffic["late-hit"] = late
        tables = []
        for tname, tp in traffic.items():
            expected = ref.expected(tp.packet)
            rows = []
            with lab.sending(cb.to_flow(tp.packet)):
                rows.append(_live_row(lab, LiveRow("ebplane", f"ebplane apply, {len(rules)} "
                                                              f"rules, native XDP"),
                                      lambda: _ebplane(lab, path), seconds, repeats, progress))
                rows.append(_live_row(lab, LiveRow("nftables", f"netdev ingress, {enc.rules} "
                                                               f"rules, {enc.sets} sets"),
                                      lambda: _nft(lab, enc.text), seconds, repeats, progress))
            drows = [dict(floor_d)] + [r.to_dict(gen_ns) for r in rows]
            _ratios(drows, "xdp-floor")
            _ratios(drows, "nftables")
            tables.append({"traffic": tname, "packet_desc": _describe(tp.packet),
                           "expected_rule": expected,
                           "expected_verdict": ref.verdict(tp.packet),
                           "rows": drows[1:]})
        out_variants.append({"variant": vname, "rules": len(rules),
                             "nft": {"rules": enc.rules, "sets": enc.sets,
                                     "elements": enc.elements},
                             "traffic": tables})
    return {"method": f"as section live: {FRAME_SIZE}-byte frames, generator and device under "
                      f"test on CPU {lab.cpu}, {repeats} runs of {seconds:g} s; every rule set "
                      f"ends with a catch-all drop; rates count the device's drops",
            "size": size, "kind": kind, "family": 4, "seconds": seconds, "repeats": repeats,
            "generator": gen_row.to_dict(None), "floor": floor_d, "variants": out_variants}


def run_classbench(harness: CostHarness | None, lab: LiveLab | None, config, progress: Progress
                   ) -> dict:
    """The section's JSON: ``cost`` rows (sizes x families x seed types), ``live``."""
    out: dict = {"generator": {"seed": config.classbench_seed,
                               "kinds": list(config.classbench_kinds),
                               "sizes": list(config.classbench_sizes)}}
    if harness is not None:
        out["method"] = (f"BPF_PROG_TEST_RUN, {harness.repeat} repeats per call, median of "
                         f"{harness.runs} calls, program attached while measured; one filter "
                         f"stage (default pass, capacity = max(64, rules)); ratio: cost with N rules / "
                         f"cost with the first rule only, same packet, same run; load: generate "
                         f"+ compile + load + install")
        out["cost"] = run_classbench_cost(harness, config.classbench_sizes,
                                          config.classbench_kinds, config.classbench_seed,
                                          progress)
    if lab is not None and config.classbench_live_size:
        out["live"] = run_classbench_live(lab, config.classbench_live_size,
                                          config.classbench_kinds[0], config.classbench_seed,
                                          config.live_seconds, config.live_repeats, progress)
    return out

