"""The benchmark's outputs besides JSON: a Markdown report and a PNG chart, both derived
from the JSON document alone (so a stored bench.json can be rendered again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _n(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 1000:
        v = round(v)
    if isinstance(v, int) and v >= 10000:
        return f"{v:,}{unit}".replace(",", " ")
    return f"{v}{unit}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _ns(d: dict | None) -> str:
    return "–" if not d else f"{d['ns_per_packet']['median']:g}"


def _cost(c: dict) -> list[str]:
    lines = ["## 1. Program cost (BPF_PROG_TEST_RUN)", "", c["method"] + ".",
             f"Floor (empty XDP program): **{c['floor']['ns_per_packet']['median']:g} ns/packet**. "
             f"Peer: {c['peer']['name']} {c['peer']['version'] or '(version unknown)'}.", ""]
    rows = []
    for r in c["rows"]:
        agree = "yes" if r["verdicts_agree"] else "**NO** " + str(r["verdicts"])
        rows.append([r["case"], f"{r['packet']} ({r['ebplane']['verdict'].removeprefix('XDP_')})",
                     _ns(r["ebplane"]), _ns(r["baseline"]), _ns(r["peer"]),
                     _x(r["ratio_to_floor"]), _x(r["ratio_to_baseline"]), _x(r["ratio_to_peer"]),
                     r["ebplane"]["verified_insns"], r["ebplane"]["xlated_bytes"], agree])
    lines += _table(["case", "packet", "ebplane ns", "hand-written ns", "xdp-filter ns",
                     "÷ floor", "÷ hand-written", "÷ xdp-filter", "verified insns",
                     "xlated bytes", "verdicts agree"], rows)
    peers = sorted({r["peer_config"] for r in c["rows"] if r["peer_config"]})
    if peers:
        lines += ["Peer configurations: " + "; ".join(peers) + ".", ""]
    errors = sorted({r["peer_error"] for r in c["rows"] if r["peer_error"]})
    lines += [f"Peer not measured: {e}" for e in errors] + ([""] if errors else [])
    return lines


def _live_rows(rows: list[dict], ref: str) -> list[list[Any]]:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["name"], r["what"], "–", "–", "–", "–", "–", r["error"]])
            continue
        m = r["mpps"]
        out.append([r["name"], r["what"], f"{m['min']:g} / **{m['median']:g}** / {m['max']:g}",
                    r["ns_per_packet"], r.get("dut_ns_per_packet", "–"),
                    _x(r.get(f"speedup_vs_{ref}")), _x(r.get(f"dut_cost_ratio_to_{ref}")),
                    f"{r['handled_fraction']:.2%}"])
    return out


def _live(lv: dict) -> list[str]:
    g = lv["generator"]
    head = ["DUT", "what", "Mpps min / median / max", "ns/pkt (with generator)",
            "ns/pkt DUT alone", "speed-up", "DUT cost ratio", "handled"]
    lines = ["## 2. Live throughput on veth", "", lv["method"] + ".", f"Traffic: {lv['traffic']}.",
             f"Generator alone: {g['mpps']['median']:g} Mpps = {g['ns_per_packet']} ns/packet, "
             f"subtracted for the DUT-alone column.", "", "### Drop (ratios to nftables)", ""]
    lines += _table(head, _live_rows(lv["drop"], "nftables"))
    lines += ["### Forward (ratios to kernel IP forwarding)", ""]
    lines += _table(head, _live_rows(lv["forward"], "kernel"))
    return lines


def _l4(l4: dict) -> list[str]:
    g = l4["generator"]
    head = ["DUT", "what", "Mpps min / median / max", "ns/pkt (with generator)",
            "ns/pkt DUT alone", "speed-up", "DUT cost ratio", "handled"]
    lines = ["## L4: stateful firewall and NAT against nftables with conntrack", "",
             l4["method"] + ".", f"Traffic: {l4['traffic']}.",
             f"Generator alone: {g['mpps']['median']:g} Mpps = {g['ns_per_packet']} ns/packet.",
             "", "Ratios to kernel forwarding without filtering:", ""]
    lines += _table(head, _live_rows(l4["rows"], "kernel"))
    lines += _table(["ebplane / nftables", "rate", "DUT cost"],
                    [[k, _x(v["rate"]), _x(v["dut_cost"])] for k, v in l4["ratios"].items()])
    if l4.get("checks"):
        lines += [f"Checks: {', '.join(f'{k} = {v}' for k, v in l4['checks'].items())}.", ""]
    return lines


def _control(ct: dict) -> list[str]:
    lines = ["## 3. Control plane", "", "### Rule and table load (batched)", ""]
    rows = [[_n(r["entries"]), f"{r['install_s']:g} s", _n(r["install_rules_per_s"], "/s"),
             f"{r['replace_s']:g} s", _n(r["replace_rules_per_s"], "/s"),
             f"{r['one_rule_add_ms']:g} ms" if "one_rule_add_ms" in r else "–",
             f"{r['one_rule_delete_ms']:g} ms" if "one_rule_delete_ms" in r else "–",
             _n(r["raw_hash_entries_per_s"], "/s")] for r in ct["table_load"]]
    lines += _table(["rules", "install", "install rate", "replace all", "replace rate",
                     "one rule added", "one rule deleted", "raw BPF hash batch update"], rows)
    a = ct["apply"]
    lines += ["install: compile the tree form (boxes, forest), batch-write the inactive half, "
              "flip the root, wait for an RCU grace period; one rule added/deleted: an "
              "incremental edit of the tree in force (the rule's leaves and paths written "
              "copy-on-write, root flip, RCU grace period), median of 5; the raw column is "
              "`bpf_map_update_batch` alone into a plain hash.", "",
              "### Apply latency", ""]
    lines += _table(["cold (clang compiles)", "warm (object cached)", "re-apply (replace)"],
                    [[f"{a['cold_s']:g} s", f"{a['warm_s']:g} s", f"{a['reapply_s']:g} s"]])
    r = ct["reapply_under_traffic"]
    verdict = "**0 lost**" if r["lost"] == 0 else f"**{r['lost']} LOST**"
    lines += ["### Re-apply under traffic", "",
              f"{r['reapplies']} re-applies (alternating rule sets, program replaced each time, "
              f"{r['reapply_s']['min']:g}-{r['reapply_s']['max']:g} s each) while the generator "
              f"sent {_n(r['sent'])} packets: dut:eth0 received {_n(r['received'])}, the pipeline "
              f"dropped {_n(r['dropped'])}: {verdict}.", ""]
    return lines


def _scaling(sc: dict) -> list[str]:
    lines = ["## 4. Scaling (program cost, ns/packet)", "", "### Number of rules (one shape)", ""]
    lines += _table(["rules", "hit", "miss"],
                    [[_n(r["rules"]), _ns(r["hit"]), _ns(r["miss"])] for r in sc["rules"]])
    lines += ["### Number of rule shapes (distinct prefix lengths and port blocks; packet misses all)", ""]
    lines += _table(["shapes", "miss"], [[r["shapes"], _ns(r["miss"])] for r in sc["shapes"]])
    lines += ["### Protocol set (each step adds a rule that needs the new protocols)", ""]
    lines += _table(["protocols", "rules", "ns/packet", "verified insns"],
                    [[" ".join(r["protocols"]), r["rules"], _ns(r["miss"]),
                      r["miss"]["verified_insns"]] for r in sc["protocols"]])
    return lines


def _xsk(x: dict) -> list[str]:
    lines = ["## 5. AF_XDP receive in Python (ebplane.xsk)", "", x["method"] + ".", ""]
    lines += _table(["consumer", "mode", "Mpps (best)", "vs XDP drop on the same veth"],
                    [["ebplane.xsk (numpy RX path)", x["mode"], x["xsk"]["mpps"],
                      _x(x["ratio_to_baseline"])],
                     ["XDP drop (baseline)", "native", x["baseline_xdp_drop"]["mpps"], _x(1.0)]])
    return lines


def _classbench(cb: dict) -> list[str]:
    g = cb["generator"]
    lines = ["## 6. ClassBench-style rule sets", "",
             f"Generated rule sets (`bench/classbench.py`, seed {g['seed']}, seed types "
             f"{', '.join(g['kinds'])}); every verdict is checked against a first-match "
             f"reference.", ""]
    if "cost" in cb:
        lines += ["### Program cost against the 1-rule program", "", cb["method"] + ".", ""]
        rows = []
        for r in cb["cost"]:
            head = [r["kind"], f"IPv{r['family']}", _n(r["rules"])]
            if "refused" in r:
                rows.append(head + ["–"] * 7 + [f"refused: {r['refused']}"])
                continue
            by = {p["packet"]: p for p in r["packets"]}
            miss, late = by.get("miss"), by.get("late-hit")
            agree = "yes" if r["agree"] else "**NO**"
            rows.append(head + [f"{r['load_s']:g} s", _ns(miss and miss["ebplane"]),
                                _x(miss and miss["ratio_to_one_rule"]),
                                _ns(late and late["ebplane"]),
                                f"#{late['expected_rule']}" if late else "–",
                                _x(late and late["ratio_to_one_rule"]),
                                r["packets"][0]["ebplane"]["verified_insns"], agree])
        lines += _table(["seed", "family", "rules", "load", "miss ns", "miss ÷ 1 rule",
                         "late hit ns", "late rule", "late ÷ 1 rule", "verified insns",
                         "agree"], rows)
    if "live" in cb:
        lv = cb["live"]
        lines += [f"### Live drop, {_n(lv['size'])}-rule IPv{lv['family']} {lv['kind']} rule set",
                  "", lv["method"] + ".",
                  f"Generator alone: {lv['generator']['mpps']['median']:g} Mpps; floor (XDP "
                  f"drop only): " + (f"{lv['floor']['mpps']['median']:g} Mpps."
                                     if "mpps" in lv["floor"] else lv["floor"].get("error", "–")),
                  ""]
        rows = []
        for v in lv["variants"]:
            for t in v["traffic"]:
                for r in t["rows"]:
                    what = (f"{v['variant']} ({v['rules']} rules; nft: {v['nft']['rules']} "
                            f"rules, {v['nft']['sets']} sets)")
                    traffic = f"{t['traffic']} (rule #{t['expected_rule']})"
                    if "error" in r:
                        rows.append([what, traffic, r["name"], "–", "–", "–", "–", r["error"]])
                        continue
                    m = r["mpps"]
                    rows.append([what, traffic, r["name"],
                                 f"{m['min']:g} / **{m['median']:g}** / {m['max']:g}",
                                 r.get("dut_ns_per_packet", "–"),
                                 _x(r.get("speedup_vs_xdp-floor")),
                                 _x(r.get("speedup_vs_nftables")),
                                 f"{r['handled_fraction']:.2%}"])
        lines += _table(["rule set", "traffic", "DUT", "Mpps min / median / max",
                         "ns/pkt DUT alone", "÷ floor", "÷ nftables", "handled"], rows)
    return lines


def _containers(ct: dict) -> list[str]:
    lines = ["## 7. Forwarding at TC in the container lab", "", ct["method"] + ".", ""]
    rows = []
    for pair in ("routed", "bridged"):
        for r in ct.get(pair, []):
            if "error" in r:
                rows.append([pair, r["name"], r["what"], "–", "–", "–", "–", r["error"]])
                continue
            m, turn = r["mpps"], r.get("speedup_per_turn")
            rows.append([pair, r["name"], r["what"],
                         f"{m['min']:g} / **{m['median']:g}** / {m['max']:g}",
                         r["ns_per_packet"], _x(r.get("speedup_vs_kernel")),
                         f"{turn['min']:g} / **{turn['median']:g}** / {turn['max']:g}"
                         if turn else "–", f"{r['handled_fraction']:.2%}"])
    return lines + _table(["lab", "path", "what", "Mpps min / median / max",
                           "ns/pkt (all on one CPU)", "÷ kernel (medians)",
                           "÷ kernel per turn, min / median / max", "handled"], rows)


def _jumbo(j: dict) -> list[str]:
    lines = [f"## 9. Jumbo frames (MTU {j['mtu']}): native multi-buffer XDP, generic XDP, kernel",
             "", j["method"] + ".", ""]
    rows = []
    for r in j["rows"]:
        if "error" in r:
            rows.append([r["name"], r["what"], "–", "–", "–", "–", "–", "–", r["error"]])
            continue
        k, g = r["kpps"], r["gbit_s"]
        rows.append([r["name"], r["what"], f"{k['min']:g} / **{k['median']:g}** / {k['max']:g}",
                     f"{g['median']:g}", r["ns_per_frame"], r.get("forward_ns_per_frame", "–"),
                     _x(r.get("speedup_vs_kernel")), f"{r['handled_fraction']:.2%}", ""])
    return lines + _table(["DUT", "what", "kpps min / median / max", "Gbit/s (median)",
                           "ns/frame", "ns/frame over the floor", "÷ kernel", "handled",
                           "error"], rows)


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# ebplane benchmark", "",
             f"Run {doc['started']} on {m['cpu']} ({m['nproc']} CPUs), kernel {m['kernel']}, "
             f"{m['os']}; ebplane {doc['ebplane']}; {doc['seconds']} s in all.", "",
             f"Command: `{doc['command']}`", "",
             "Absolute numbers are machine-specific; the ratios are the point.", ""]
    s = doc["sections"]
    from ebplane.bench.balancer import markdown as _balancer
    for key, render in (("cost", _cost), ("live", _live), ("control", _control),
                        ("scaling", _scaling), ("xsk", _xsk), ("classbench", _classbench),
                        ("containers", _containers), ("balancer", _balancer),
                        ("jumbo", _jumbo), ("l4", _l4)):
        if key in s:
            lines += render(s[key])
    return "\n".join(lines)


def chart(doc: dict, path: Path) -> None:
    """One panel per section present (xsk and containers have none)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = doc["sections"]
    fig, axes = plt.subplots(2, 3, figsize=(20, 9))
    fig.suptitle(f"ebplane benchmark, {doc['machine']['cpu']}, kernel {doc['machine']['kernel']}")
    ax = axes[0][0]
    if "cost" in s:
        rows = s["cost"]["rows"]
        labels = [f"{r['case']}\n{r['packet']}" for r in rows]
        series = [("ebplane", [r["ebplane"] for r in rows]),
                  ("hand-written", [r["baseline"] for r in rows]),
                  ("xdp-filter", [r["peer"] for r in rows])]
        w = 0.27
        for i, (name, vals) in enumerate(series):
            ax.bar([x + (i - 1) * w for x in range(len(rows))],
                   [v["ns_per_packet"]["median"] if v else 0 for v in vals], w, label=name)
        ax.axhline(s["cost"]["floor"]["ns_per_packet"]["median"], color="grey", ls="--",
                   label="floor (empty XDP)")
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set_ylabel("ns/packet (test_run)")
        ax.set_title("1. Program cost")
        ax.legend(fontsize=8)
    ax = axes[0][1]
    if "live" in s:
        rows = [("drop", r) for r in s["live"]["drop"]] + [("fwd", r) for r in s["live"]["forward"]]
        rows = [(k, r) for k, r in rows if "mpps" in r]
        med = [r["mpps"]["median"] for _, r in rows]
        err = [[r["mpps"]["median"] - r["mpps"]["min"] for _, r in rows],
               [r["mpps"]["max"] - r["mpps"]["median"] for _, r in rows]]
        ax.bar(range(len(rows)), med, yerr=err, capsize=3,
               color=["tab:blue" if k == "drop" else "tab:orange" for k, _ in rows])
        ax.set_xticks(range(len(rows)), [f"{k}\n{r['name']}" for k, r in rows], fontsize=8)
        ax.set_ylabel("Mpps (generator on the same CPU)")
        ax.set_title("2. Live throughput on veth (min/median/max)")
    ax = axes[1][0]
    if "control" in s:
        rows = s["control"]["table_load"]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["install_rules_per_s"] for r in rows], 0.4,
               label="rules installed/s")
        ax.bar([i + 0.2 for i in x], [r["raw_hash_entries_per_s"] for r in rows], 0.4,
               label="raw hash entries/s")
        ax.set_yscale("log")
        ax.set_xticks(list(x), [_n(r["entries"]) for r in rows])
        ax.set_xlabel("entries")
        ax.set_title("3. Table load rate")
        ax.legend(fontsize=8)
    ax = axes[1][1]
    if "scaling" in s:
        rows = s["scaling"]["rules"]
        ax.plot([r["rules"] for r in rows], [r["hit"]["ns_per_packet"]["median"] for r in rows],
                "o-", label="rules (hit)")
        ax.plot([r["rules"] for r in rows], [r["miss"]["ns_per_packet"]["median"] for r in rows],
                "s-", label="rules (miss)")
        shapes = s["scaling"]["shapes"]
        ax.plot([r["shapes"] for r in shapes],
                [r["miss"]["ns_per_packet"]["median"] for r in shapes], "^-", label="shapes")
        ax.set_xscale("log")
        ax.set_xlabel("rules / shapes")
        ax.set_ylabel("ns/packet")
        ax.set_title("4. Scaling")
        ax.legend(fontsize=8)
    ax = axes[0][2]
    if "classbench" in s and s["classbench"].get("cost"):
        rows = [r for r in s["classbench"]["cost"] if "packets" in r]
        for key in sorted({(r["kind"], r["family"]) for r in rows}):
            mine = [r for r in rows if (r["kind"], r["family"]) == key]
            for pname, marker in (("miss", "o-"), ("late-hit", "s--")):
                pts = [(r["rules"], p["ratio_to_one_rule"]) for r in mine for p in r["packets"]
                       if p["packet"] == pname and p["ratio_to_one_rule"]]
                if pts:
                    ax.plot(*zip(*pts), marker, label=f"{key[0]} IPv{key[1]} {pname}")
        if ax.has_data():
            ax.set_xscale("log")
            ax.set_xlabel("rules")
            ax.set_ylabel("cost ÷ 1-rule program")
            ax.set_title("6. ClassBench-style rule sets")
            ax.legend(fontsize=8)
    for row in axes:
        for a in row:
            if not a.has_data():
                a.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
