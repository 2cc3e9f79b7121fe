"""``ebplane lab up | down | status``: network namespaces joined by veth pairs."""

from __future__ import annotations

from ebplane.cli.output import emit, progress, table


def register(sub) -> None:
    p = sub.add_parser("lab", help="a lab of network namespaces joined by veth pairs")
    ls = p.add_subparsers(dest="lab_cmd", metavar="ACTION", required=True)
    q = ls.add_parser("up", help="build a lab (default: client -- dut -- server)")
    q.add_argument("--topology", help="topology file (YAML); default: the built-in one")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_up)
    q = ls.add_parser("down", help="remove a lab's namespaces (default lab: ebp-lab)")
    q.add_argument("name", nargs="?", default=None)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_down)
    q = ls.add_parser("status", help="labs that are up")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_status)


def _human(d: dict) -> str:
    rows = []
    for node, n in d["nodes"].items():
        addrs = "; ".join(f"{i}: {', '.join(a) or '-'}" for i, a in n["interfaces"].items())
        rows.append([node, n["netns"], "yes" if n["exists"] else "NO", addrs])
    return f"lab {d['lab']} ({'up' if d['up'] else 'down'})\n" + \
        table(rows, ["node", "netns", "exists", "interfaces"])


def cmd_up(args) -> int:
    from ebplane.lab.topology import Lab
    lab = Lab.load(args.topology)
    progress(f"building lab {lab.name}: {len(lab.namespaces())} namespaces")
    lab.up()
    emit(args, lab.state(), _human)
    return 0


def cmd_down(args) -> int:
    from ebplane.errors import NotFound
    from ebplane.lab.topology import DEFAULT_LAB, Lab
    name = args.name or DEFAULT_LAB
    lab = Lab.running(name)
    if lab is None:
        raise NotFound(f"no lab named {name!r} is up (labs up: {', '.join(Lab.recorded()) or 'none'})")
    lab.down()
    emit(args, {"lab": name, "down": True}, lambda d: f"lab {d['lab']} removed")
    return 0


def cmd_status(args) -> int:
    from ebplane.lab.topology import Lab
    labs = [Lab.running(n) for n in Lab.recorded()]
    data = [lab.state() for lab in labs if lab]
    emit(args, data, lambda ds: "\n\n".join(_human(d) for d in ds) or "no lab is up")
    return 0
