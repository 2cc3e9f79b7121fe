"""``ebplane rules list | add | delete | replace``: change a filter's rules while traffic
flows, without reloading the program (each change is one atomic install)."""

from __future__ import annotations

import dataclasses

from ebplane.cli.output import agent, emit, table, via
from ebplane.errors import UsageError
from ebplane.spec.located import load_located


def register(sub) -> None:
    p = sub.add_parser("rules", help="list or change the rules of an applied filter")
    rs = p.add_subparsers(dest="rules_cmd", metavar="ACTION", required=True)

    q = rs.add_parser("list", help="the live rules, in priority order")
    q.add_argument("name")
    q.add_argument("--table", help="filter name (needed when the pipeline has several)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)

    q = rs.add_parser("add", help="insert a rule (at the end, or --at INDEX)",
                      description="The rule is given as KEY=VALUE words (src=198.18.0.0/24 "
                      "proto=udp dport=53 action=drop) or as --rule '{...}' (YAML flow mapping).")
    q.add_argument("name")
    q.add_argument("fields", nargs="*", metavar="KEY=VALUE")
    q.add_argument("--rule", help="the rule as a YAML mapping")
    q.add_argument("--at", type=int, help="position (0 = first, highest priority)")
    q.add_argument("--table")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_add)

    q = rs.add_parser("delete", help="delete rules by index")
    q.add_argument("name")
    q.add_argument("indexes", nargs="+", type=int, metavar="INDEX")
    q.add_argument("--table")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_delete)

    q = rs.add_parser("replace", help="replace the whole rule set from a YAML file (a list of "
                      "rules), atomically")
    q.add_argument("name")
    q.add_argument("file")
    q.add_argument("--table")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_replace)


def _table(args):
    from ebplane.runtime.pipeline import RuleTable
    return RuleTable(args.name, args.table)


def cmd_list(args) -> int:
    c = agent()
    if c is not None:
        rules = via(c.rules_list(args.name, args.table), "agent")
    else:
        rules = via(_table(args).list(), "direct")
    emit(args, rules, lambda rs: table(
        [[r["index"], r["id"], r["rule"]["action"],
          " ".join(f"{k}={v}" for k, v in r["rule"].items() if k != "action") or "(any)"] for r in rs],
        ["#", "id", "action", "match"]) if rs else "no rules")
    return 0


def _parse_fields(args):
    """The rule of ``rules add`` and where to locate its errors: ``(obj, where)``."""
    if args.rule and args.fields:
        raise UsageError("give the rule either as KEY=VALUE words or as --rule, not both")
    if args.rule:
        # located: a YAML slip or a bad field is reported at its column of --rule
        obj, where = load_located(args.rule, "--rule")
        if not isinstance(obj, dict):
            raise UsageError(f"--rule must be a mapping such as '{{dst: 198.18.0.1, action: drop}}', "
                             f"got {args.rule!r}")
        return obj, dataclasses.replace(where, root="rule")
    if not args.fields:
        raise UsageError("no rule given", hint="e.g. ebplane rules add NAME src=198.18.0.0/24 action=drop")
    obj = {}
    for f in args.fields:
        if "=" not in f:
            raise UsageError(f"'{f}' is not KEY=VALUE", hint="e.g. dport=53 or action=drop")
        k, v = f.split("=", 1)
        # a number (a port); too long a digit string stays text for the validator to refuse
        obj[k] = int(v, 10) if v.isdigit() and len(v) <= 20 else v
    return obj, "rule"


def cmd_add(args) -> int:
    c = agent()
    obj, where = _parse_fields(args)
    if c is not None:  # the agent validates the rule against the pipeline's protocols
        emit(args, via(c.rules_add(args.name, obj, at=args.at, table=args.table), "agent"),
             _human)
        return 0
    t = _table(args)
    rule = t.parse(obj, where)
    res = via(t.add(rule, args.at), "direct")
    emit(args, res, _human)
    return 0


def cmd_delete(args) -> int:
    c = agent()
    if c is not None:
        res = via(c.rules_delete(args.name, args.indexes, table=args.table), "agent")
    else:
        res = via(_table(args).delete(args.indexes), "direct")
    emit(args, res, _human)
    return 0


def cmd_replace(args) -> int:
    from pathlib import Path
    c = agent()
    from ebplane.spec.located import read_source
    text = read_source(Path(args.file), "rules file")
    items, root = load_located(text, args.file)  # errors name FILE:LINE:COLUMN
    root = dataclasses.replace(root, root="rules")  # and the field as rules[i].key
    if not isinstance(items, list):
        raise UsageError(f"{args.file} must hold a YAML list of rules",
                         hint="one '- {dst: 198.18.0.1, action: drop}' per line")
    if c is not None:
        res = via(c.rules_replace(args.name, items, table=args.table, source=args.file),
                  "agent")
        emit(args, res, _human)
        return 0
    t = _table(args)
    rules = [t.parse(it, root / i) for i, it in enumerate(items)]
    res = via(t.replace(rules), "direct")
    emit(args, res, _human)
    return 0


def _human(d: dict) -> str:
    extra = " (program regenerated: the new rules need more parsing)" if d.get("regenerated") else ""
    return f"filter '{d['table']}': {d['rules']} rules installed atomically{extra}"
