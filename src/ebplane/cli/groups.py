"""``ebplane groups PIPELINE list | add | remove``: the multicast groups of an applied
pipeline, changed while traffic flows (each member change is one atomic map swap)."""

from __future__ import annotations

from ebplane.cli.output import emit, table


def register(sub) -> None:
    p = sub.add_parser("groups", help="list or change the multicast groups of an applied "
                       "pipeline",
                       description="A group is a set of member ports and the destination "
                       "addresses that select it (a multicast MAC, broadcast, an IPv4 or IPv6 "
                       "multicast address). A frame to the group goes to every member but "
                       "the port it came in on.")
    p.add_argument("name", metavar="PIPELINE")
    gs = p.add_subparsers(dest="groups_cmd", metavar="ACTION", required=True)

    q = gs.add_parser("list", help="groups, members, addresses and frames sent")
    q.add_argument("--stage", help="multicast stage (needed when the pipeline has several)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)

    for verb, helptext in (("add", "create a group, or add members / addresses to it"),
                           ("remove", "remove members / addresses; with neither, the group")):
        q = gs.add_parser(verb, help=helptext)
        q.add_argument("group")
        q.add_argument("--member", "-m", action="append", default=[], metavar="IFNAME")
        q.add_argument("--address", "-a", action="append", default=[], metavar="ADDRESS")
        q.add_argument("--stage")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=cmd_change, verb=verb)

    q = gs.add_parser("snoop", help="learn members from IGMP/MLD reports (a multicast stage "
                      "with snooping: true), until interrupted or --seconds pass")
    q.add_argument("--stage")
    q.add_argument("--seconds", type=float, help="stop after this long (default: run on)")
    q.add_argument("--timeout", type=float, default=260.0,
                   help="seconds without a report after which a port leaves a group "
                        "(default 260, RFC 3376's membership interval; 0: never)")
    q.add_argument("--json", action="store_true", help="one JSON object per change")
    q.set_defaults(func=cmd_snoop)


def cmd_snoop(args) -> int:
    import json
    import sys
    from ebplane.errors import UsageError
    from ebplane.runtime.groups import Snooper

    # checked before the snooper opens anything: a negative --seconds used to end at once
    # (exit 0, nothing learnt) and a negative --timeout to expire every member at once
    if args.seconds is not None and not args.seconds > 0:
        raise UsageError(f"--seconds must be more than 0 (given: {args.seconds:g})",
                         hint="leave it out to snoop until interrupted")
    if not args.timeout >= 0:
        raise UsageError(f"--timeout must be 0 or more (given: {args.timeout:g})",
                         hint="seconds without a report before a port leaves; 0: never")

    def show(c: dict) -> None:
        if args.json:
            print(json.dumps(c), flush=True)
        elif c["event"] == "error":
            print(f"{c['address']} on {c['port']}: {c['error']}", file=sys.stderr, flush=True)
        else:
            print(f"{c['event']}: {c['port']} {'to' if c['event'] == 'join' else 'from'} "
                  f"group {c['group']} ({c['address']})", flush=True)
    sn = Snooper(_groups(args), timeout=args.timeout)
    try:
        sn.run(args.seconds, show)
    except KeyboardInterrupt:
        pass
    finally:
        sn.close()
    return 0


def _groups(args):
    from ebplane.runtime.groups import Groups
    return Groups(args.name, args.stage)


def _human(groups: list[dict]) -> str:
    if not groups:
        return "no groups"
    return table([[g["group"], ", ".join(map(str, g["members"])) or "-",
                   ", ".join(g["addresses"]), g["sent"]["packets"]] for g in groups],
                 ["group", "members", "addresses", "sent"])


def cmd_list(args) -> int:
    emit(args, _groups(args).list(), _human)
    return 0


def cmd_change(args) -> int:
    g = _groups(args)
    if args.verb == "add":
        res = g.add(args.group, members=args.member, addresses=args.address)
    else:
        res = g.remove(args.group, members=args.member, addresses=args.address)
    if res is None:
        emit(args, {"group": args.group, "removed": True}, lambda d: f"group {d['group']} removed")
    else:
        emit(args, res, lambda d: _human([d]))
    return 0
