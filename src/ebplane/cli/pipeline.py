"""``ebplane apply | status | detach | stats | replay``."""

from __future__ import annotations

import time

from ebplane.cli.output import agent, emit, progress, table, via


def register(sub) -> None:
    p = sub.add_parser("apply", help="validate, compile, load and attach a pipeline spec")
    p.add_argument("spec", help="pipeline spec (YAML)")
    p.add_argument("--replace-foreign", action="store_true",
                   help="detach an XDP program that is not ebplane's (attached by netlink) "
                        "where the pipeline attaches; without it the apply fails, naming it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("status", help="applied pipelines and their attachments")
    p.add_argument("name", nargs="?")
    p.add_argument("-v", "--objects", action="store_true",
                   help="also each pinned program and map: kernel id and name (as bpftool "
                        "shows them, 15 characters), pin, stage and role")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("detach", help="detach a pipeline and remove its state")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_detach)

    p = sub.add_parser("stats", help="packets and bytes per rule, per stage, per verdict")
    p.add_argument("name", nargs="?")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="print again every SECONDS until Ctrl-C")
    p.add_argument("--rate", type=float, nargs="?", const=1.0, metavar="SECONDS",
                   help="packet and bit rates over SECONDS (default 1), highest first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("replay", help="run the packets of a pcap through a pipeline (test_run)")
    p.add_argument("spec")
    p.add_argument("--pcap", required=True, help="input pcap (Ethernet)")
    p.add_argument("--out", help="write every packet as the program left it to this pcap")
    p.add_argument("--ingress", metavar="IF",
                   help="run the packets as received on interface IF of the current "
                        "namespace (what route and bridge look up; default: none)")
    p.add_argument("--json", action="store_true", help="one JSON object per packet, one per line")
    p.set_defaults(func=cmd_replay)


def cmd_apply(args) -> int:
    c = agent()
    if c is not None:
        if args.replace_foreign:  # done here, as root; the agent then attaches
            from ebplane.runtime.pipeline import evict_foreign
            for note in evict_foreign(args.spec):
                progress(note)
        progress(f"applying {args.spec} through the agent")
        emit(args, via(c.apply(args.spec), "agent"), _apply_human)
        return 0
    from ebplane.runtime.pipeline import apply
    res = apply(args.spec, progress=progress, replace_foreign=args.replace_foreign)
    emit(args, via(res.to_dict(), "direct"), _apply_human)
    return 0


def _apply_human(d: dict) -> str:
    if d.get("state") == "pending":
        return (f"pipeline '{d['name']}' is pending: {d['why']}; the agent attaches it when "
                f"the interface appears")
    verb = "applied" if d["created"] else "re-applied (program replaced atomically)"
    lines = [f"pipeline '{d['name']}' {verb}: program id {d['prog_id']}"
             f"{' (compiled from cache)' if d['compiled_from_cache'] else ''} in {d['seconds']} s"]
    for a in d["attachments"]:
        lines.append(f"  {a['ifname']}: {a['hook']} via {a['method']}"
                     f"{' (' + a['mode'] + ')' if a.get('mode') else ''}")
    for t, n in d["rules"].items():
        lines.append(f"  filter '{t}': {n} rules")
    if d["reused_maps"]:
        lines.append(f"  kept state of: {', '.join(d['reused_maps'])}")
    for n in d["notes"]:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    c = agent() if not args.objects else None  # the kernel objects are read here, directly
    if c is not None:
        emit(args, via(c.status(args.name), "agent"), _status_human)
        return 0
    from ebplane.runtime.pipeline import status
    emit(args, via(status(args.name, objects=args.objects), "direct"), _status_human)
    return 0


def _status_human(items: list[dict]) -> str:
    if not items:
        return "no pipelines applied"
    rows = []
    for d in items:
        atts = ", ".join(f"{a['ifname']}({a.get('method') or '?'}"
                         f"{'/' + a['mode'] if a.get('mode') else ''}"
                         f"{'' if a.get('health', 'ok') == 'ok' else ' ' + a['health']})"
                         for a in d["attachments"])
        prog = d["program"] or {}
        rows.append([d["name"], d["hook"], d["netns"] or "-", d["prog_id"],
                     prog.get("verified_insns", "?"), atts or "-",
                     " ".join(f"{k}:{v} ({d.get('filters', {}).get(k, {}).get('form', '?')})"
                              for k, v in d["rules"].items()) or "-"])
    out = table(rows, ["name", "hook", "netns", "prog", "insns", "attached", "rules"])
    for d in items:
        if d.get("capture"):
            c = d["capture"]
            out += (f"\n\n{d['name']}: traced by pid {c['pid']} (capture hooks in the "
                    f"program until the trace ends)")
        if d.get("objects"):
            out += f"\n\n{d['name']}: kernel objects (bpftool prog|map show; -f shows the pin)\n"
            out += table([[o["kind"], o["id"], o["name"] + (" (cut)" if o["truncated"] else ""),
                           o["type"], o["stage"] or "-", o["role"], o["pin"]]
                          for o in d["objects"]],
                          ["kind", "id", "kernel name", "type", "stage", "role", "pin"])
    shown = set()
    for d in items:  # composed pipelines: the members of each interface, in run order
        for c in d.get("composition") or []:
            key = (c["netns"], c["ifname"], c["hook"])
            if key in shown:
                continue
            shown.add(key)
            order = " -> ".join(f"{m['priority']}:{m['pipeline']}" for m in c["members"])
            out += (f"\n\n{c['ifname']} ({c['hook']}{', netns ' + c['netns'] if c['netns'] else ''}): "
                    f"{order}" + ("" if c["in_order"] else
                                  f"  (kernel order differs: programs {c['kernel_order']})"))
    for d in items:  # what the kernel no longer agrees with, and the way out
        if d.get("problems"):
            out += f"\n\n{d['name']}: {d['health']}: " + "; ".join(d["problems"])
            if d.get("repair"):
                out += f"\n  repair: {d['repair']}"
        for w in d.get("warnings") or []:
            out += f"\n\n{d['name']}: warning: {w}"
        ag = d.get("agent")
        if ag and ag["state"] != "ok":
            out += f"\n\n{d['name']}: agent: {ag['state']}" + (f": {ag['why']}" if ag['why'] else "")
    if items and items[0].get("via") == "agent":
        out += "\n\n(through the agent: it repairs drift by itself; ebplane events says what it did)"
    return out


def cmd_detach(args) -> int:
    c = agent()
    if c is not None:
        res = via(c.detach(args.name), "agent")
    else:
        from ebplane.runtime.pipeline import detach
        res = via(detach(args.name, progress=progress), "direct")
    emit(args, res, lambda d: f"pipeline '{d['name']}' detached from "
         f"{', '.join(d['detached']) or 'no interface'}; state removed")
    return 0


def cmd_stats(args) -> int:
    if args.rate:
        from ebplane.cli.top import _read, rates, run_once
        if not args.json:
            print(run_once(args.name, args.rate))
            return 0
        prev, t0 = _read(args.name)
        time.sleep(args.rate)
        cur, t1 = _read(args.name)
        emit(args, [{"pipeline": k[0], "stage": k[1], "what": k[2], "verdict": k[3],
                     "pps": pps, "bps": bps, "packets": total}
                    for k, pps, bps, total in rates(prev, cur, t1 - t0)])
        return 0
    c = agent()
    if c is not None:
        def stats(name):
            return via(c.stats(name), "agent")
    else:
        from ebplane.runtime.pipeline import stats as direct

        def stats(name):
            return via(direct(name), "direct")
    if args.watch and not args.json:
        try:
            while True:
                print("\033[2J\033[H" + time.strftime("%H:%M:%S"))
                emit(args, stats(args.name), stats_human)
                time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0
    emit(args, stats(args.name), stats_human)
    return 0


def stats_human(items: list[dict]) -> str:
    from ebplane.stages.control import control_for
    out = []
    for d in items:
        out.append(f"pipeline {d['name']}")
        out.append(table([[v, c["packets"], c["bytes"]] for v, c in d["verdicts"].items()],
                         ["verdict", "packets", "bytes"]))
        if d.get("handoff"):  # parser mode xdp: where the TC stages got their parse
            out.append("")
            out.append("parse hand-off (XDP parser -> TC stages)")
            out.append(table([[k, c["packets"]] for k, c in d["handoff"].items()],
                             ["parse", "packets"]))
        for st in d["stages"]:
            out.append("")
            out.append(f"{st['kind']} {st['stage']}")
            rows = control_for(st["kind"]).rows(st)  # what the kind's counters are
            if any(r.action is not None for r in rows):  # rows that decide: rules, defaults
                out.append(table([["-" if r.index is None else r.index, r.action,
                                   r.match if r.index is not None else f"({r.key})",
                                   r.packets, r.bytes] for r in rows],
                                 ["#", "action", "match", "packets", "bytes"]))
            else:
                out.append(table([[r.key, r.packets, r.bytes] for r in rows],
                                 ["class", "packets", "bytes"]))
                if "table" in st:  # stateful kinds (conntrack, nat): entries against capacity
                    t = st["table"]
                    out.append(f"table: {t['entries']} of {t['capacity']} entries, "
                               f"when full: {t['when_full']}")
    return "\n".join(out)


def cmd_replay(args) -> int:
    import json
    import sys
    from ebplane.runtime.pcap import read_pcap, write_pcap
    from ebplane.runtime.replay import Replayer
    from ebplane.spec import load_spec
    spec = load_spec(args.spec)
    frames = list(read_pcap(args.pcap))
    out_frames = []
    totals: dict[str, int] = {}
    with Replayer(spec, ingress=args.ingress) as rp:
        for d in rp.run_all(frames):
            verdict = d.verdict or d.reason  # a frame not run: "skipped"
            totals[verdict] = totals.get(verdict, 0) + 1
            out_frames.append(d.packet)  # a skipped frame unchanged: indexes stay aligned
            if args.json:
                sys.stdout.write(json.dumps(d.to_dict()) + "\n")
            else:
                where = d.detail if d.detail else f"{d.stage} rule {d.rule}" \
                    if d.rule is not None else \
                    (f"{d.stage} {d.reason}" if d.stage else "end of pipeline")
                print(f"{d.index:6d}  {verdict:<13} {where}")
    if args.out:
        write_pcap(args.out, out_frames)
    if not args.json:
        print(f"{len(frames)} packets: " + ", ".join(f"{v} {n}" for v, n in sorted(totals.items())))
    return 0
