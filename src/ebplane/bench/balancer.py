"""Section ``balancer``: the balancer stage against a hand-written Maglev+IPIP program
(program cost) and against an nftables DNAT balancer in the style of kube-proxy's nftables
mode (live forwarding rate), on the same traffic.

Program cost: an encapsulating program changes the frame it runs on, and
BPF_PROG_TEST_RUN with ``repeat > 1`` runs each repetition on what the previous one left
(an encapsulated frame: no VIP's any more), so every packet is its own ``repeat = 1`` call
and the kernel-reported duration of that one run is taken (it includes the harness's
timer overhead, the same for all programs: the floor row shows it).  Two kinds of packet:
``established`` (the same flow again: the connection-table path) and ``new`` (a new source
port each time: Maglev lookup and connection-table insert).  The program is attached
(native XDP, to a veth in a throw-away namespace with a route and a neighbour toward the
backends) while it is measured, so the runs skip the dispatcher's RCU sync and the FIB
lookup succeeds (verdict XDP_TX).

Live: the bench lab (gen -- dut -- sink); the generator sends one UDP flow to the VIP; the
dut balances it to four backends routed via the sink, which counts what arrives.  The
ebplane balancer and the baseline encapsulate and redirect in XDP; nftables DNATs (its
conntrack entry made on the first packet, the fast path after) and the kernel forwards.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

from ebplane.bench.harness import Progress, Spread, Suite, load_c, load_pipeline
from ebplane.kernel.programs import XdpMd
from ebplane.lab.traffic import Flow
from ebplane.net import attach, iface, netns
from ebplane.spec import parse_spec
from ebplane.stages.balancer import maglev

VIP = "198.18.10.1"
VIP_PORT = 80
BACKENDS = [f"198.18.3.{i}" for i in range(1, 5)]
M = 65537
KATRAN = ("Katran (published, for reference only, other machines): about 100-120 ns per "
          "packet in its BPF_PROG_TEST_RUN harness; the XDP paper (Hoiland-Jorgensen et al., "
          "CoNEXT 2018): 5.2 Mpps on one core, 4.3x IPVS")
NFT_TABLE = "ebplb"


def spec_text(source: str, *, name: str = "lbbench", proto: str = "udp") -> str:
    backends = ", ".join(BACKENDS)
    return (f"pipeline: {name}\nhook: xdp\nprotocols: [ethernet, ipv4, tcp, udp, icmp]\n"
            f"stages:\n  - balancer:\n      name: lb\n      encap: ipip\n"
            f"      source: {{ipv4: {source}}}\n      table_size: {M}\n"
            f"      vips:\n        - {{vip: {VIP}, port: {VIP_PORT}, proto: {proto}, "
            f"backends: [{backends}]}}\n")


def fill_baseline(obj, source: str) -> None:
    """The baseline's maps: the VIP, the backends, the Maglev table, the outer source."""
    import ipaddress
    import struct
    vk = ipaddress.ip_address(VIP).packed + struct.pack("<HBB", VIP_PORT, 17, 0)
    obj.maps["vips"].update_raw(vk, struct.pack("<I", 0))
    vk = ipaddress.ip_address(VIP).packed + struct.pack("<HBB", VIP_PORT, 6, 0)
    obj.maps["vips"].update_raw(vk, struct.pack("<I", 0))
    for i, b in enumerate(BACKENDS):
        obj.maps["reals"].update_raw(struct.pack("<I", i),
                                     ipaddress.ip_address(b).packed + b"\0" * 4)
    table = maglev.populate([(i, b, 1) for i, b in enumerate(BACKENDS)], M)
    obj.maps["ring"].update_batch(struct.pack(f"<{M}I", *range(M)),
                                  struct.pack(f"<{M}I", *table))
    obj.maps["source"].update_raw(struct.pack("<I", 0), ipaddress.ip_address(source).packed)


# -- program cost ------------------------------------------------------------------------------

