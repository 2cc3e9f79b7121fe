"""``ebplane fleet apply|rules|status|detach``: desired state for many nodes, on etcd
(docs/fleet.md).  The agent's side is ``ebplane agent --fleet``."""

from __future__ import annotations

import time

from ebplane.cli.output import emit, table


def _etcd_args(p) -> None:
    p.add_argument("--etcd", metavar="URLS", help="etcd client URLs, comma-separated "
                   "(default $EBPLANE_ETCD); auth/TLS: $EBPLANE_ETCD_USER, _PASSWORD, _CA, "
                   "_CERT, _KEY")
    p.add_argument("--json", action="store_true")


def _rollout_args(p) -> None:
    p.add_argument("--canary", default="1", metavar="N|NODE,...",
                   help="the first batch: N nodes (default 1) or the named nodes")
    p.add_argument("--max-unavailable", type=int, default=1, metavar="N",
                   help="nodes changed at a time after the canary (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long a batch may take to report the new version (default 60)")


def register(sub) -> None:
    p = sub.add_parser("fleet", help="pipelines on many nodes: desired state on etcd")
    fs = p.add_subparsers(dest="fleet_cmd", required=True, metavar="COMMAND")

    q = fs.add_parser("apply", help="roll a spec out to the nodes a selector selects")
    q.add_argument("spec")
    q.add_argument("--selector", default="", metavar="k=v,...",
                   help="labels the nodes must have (node=NAME selects by name; empty: all)")
    _rollout_args(q)
    _etcd_args(q)
    q.set_defaults(func=cmd_apply)

    q = fs.add_parser("rules", help="change a fleet pipeline's rules on every node it runs on")
    rs = q.add_subparsers(dest="rules_cmd", required=True, metavar="COMMAND")
    a = rs.add_parser("add", help="insert a rule (at the end, or --at INDEX)")
    a.add_argument("name")
    a.add_argument("fields", nargs="*", metavar="KEY=VALUE")
    a.add_argument("--rule", help="the rule as a YAML mapping")
    a.add_argument("--at", type=int)
    a.add_argument("--table")
    _rollout_args(a)
    _etcd_args(a)
    a.set_defaults(func=cmd_rules_add)
    d = rs.add_parser("delete", help="delete rules by index")
    d.add_argument("name")
    d.add_argument("indexes", nargs="+", type=int, metavar="INDEX")
    d.add_argument("--table")
    _rollout_args(d)
    _etcd_args(d)
    d.set_defaults(func=cmd_rules_delete)

    q = fs.add_parser("status", help="which node runs which version, which lag, which failed")
    _etcd_args(q)
    q.set_defaults(func=cmd_status)

    q = fs.add_parser("detach", help="remove a pipeline from every node")
    q.add_argument("name")
    _etcd_args(q)
    q.set_defaults(func=cmd_detach)


def _etcd(args):
    from ebplane.fleet.etcd import Config, Etcd
    return Etcd(Config.parse(args.etcd))


def _kw(args) -> dict:
    c = args.canary
    canary = int(c) if c.isdigit() else [x for x in c.split(",") if x]
    return {"canary": canary, "max_unavailable": args.max_unavailable, "timeout": args.timeout}


def _human_rollout(r: dict) -> str:
    return (f"{r['name']}: version {r['version']} on {len(r['done'])} node(s) "
            f"({', '.join(r['done']) or 'none'}) in {r['seconds']} s"
            + (f"; not alive, will converge when back: {', '.join(r['not_alive'])}"
               if r["not_alive"] else ""))


def _run_rollout(args, fn) -> int:
    """A failed rollout raises RolloutFailed (exit 3); with --json its report is in the
    error object (``report``)."""
    emit(args, fn(), _human_rollout)
    return 0


def cmd_apply(args) -> int:
    from pathlib import Path

    from ebplane.fleet import layout, rollout
    from ebplane.spec.located import read_source
    text = read_source(Path(args.spec), "pipeline spec")
    sel = layout.parse_labels(args.selector, "--selector")
    return _run_rollout(args, lambda: rollout.apply(_etcd(args), text, args.spec, sel,
                                                    **_kw(args)))


def cmd_rules_add(args) -> int:
    from ebplane.cli.rules import _parse_fields
    from ebplane.fleet import rollout
    obj, _where = _parse_fields(args)
    return _run_rollout(args, lambda: rollout.rules_edit(
        _etcd(args), args.name, args.table, "add", rule=obj, at=args.at, **_kw(args)))


def cmd_rules_delete(args) -> int:
    from ebplane.fleet import rollout
    return _run_rollout(args, lambda: rollout.rules_edit(
        _etcd(args), args.name, args.table, "delete", indexes=args.indexes, **_kw(args)))


def cmd_status(args) -> int:
    from ebplane.fleet import rollout
    st = rollout.status(_etcd(args))

    def human(s: dict) -> str:
        rows = []
        for r in s["pipelines"]:
            ago = f"{time.time() - r['last_reconcile']:.0f}s ago" if r.get("last_reconcile") \
                else "-"
            rows.append([r["node"], r["pipeline"], r.get("desired_version") or "-",
                         r.get("version") or "-", r["state"], "yes" if r["lag"] else "no",
                         ago, r.get("error") or ""])
        down = [n for n, d in s["nodes"].items() if not d["alive"]]
        return table(rows, ["node", "pipeline", "desired", "applied", "state", "lag",
                            "reconciled", "error"]) + \
            (f"\nnodes down: {', '.join(down)}" if down else "")
    emit(args, st, human)
    return 0


def cmd_detach(args) -> int:
    from ebplane.fleet import rollout
    emit(args, rollout.detach(_etcd(args), args.name),
         lambda r: f"{r['name']}: removed from {', '.join(r['detached_from']) or 'no node'}")
    return 0
