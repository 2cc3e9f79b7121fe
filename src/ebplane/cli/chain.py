"""``ebplane chain``: the service-chain example from one command.

Brings up the chain lab (topology.yaml: client -- fw -- router -- server),
applies the firewall and router pipelines in their namespaces, sends allowed and blocked
traffic from the client, and prints what each hop counted.  Everything is removed
afterwards unless ``--keep``.

The example's files are package data (``ebplane/examples/chain``, which the repository's
``examples/chain`` links to), found through ``importlib.resources`` so that an installed
ebplane finds them too.
"""

from __future__ import annotations

import contextlib
import tempfile
from importlib import resources
from pathlib import Path

from ebplane.cli.output import emit, progress, table

# a directory on disk: pip installs ebplane unzipped, so the resource is a real path
CHAIN_DIR = Path(str(resources.files("ebplane") / "examples" / "chain"))
HOPS = (("fw", "firewall.yaml"), ("router", "router.yaml"))
SERVER = "198.18.81.2"


def register(sub) -> None:
    p = sub.add_parser("chain", help="run the service-chain example (firewall, then router, "
                                     "by XDP redirect between namespaces)")
    p.add_argument("--dir", default=str(CHAIN_DIR),
                   help="directory with topology.yaml, firewall.yaml, router.yaml")
    p.add_argument("--count", type=int, default=20, help="packets per flow (default 20)")
    p.add_argument("--keep", action="store_true",
                   help="leave the lab and pipelines up (remove with: ebplane detach "
                        "chain-fw; ebplane detach chain-router; ebplane lab down)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_chain)


def _spec_in(ns: str, src: Path, tmp: Path) -> Path:
    """``src`` with its ``netns:`` pointing at the lab's namespace of that hop."""
    lines = [f"netns: {ns}" if line.startswith("netns:") else line
             for line in src.read_text().splitlines()]
    out = tmp / src.name
    out.write_text("\n".join(lines) + "\n")
    return out


def run_chain(directory: Path, count: int, *, keep: bool = False) -> dict:
    """Bring up, apply, send, count; returns the traffic results and each hop's stats."""
    from ebplane.lab import traffic
    from ebplane.lab.topology import Lab
    from ebplane.net import iface, netns
    from ebplane.runtime import pipeline

    lab = Lab.load(directory / "topology.yaml")
    progress(f"bringing up lab {lab.name} ({', '.join(lab.topology.nodes)})")
    lab.up()
    applied: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for node, spec in HOPS:
                progress(f"applying {spec} in {lab.ns(node)}")
                applied.append(pipeline.apply(_spec_in(lab.ns(node), directory / spec,
                                                      Path(tmp))).name)
        client = lab.ns("client")
        with netns.enter(lab.ns("router")):
            gateway_mac = iface.info("eth0").mac  # the fw is transparent: L2 peer is the router
        pings = traffic.ping(client, SERVER, count=3)
        flows = {"udp 5000 (allowed)": traffic.Flow("udp", "198.18.80.2", SERVER, 4000, 5000),
                 "udp 9 (blocked by fw)": traffic.Flow("udp", "198.18.80.2", SERVER, 4000, 9),
                 "tcp 23 (blocked by fw)": traffic.Flow("tcp", "198.18.80.2", SERVER, 4000, 23)}
        received = {}
        for label, flow in flows.items():
            with traffic.Capture(lab.ns("server"), "eth0", flow) as cap:
                traffic.send(client, "eth0", flow, count, dst_mac=gateway_mac)
                received[label] = cap.wait(count, timeout=1.0 if "allowed" in label else 0.3)
        hops = {name: pipeline.stats(name)[0] for name in applied}
        return {"lab": lab.name, "ping": {"sent": 3, "answered": pings},
                "flows": {k: {"sent": count, "received": v} for k, v in received.items()},
                "hops": hops}
    finally:
        if not keep:
            for name in reversed(applied):
                with contextlib.suppress(Exception):
                    pipeline.detach(name)
            lab.down()


def cmd_chain(args) -> int:
    result = run_chain(Path(args.dir), args.count, keep=args.keep)
    emit(args, result, _human)
    ok = result["ping"]["answered"] == result["ping"]["sent"] and all(
        (f["received"] == f["sent"]) == ("allowed" in k) for k, f in result["flows"].items())
    return 0 if ok else 1


def _human(d: dict) -> str:
    from ebplane.stages.control import control_for
    out = [f"service chain in lab {d['lab']}: client -> fw -> router -> server",
           f"ping {SERVER}: {d['ping']['answered']} of {d['ping']['sent']} answered", "",
           table([[k, f["sent"], f["received"]] for k, f in d["flows"].items()],
                 ["flow", "sent", "received at server"])]
    for name, st in d["hops"].items():
        out += ["", f"hop {name}"]
        rows = [["verdict", v, c["packets"]] for v, c in st["verdicts"].items() if c["packets"]]
        for s in st["stages"]:
            # rules always, other counters when they counted (StageControl.rows)
            rows += [[f"{s['kind']} {s['stage']}",
                      r.key if r.index is None else f"rule {r.index} ({r.action})", r.packets]
                     for r in control_for(s["kind"]).rows(s) if r.index is not None or r.packets]
        out.append(table(rows, ["stage", "outcome", "packets"]))
    return "\n".join(out)