class _CostNs:
    """A namespace with a veth whose end bc0 has 198.18.2.1/24, a neighbour 198.18.2.2 and a
    route to the backends via it: the FIB lookup of the programs succeeds."""

    def __enter__(self):
        self._ns = netns.temporary("ebp-bench-lb")
        self.name = self._ns.__enter__().name
        try:
            for c in ("ip link add bc0 type veth peer name bc1", "ip link set bc0 up",
                      "ip link set bc1 up", "sysctl -qw net.ipv4.conf.all.forwarding=1",
                      "ip addr add 198.18.2.1/24 dev bc0",
                      "ip neigh add 198.18.2.2 lladdr 02:00:00:00:00:02 dev bc0 nud permanent",
                      "ip route add 198.18.3.0/24 via 198.18.2.2"):
                netns.run(self.name, c.split())
            with netns.enter(self.name):
                iface.wait_up("bc0")
                self.ifindex = iface.ifindex("bc0")
        except BaseException:
            self._ns.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self._ns.__exit__(*exc)

    @contextlib.contextmanager
    def attached(self, prog):
        with netns.enter(self.name):
            a = attach.attach_xdp(prog.fd, "bc0", mode="native", use_link=True)
        try:
            yield
        finally:
            a.link.detach()
            a.link.close()


def _frames(n: int, new: bool, batch: int) -> list[bytes]:
    """64-byte frames to the VIP: one flow again and again, or ``n`` flows no earlier batch
    sent (a source address per batch, a source port per frame)."""
    out = []
    for i in range(n):
        src = f"198.19.{batch % 250}.{1 + batch // 250}" if new else "198.18.1.2"
        f = Flow("udp", src, VIP, 1024 + i % 60000 if new else 40000, VIP_PORT)
        out.append(f.frame("02:00:00:00:00:01", "02:00:00:00:00:02", b"\0" * 18))
    return out


def _cost(ns: _CostNs, prog, calls: int, batches: int) -> dict:
    """Median ns/packet per batch of ``calls`` single-packet runs, for both packet kinds."""
    res: dict = {}
    with ns.attached(prog), netns.enter(ns.name):
        for kind in ("established", "new"):
            medians, verdicts = [], set()
            for b in range(batches):
                frames = _frames(calls, kind == "new", b)
                ds = []
                for fr in frames:
                    r = prog.test_run(fr, ctx=XdpMd(data_end=len(fr), ingress_ifindex=ns.ifindex),
                                      out_size=len(fr) + 64)
                    ds.append(r.duration_ns)
                    verdicts.add(r.verdict)
                medians.append(float(statistics.median(ds)))
            res[kind] = {"ns_per_packet": Spread.of(medians).to_dict(1),
                         "verdicts": sorted(verdicts)}
    info = prog.info()
    res["verified_insns"] = info.get("verified_insns")
    res["jited_bytes"] = info.get("jited_bytes")
    return res


def run_cost(suite: Suite, calls: int, batches: int, progress: Progress) -> dict:
    out: dict = {}
    with _CostNs() as ns:
        progress(f"balancer: program cost, floor ({batches} x {calls} single runs per kind)")
        with contextlib.closing(load_c(suite.floor)) as floor:
            out["floor"] = _cost(ns, next(iter(floor.programs.values())), calls, batches)
        progress("balancer: program cost, ebplane")
        spec = parse_spec(spec_text("198.18.2.1"))
        with netns.enter(ns.name):
            built = load_pipeline(spec)
        with contextlib.closing(built):
            out["ebplane"] = _cost(ns, built.program, calls, batches)
        progress("balancer: program cost, hand-written baseline")
        with contextlib.closing(load_c(baseline_path(suite))) as obj:
            fill_baseline(obj, "198.18.2.1")
            out["baseline"] = _cost(ns, next(iter(obj.programs.values())), calls, batches)
    for kind in ("established", "new"):
        e = out["ebplane"][kind]["ns_per_packet"]["median"]
        b = out["baseline"][kind]["ns_per_packet"]["median"]
        f = out["floor"][kind]["ns_per_packet"]["median"]
        out.setdefault("ratios", {})[kind] = {
            "ebplane_to_baseline": round(e / b, 2) if b else None,
            "ebplane_to_baseline_above_floor": round((e - f) / (b - f), 2) if b > f else None}
    return out


