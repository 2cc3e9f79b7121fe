"""``ebplane demo``: lab, firewall at XDP, real traffic, live counters, teardown."""

from __future__ import annotations

from ebplane.cli.output import emit


def register(sub) -> None:
    p = sub.add_parser("demo", help="build a lab, apply a firewall, send traffic, show counters, "
                       "tear down")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--packets", type=int, default=25, help="packets per flow per round")
    p.add_argument("--json", action="store_true", help="the summary as JSON (progress on stderr)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import sys
    from ebplane.lab.demo import run
    out = (lambda s: print(s, file=sys.stderr)) if args.json else print
    summary = run(rounds=args.rounds, per_round=args.packets, out=out)
    if args.json:
        emit(args, summary)
    return 0
