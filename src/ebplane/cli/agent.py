"""``ebplane agent`` (the agent, in the foreground) and ``ebplane events``."""

from __future__ import annotations

import json
import sys
import time



def register(sub) -> None:
    p = sub.add_parser("agent", help="run the agent in the foreground: keeps the data plane "
                       "converged to the desired state, serves the API")
    p.add_argument("--log-json", action="store_true", help="structured JSON logs on stderr")
    p.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                   help="reconcile period (also on every link event); default 0.5")
    p.add_argument("--fleet", metavar="ETCD_URLS", nargs="?", const="",
                   help="also take this node's pipelines from etcd (docs/fleet.md); URLs "
                   "comma-separated, default $EBPLANE_ETCD")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics on /metrics there (default: off)")
    p.add_argument("--node", help="this node's name in the fleet (default: the host name)")
    p.add_argument("--labels", default="", metavar="k=v,...", help="this node's labels")
    p.add_argument("--fleet-netns", metavar="NETNS",
                   help="attach the fleet's pipelines in this network namespace (their "
                   "spec's netns is replaced)")
    p.add_argument("--lease-ttl", type=int, default=10, metavar="SECONDS",
                   help="the node's status expires this long after the agent stops (default 10)")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("events", help="what the agent did and why")
    p.add_argument("--pipeline", help="only this pipeline's events")
    p.add_argument("--last", type=int, default=50, metavar="N", help="the last N (default 50)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object per event, one per line")
    p.set_defaults(func=cmd_events)


def cmd_agent(args) -> int:
    from ebplane.agent.daemon import run
    if args.metrics:
        from ebplane.runtime.metrics import parse_listen, serve
        serve(*parse_listen(args.metrics))
    extra = None
    if args.fleet is not None:
        import socket

        from ebplane.agent.store import data_dir
        from ebplane.fleet import layout
        from ebplane.fleet.etcd import Config, Etcd
        from ebplane.fleet.node import AgentApplier, FleetNode
        cfg = Config.parse(args.fleet or None)
        node = layout.check_node(args.node or socket.gethostname().split(".")[0])
        labels = layout.parse_labels(args.labels)

        def extra(agent):
            return FleetNode(Etcd(cfg), node, labels, AgentApplier(agent, args.fleet_netns),
                             data_dir(), ttl=args.lease_ttl)
    return run(interval=args.interval, json_logs=args.log_json, verbose=args.verbose,
               extra=extra)


def _line(ev: dict) -> str:
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev["ts"]))
    return f"{ts}  {ev['kind']:<16} {ev.get('pipeline') or '-':<15} {ev['message']}"


def cmd_events(args) -> int:
    from ebplane.agent.client import connect
    from ebplane.agent.store import Store
    c = connect()

    def show(evs: list[dict]) -> None:
        for ev in evs:
            ev["via"] = "agent" if c is not None else "direct"
            print(json.dumps(ev) if args.json else _line(ev), flush=True)

    if c is not None:
        evs = c.events(-args.last, pipeline=args.pipeline) if args.last > 0 else []
    else:
        evs = Store(readonly=True).events(0, args.pipeline, limit=10**9)
        evs = evs[-args.last:] if args.last > 0 else []
    show(evs)
    if not args.follow:
        return 0
    if c is None:
        from ebplane.errors import UsageError
        raise UsageError("--follow needs a running agent", hint="start it: ebplane agent")
    after = evs[-1]["seq"] if evs else max([e["seq"] for e in c.events(-1)] or [0])
    try:
        while True:
            new = c.events(after, wait=30, pipeline=args.pipeline)
            show(new)
            if new:
                after = new[-1]["seq"]
    except KeyboardInterrupt:
        return 0