def baseline_path(suite: Suite) -> Path:
    return suite.root / "baselines" / "maglev_encap.bpf.c"


# -- live ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _routes(lab):
    """The dut's route to the backends, via the sink (whose neighbour entry the lab set)."""
    dut = lab.ns("dut")
    netns.run(dut, ["ip", "route", "replace", "198.18.3.0/24", "via", "198.18.2.2"])
    try:
        yield
    finally:
        netns.run(dut, ["ip", "route", "del", "198.18.3.0/24"], check=False)


@contextlib.contextmanager
def nft_dnat(lab):
    """kube-proxy's nftables mode in small: the service chain picks an endpoint chain with
    numgen random mod N (a verdict map), the endpoint chain DNATs to the backend; conntrack
    keeps the choice for the flow's later packets."""
    dut = lab.ns("dut")
    eps = "\n".join(f"  chain ep{i} {{\n    meta l4proto udp dnat to {b}:{VIP_PORT}\n  }}"
                    for i, b in enumerate(BACKENDS))
    vmap = ", ".join(f"{i} : goto ep{i}" for i in range(len(BACKENDS)))
    text = (f"table ip {NFT_TABLE} {{\n{eps}\n  chain svc {{\n"
            f"    numgen random mod {len(BACKENDS)} vmap {{ {vmap} }}\n  }}\n"
            f"  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n"
            f"    ip daddr {VIP} udp dport {VIP_PORT} goto svc\n  }}\n}}\n")
    netns.run(dut, ["nft", "-f", "-"], input=text)
    try:
        yield text
    finally:
        netns.run(dut, ["nft", "delete", "table", "ip", NFT_TABLE], check=False)
        netns.run(dut, ["conntrack", "-F"], check=False)


def run_live(lab, seconds: float, repeats: int, progress: Progress) -> dict:
    from ebplane.bench.live import LiveRow, _measure, _ratios, _run, XDP_DROP
    flow = Flow("udp", "198.18.1.2", VIP, 40000, VIP_PORT)
    rows: list[LiveRow] = []
    with lab.sending(flow), _routes(lab):
        gen = LiveRow("generator-only", "the generator drops its own frames (subtracted)")
        progress(f"balancer live: generator only ({repeats} x {seconds:g} s)")
        _run(lab, gen, lab.sent, seconds, repeats, action=XDP_DROP)
        gen_ns = 1e9 / Spread.of(gen.pps).median

        @contextlib.contextmanager
        def ebplane():
            path = lab.workdir / "lbbench.yaml"
            path.write_text(spec_text("198.18.2.1"))
            with lab.ebplane(path) as name:
                yield name

        @contextlib.contextmanager
        def baseline():
            with contextlib.closing(load_c(baseline_path(lab.suite))) as obj:
                fill_baseline(obj, "198.18.2.1")
                with lab.xdp_program(obj):
                    yield obj

        duts = [
            (LiveRow("ebplane", "balancer stage (Maglev, connection table, IPIP), native XDP, "
                     "redirect to eth1"), ebplane),
            (LiveRow("baseline", "hand-written maglev_encap.bpf.c, native XDP, redirect to "
                     "eth1"), baseline),
            (LiveRow("nftables-dnat", "nftables DNAT, numgen random vmap to 4 endpoint chains "
                     "(kube-proxy nftables style), conntrack, kernel forwarding"),
             lambda: nft_dnat(lab)),
        ]
        # interleaved (one run of each in turn, ``repeats`` rounds): a machine shared with
        # other work slows all of them alike rather than whichever ran last
        for _ in range(repeats):
            for row, setup in duts:
                if row.error is None:
                    _measure(lab, row, setup, lambda _: lab.sink_received, seconds, 1, progress)
        rows = [row for row, _ in duts]
    out = [r.to_dict(gen_ns) for r in rows]
    _ratios(out, "nftables-dnat")
    ref = next((r for r in out if r["name"] == "nftables-dnat" and "mpps" in r), None)
    for r in out:  # best runs (the least disturbed by other work on the machine)
        if ref and "mpps" in r:
            r["speedup_vs_nftables-dnat_best"] = round(r["mpps"]["max"] / ref["mpps"]["max"], 2)
    return {"traffic": f"one UDP flow {flow.src}:{flow.sport} > {VIP}:{VIP_PORT}, 64-byte "
                       f"frames; backends {', '.join(BACKENDS)} via the sink",
            "generator": gen.to_dict(None), "rows": out}


