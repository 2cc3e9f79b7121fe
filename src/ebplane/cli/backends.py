"""``ebplane backends PIPELINE list | add | remove | set-weight | down | up | connections``:
the backends of an applied balancer stage, changed at run time (each change rewrites only
the Maglev entries that move, in the inactive half of the VIP's table, then flips it)."""

from __future__ import annotations

from ebplane.cli.output import emit, table


def register(sub) -> None:
    p = sub.add_parser("backends", help="list or change the backends of an applied balancer")
    p.add_argument("pipeline")
    common = dict(vip=("--vip", "the VIP as ADDRESS:PORT/PROTO (needed when the stage has "
                                "several)"))
    bs = p.add_subparsers(dest="backends_cmd", metavar="ACTION", required=True)

    def action(name: str, help_: str, *args: tuple[str, dict]):
        q = bs.add_parser(name, help=help_)
        for a, kw in args:
            q.add_argument(a, **kw)
        q.add_argument(common["vip"][0], help=common["vip"][1])
        q.add_argument("--stage", help="the balancer stage (needed when there are several)")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=cmd_backends, action=name)
        return q

    action("list", "per VIP: backends, weights, states, table entries, new flows")
    action("connections", "the connection table: flow -> backend")
    action("add", "add a backend (new flows only; established ones keep theirs)",
           ("address", {}), ("--weight", {"type": int, "default": 1}))
    action("remove", "remove a backend (its flows move to the others)", ("address", {}))
    action("set-weight", "change a backend's weight", ("address", {}),
           ("weight", {"type": int}))
    action("down", "mark a backend down: no new flows (established ones drain)",
           ("address", {}))
    action("up", "mark a backend up again", ("address", {}))


def _human_list(vips) -> str:
    out = []
    for v in vips:
        out.append(f"VIP {v['vip']} (Maglev table of {v['table_size']})")
        out.append(table([[b["slot"], b["address"], b["weight"], b["state"], b["entries"],
                           b["new_flows"]] for b in v["backends"]],
                         ["slot", "backend", "weight", "state", "entries", "new flows"]))
    return "\n".join(out)


def cmd_backends(args) -> int:
    from ebplane.runtime.balancer import Backends
    b = Backends(args.pipeline, args.stage)
    if args.action == "list":
        emit(args, b.list(), _human_list)
        return 0
    if args.action == "connections":
        conns = b.connections()
        emit(args, conns, lambda cs: table(
            [[c["proto"], f"{c['src']}:{c['sport']}", f"{c['dst']}:{c['dport']}",
              c["backend"] or f"(slot {c['slot']} gone)"] for c in cs],
            ["proto", "client", "vip", "backend"]) if cs else "no connections")
        return 0
    if args.action == "add":
        res = b.add(args.address, weight=args.weight, vip=args.vip)
    elif args.action == "remove":
        res = b.remove(args.address, vip=args.vip)
    elif args.action == "set-weight":
        res = b.set_weight(args.address, args.weight, vip=args.vip)
    elif args.action == "down":
        res = b.down(args.address, vip=args.vip)
    else:
        res = b.up(args.address, vip=args.vip)
    res["action"] = args.action
    emit(args, res, lambda r: f"{r['action']} {r['backend']} (VIP {r['vip']}): "
                              f"{r['moved']} of {r['size']} Maglev entries moved, "
                              f"{r['written']} written")
    return 0
