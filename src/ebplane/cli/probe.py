"""``ebplane probe``: what this kernel and an interface can do, found by trying."""

from __future__ import annotations

from ebplane.cli.output import emit, table


def register(sub) -> None:
    p = sub.add_parser("probe", help="what the kernel (and an interface) can do")
    p.add_argument("--iface", help="also report this interface: XDP features, MTU, queues, "
                   "what is attached")
    p.add_argument("--netns", help="the network namespace of --iface")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from ebplane.kernel.probe import probe_kernel
    from ebplane.net.probe import probe_attach, probe_iface
    data = probe_kernel()
    data["attach"] = probe_attach()
    if args.iface:
        data["interface"] = probe_iface(args.iface, netns=args.netns)
    emit(args, data, _human)
    return 0


def _yes(v) -> str:
    return {True: "yes", False: "no", None: "?"}.get(v, str(v))


def _human(d: dict) -> str:
    k = d["kernel"]
    out = [f"kernel   {k['release']} ({k['machine']}), libbpf {d['libbpf']}",
           f"JIT      {_yes(d['jit']['enabled'])} (harden={d['jit']['harden']})   "
           f"BTF {_yes(d['btf']['vmlinux'])}   bpffs mounted {_yes(d['bpffs']['mounted'])}",
           "", "program types"]
    out.append(table([[t, _yes(v)] for t, v in d["program_types"].items()]))
    out += ["", "map types"]
    out.append(table([[t, _yes(v)] for t, v in d["map_types"].items()]))
    out += ["", "helpers"]
    pts = list(d["helpers"])
    names = sorted(d["helpers"][pts[0]])
    out.append(table([[h] + [_yes(d["helpers"][pt][h]) for pt in pts] for h in names],
                     ["helper"] + pts))
    out += ["", "attach methods"]
    out.append(table([[m, _yes(v)] for m, v in d["attach"].items()]))
    i = d.get("interface")
    if i:
        out += ["", f"interface {i['name']} (ifindex {i['ifindex']}, {i.get('kind') or '?'})"]
        rows = [["mtu", i["mtu"]], ["rx/tx queues", f"{i.get('rx_queues')}/{i.get('tx_queues')}"],
                ["xdp features", ", ".join(i["xdp_features"]["names"]) or "none"],
                ["xdp attached", i["xdp"]["prog_id"] and f"prog {i['xdp']['prog_id']} ({i['xdp']['mode']})" or "no"],
                ["tc attached", ", ".join(i.get("tc", [])) or "no"]]
        out.append(table(rows))
        out += ["", "building blocks on this interface (feature it needs -> fallback)"]
        out.append(table([[b["block"], b["feature"] or "(per frame)",
                           "yes" if b["ok"] else f"no -> {b['fallback']}"]
                          for b in i.get("blocks", [])], ["block", "feature", "served"]))
    return "\n".join(out)