def run_balancer(suite: Suite, lab, calls: int, batches: int, seconds: float, repeats: int,
                 progress: Progress) -> dict:
    cost = run_cost(suite, calls, batches, progress)
    live = run_live(lab, seconds, repeats, progress) if lab is not None else None
    targets = {"cost_ratio_max": 1.2, "live_speedup_min": 4.0}
    ebp = next((r for r in (live or {}).get("rows", []) if r["name"] == "ebplane"), {})
    return {"method": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
            "reference": KATRAN, "targets": targets, "cost": cost, "live": live,
            "summary": {
                "cost_ratio_established": cost["ratios"]["established"]["ebplane_to_baseline"],
                "cost_ratio_new": cost["ratios"]["new"]["ebplane_to_baseline"],
                "live_speedup_vs_nftables_dnat": ebp.get("speedup_vs_nftables-dnat"),
                "live_speedup_vs_nftables_dnat_best": ebp.get("speedup_vs_nftables-dnat_best")}}


def markdown(b: dict) -> list[str]:
    c = b["cost"]
    lines = ["## 8. Balancer (L4 load balancer: Maglev, connection table, IPIP)", "",
             b["method"], "", b["reference"] + ".", "",
             "### Program cost (ns per packet, median of batch medians)", ""]
    head = ["program", "established ns", "new flow ns", "verdicts", "verified insns"]
    rows = []
    for name in ("floor", "ebplane", "baseline"):
        r = c[name]
        rows.append([name, r["established"]["ns_per_packet"]["median"],
                     r["new"]["ns_per_packet"]["median"],
                     " ".join(sorted(set(r["established"]["verdicts"]) | set(r["new"]["verdicts"]))),
                     r["verified_insns"]])
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows] + [""]
    for kind in ("established", "new"):
        r = c["ratios"][kind]
        lines.append(f"- {kind}: ebplane / hand-written = **{r['ebplane_to_baseline']}x** "
                     f"(above the floor: {r['ebplane_to_baseline_above_floor']}x; target <= "
                     f"{b['targets']['cost_ratio_max']}x)")
    lines.append("")
    if b["live"]:
        lv = b["live"]
        lines += ["### Live forwarding rate", "", f"Traffic: {lv['traffic']}.", "",
                  "| DUT | what | Mpps min / median / max | ns/pkt DUT alone | speed-up vs "
                  "nftables DNAT (medians) | (best runs) | handled |",
                  "|---|---|---|---|---|---|---|"]
        for r in lv["rows"]:
            if "error" in r:
                lines.append(f"| {r['name']} | {r['what']} | – | – | – | – | {r['error']} |")
                continue
            m = r["mpps"]
            lines.append(f"| {r['name']} | {r['what']} | {m['min']} / **{m['median']}** / "
                         f"{m['max']} | {r.get('dut_ns_per_packet', '–')} | "
                         f"{r.get('speedup_vs_nftables-dnat', '–')}x | "
                         f"{r.get('speedup_vs_nftables-dnat_best', '–')}x | "
                         f"{r['handled_fraction']:.2%} |")
        lines.append("")
    return lines
