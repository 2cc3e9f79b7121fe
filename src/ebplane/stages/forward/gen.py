"""Code generators of the forwarding stages (route, bridge, redirect, tx, steer, xsk).

The logic is reviewed C in ``forward.h``; each generator declares the stage's
maps (named ``<prefix>_<stage>_<role>``, found again by the runtime through
:func:`map_name`) and a thin stage function that calls the helper and counts the outcome
in the stage's per-CPU counters, one slot per outcome (:data:`OUTCOMES`).

At the tc hooks, ``route``, ``redirect`` and ``bridge`` call the skb versions of
``stages/forward/forward_tc.h`` instead (bpf_redirect_peer, bpf_redirect_neigh, bpf_redirect),
with their own counter slots (:data:`OUTCOMES_TC`); the XDP code is generated as before.
"""

from __future__ import annotations

from ebplane.codegen.layout import Field, Layout
from ebplane.codegen.pipeline import Emit, Features, StageGen
from ebplane.stages.forward.spec import (BridgeStage, RedirectStage, RouteStage, SteerStage,
                                     TxStage, XskStage)

# counter slots (index = slot); forward.h names them EBP_<SLOT_PREFIX>_<NAME>, written into
# each program as #defines from here (with EBP_<SLOT_PREFIX>_SLOTS, their number); steer:
# one per CPU, then "no_cpu"
OUTCOMES: dict[str, tuple[str, ...]] = {
    "route": ("forwarded", "no_neigh", "ttl_exceeded", "local", "blackhole", "frag", "mtu",
              "not_ip", "no_port", "other", "malformed"),
    "bridge": ("forwarded", "flooded", "broadcast", "filtered", "not_port", "runt", "learned",
               "moved", "multi_buffer"),
    "redirect": ("redirected", "no_port", "runt"),
    "tx": ("sent", "runt"),
    "xsk": ("delivered", "no_socket", "other_queue", "no_match"),
}
SLOT_PREFIX = {"route": "RT", "bridge": "BR", "redirect": "RD", "tx": "TX", "xsk": "XSK"}
# at the tc hooks (forward_tc.h): route has its own slots (EBP_TRT_<NAME>); bridge and
# redirect add "peer" (EBP_BR_PEER, EBP_RD_PEER)
OUTCOMES_TC: dict[str, tuple[str, ...]] = {
    "route": ("forwarded", "peer", "neigh", "ttl_exceeded", "local", "blackhole", "frag", "mtu",
              "not_ip", "other", "malformed"),
    "bridge": OUTCOMES["bridge"] + ("peer",),
    "redirect": OUTCOMES["redirect"] + ("peer",),
}
SLOT_PREFIX_TC = {"route": "TRT", "bridge": "BR", "redirect": "RD"}
PREFIX = {"route": "rt", "bridge": "br", "redirect": "rd", "tx": "tx", "steer": "st",
          "xsk": "xsk"}
ROUTE_PORTS_MAX = 1024   # interfaces of the namespace a route stage can redirect to
BRIDGE_PORTS_MAX = 64
STEER_NO_CPU = "no_cpu"

# the structs of forward.h's maps that the control plane fills or reads (written into each
# program ahead of forward.h, the codecs of stages/forward/control.py made from them)
ETH_ALEN = 6
FDB_KEY = Layout("ebp_fdb_key", [Field("mac", "__u8", ETH_ALEN), Field("vlan", "__u16")],
                 "bridge forwarding database: (MAC, VLAN) -> port")
FDB_ENTRY = Layout("ebp_fdb_entry", [
    Field("ifindex", "__u32"), Field("pad", "__u32"),
    Field("seen_ns", "__u64", comment="bpf_ktime_get_ns() (CLOCK_MONOTONIC) when last seen "
                                      "as a source")])
MACS = Layout("ebp_fwd_macs", [Field("dmac", "__u8", ETH_ALEN), Field("smac", "__u8", ETH_ALEN),
                               Field("rewrite", "__u32", comment="0: leave the frame as it is")],
              "redirect stage: MACs to write before sending")
STRUCTS = (FDB_KEY, FDB_ENTRY, MACS)
# forward_tc.h's: a port's flags, and a TC redirect stage's target
TC_PORT_PEER = 1  # ebp_tc_port.flags: a veth whose peer sits in another namespace
TC_PORT = Layout("ebp_tc_port", [Field("ifindex", "__u32"),
                                 Field("flags", "__u32", comment="EBP_TC_PORT_*")],
                 "a TC port: flags (EBP_TC_PORT_*) and the ifindex again (bridge flooding walks "
                 "an array)")
TC_REDIRECT = Layout("ebp_tc_redirect", [
    Field("ifindex", "__u32"), Field("flags", "__u32", comment="EBP_TC_PORT_PEER"),
    Field("dmac", "__u8", ETH_ALEN), Field("smac", "__u8", ETH_ALEN),
    Field("rewrite", "__u32", comment="write dmac/smac before sending")],
    "a TC redirect stage's target (ifindex 0: not set yet, the packet goes on to the kernel)")
STRUCTS_TC = (TC_PORT, TC_REDIRECT)


def c_defines(tc: bool = False) -> dict[str, int]:
    """The numbers forward.h (and with ``tc`` forward_tc.h) reads, from :data:`OUTCOMES`
    (:data:`OUTCOMES_TC`): the slots as ``EBP_<prefix>_<NAME>`` and ``EBP_<prefix>_SLOTS``."""
    d: dict[str, int] = {"EBP_ETH_ALEN": ETH_ALEN}
    for kind, prefix in SLOT_PREFIX.items():
        d.update({f"EBP_{prefix}_{n.upper()}": i for i, n in enumerate(OUTCOMES[kind])})
        d[f"EBP_{prefix}_SLOTS"] = len(OUTCOMES[kind])
    if tc:
        d["EBP_TC_PORT_PEER"] = TC_PORT_PEER
        d["EBP_TC_BRIDGE_PORTS_MAX"] = BRIDGE_PORTS_MAX
        for kind, prefix in SLOT_PREFIX_TC.items():
            for i, n in enumerate(OUTCOMES_TC[kind]):
                # (bridge and redirect: the XDP slots, same numbers, then theirs)
                assert d.setdefault(f"EBP_{prefix}_{n.upper()}", i) == i, (kind, n)
            d.setdefault(f"EBP_{prefix}_SLOTS", len(OUTCOMES_TC[kind]))
    return d


def _header(out: Emit, tc: bool = False) -> None:
    """forward.h (``tc``: forward_tc.h, which includes it) with what it reads from here:
    every forwarding stage includes all of it."""
    for name, value in c_defines(tc).items():
        out.define(name, value)
    for layout in STRUCTS + (STRUCTS_TC if tc else ()):
        out.struct(layout)
    out.include("forward_tc.h" if tc else "forward.h")


# kind -> role of each map (as the manifest keys it) -> suffix of its C name; every kind
# also has "counters" (suffix cnt).  The one place these names are made.
MAP_SUFFIXES: dict[str, dict[str, str]] = {
    "route": {"ports": "ports"},
    "bridge": {"ports": "ports", "fdb": "fdb", "flood": "flood"},  # flood: at TC only
    "redirect": {"ports": "ports", "config": "cfg"},
    "tx": {},
    "steer": {"cpus": "cpus", "config": "sel"},
    "xsk": {"socks": "socks"},
}


def map_names(stage) -> dict[str, str]:
    """role -> C name of a forwarding stage's maps (``<prefix>_<stage>_<suffix>``)."""
    roles = {**MAP_SUFFIXES[stage.kind], "counters": "cnt"}
    return {role: f"{PREFIX[stage.kind]}_{stage.name}_{suffix}" for role, suffix in roles.items()}


def map_name(stage, role: str) -> str:
    """The C name of a forwarding stage's map by its role (ports, fdb, config, cpus,
    socks, counters)."""
    return map_names(stage)[role]


def outcomes(stage, hook: str = "xdp") -> tuple[str, ...]:
    """Names of the stage's counter slots in a program for ``hook``."""
    if isinstance(stage, SteerStage):
        return tuple(f"cpu{c}" for c in stage.cpus) + (STEER_NO_CPU,)
    if hook != "xdp":
        return OUTCOMES_TC[stage.kind]
    return OUTCOMES[stage.kind]


def _counters(stage, out: Emit) -> str:
    cname = map_name(stage, "counters")
    names = outcomes(stage, out.hook)
    out.map(cname, "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count", len(names),
            f"{stage.kind} '{stage.name}': packets and bytes per outcome ({', '.join(names)})",
            stage=stage.name, role="counters", slots=names)
    return cname


def _tc_where(hook: str) -> tuple[str, int]:
    """(the C expression of the interface a TC packet is seen on, whether bpf_redirect_peer
    may be used) for ``hook``: see forward_tc.h."""
    if hook == "tc-ingress":
        return "ctx->ingress_ifindex", 1
    return "ctx->ifindex", 0


def _tc_ports(st, out: Emit, entries: int, what: str) -> str:
    ports = map_name(st, "ports")
    out.map(ports, "BPF_MAP_TYPE_HASH", "__u32", "struct ebp_tc_port", entries,
            f"{st.kind} '{st.name}': {what}, by ifindex (flags: peer target)",
            stage=st.name, role="ports")
    return ports


def _function(idx: int, stage, comment: str, body: list[str]) -> str:
    return "\n".join([
        f"/* {stage.kind} '{stage.name}': {comment} */",
        f"static __always_inline int stage_{idx}_{stage.kind}(EBP_CTX *ctx, struct ebp_pkt *pkt, int malformed)",
        "{", *body, "}"])


def _count_and_return(idx: int, cnt: str, action: str = "act") -> list[str]:
    return [f"\tebp_count(&{cnt}, slot, pkt->len);",
            f"\tif ({action} != EBP_NEXT)",
            f"\t\tEBP_TRACE_SET({idx}, slot);",
            f"\treturn {action};"]


class RouteGen(StageGen):
    kind = "route"

    def emit(self, idx: int, st: RouteStage, out: Emit) -> None:
        if out.hook != "xdp":
            return self._emit_tc(idx, st, out)
        _header(out)
        ports = map_name(st, "ports")
        out.map(ports, "BPF_MAP_TYPE_DEVMAP_HASH", "__u32", "__u32", ROUTE_PORTS_MAX,
                f"route '{st.name}': interfaces that can take redirected frames, by ifindex",
                stage=st.name, role="ports")
        cnt = _counters(st, out)
        out.functions.append(_function(idx, st, "bpf_fib_lookup, then redirect; the kernel "
                                       "takes what it must handle", [
            "\t__u32 slot = EBP_RT_OTHER;",
            f"\tint act = ebp_fwd_route(ctx, pkt, malformed, &{ports}, &slot);",
            "", *_count_and_return(idx, cnt)]))

    def _emit_tc(self, idx: int, st: RouteStage, out: Emit) -> None:
        _header(out, tc=True)
        ports = _tc_ports(st, out, ROUTE_PORTS_MAX, "veths whose peer is in another namespace")
        cnt = _counters(st, out)
        here, peer_ok = _tc_where(out.hook)
        how = ("bpf_redirect_peer into a container's namespace, else bpf_redirect_neigh"
               if peer_ok else "bpf_redirect_neigh")
        out.functions.append(_function(idx, st, f"bpf_fib_lookup, then {how}; the kernel "
                                       "takes what it must handle", [
            "	__u32 slot = EBP_TRT_OTHER;",
            f"	int act = ebp_tc_route(ctx, pkt, malformed, &{ports}, {here}, {peer_ok}, &slot);",
            "", *_count_and_return(idx, cnt)]))

    def features(self, st: RouteStage, protocols) -> Features:
        return Features(ipv4=4 in st.families, ipv6=6 in st.families)


class BridgeGen(StageGen):
    kind = "bridge"

    def emit(self, idx: int, st: BridgeStage, out: Emit) -> None:
        if out.hook != "xdp":
            return self._emit_tc(idx, st, out)
        _header(out)
        ports, fdb = map_name(st, "ports"), map_name(st, "fdb")
        out.map(ports, "BPF_MAP_TYPE_DEVMAP_HASH", "__u32", "__u32", BRIDGE_PORTS_MAX,
                f"bridge '{st.name}': its ports, by ifindex", stage=st.name, role="ports")
        out.map(fdb, "BPF_MAP_TYPE_LRU_HASH", "struct ebp_fdb_key", "struct ebp_fdb_entry",
                st.capacity, f"bridge '{st.name}': (MAC, VLAN) -> port, last seen",
                stage=st.name, role="fdb")
        cnt = _counters(st, out)
        out.functions.append(_function(idx, st, f"ports {', '.join(st.ports)}; ageing {st.ageing} s", [
            "\t__u32 slot = EBP_BR_RUNT;",
            f"\tint act = ebp_fwd_bridge(ctx, pkt, &{ports}, &{fdb}, &{cnt}, "
            f"{st.ageing}ULL * 1000000000ULL, &slot);",
            "", *_count_and_return(idx, cnt)]))


    def _emit_tc(self, idx: int, st: BridgeStage, out: Emit) -> None:
        _header(out, tc=True)
        ports = _tc_ports(st, out, BRIDGE_PORTS_MAX, "its ports")
        by_index, fdb = map_name(st, "flood"), map_name(st, "fdb")
        out.map(by_index, "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_tc_port", len(st.ports),
                f"bridge '{st.name}': its ports in spec order (flooding)", stage=st.name,
                role="flood")
        out.map(fdb, "BPF_MAP_TYPE_LRU_HASH", "struct ebp_fdb_key", "struct ebp_fdb_entry",
                st.capacity, f"bridge '{st.name}': (MAC, VLAN) -> port, last seen",
                stage=st.name, role="fdb")
        cnt = _counters(st, out)
        here, peer_ok = _tc_where(out.hook)
        out.functions.append(_function(idx, st, f"ports {', '.join(st.ports)}; ageing {st.ageing} s", [
            "	__u32 slot = EBP_BR_RUNT;",
            f"	int act = ebp_tc_bridge(ctx, pkt, &{ports}, &{by_index}, {len(st.ports)}, "
            f"&{fdb}, &{cnt}, {st.ageing}ULL * 1000000000ULL, {here}, {peer_ok}, &slot);",
            "", *_count_and_return(idx, cnt)]))


class RedirectGen(StageGen):
    kind = "redirect"

    def emit(self, idx: int, st: RedirectStage, out: Emit) -> None:
        if out.hook != "xdp":
            return self._emit_tc(idx, st, out)
        _header(out)
        ports, cfg = map_name(st, "ports"), map_name(st, "config")
        out.map(ports, "BPF_MAP_TYPE_DEVMAP", "__u32", "__u32", 1,
                f"redirect '{st.name}': slot 0 holds {st.to}", stage=st.name, role="ports")
        out.map(cfg, "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_fwd_macs", 1,
                f"redirect '{st.name}': MACs to write ({st.macs})", stage=st.name, role="config")
        cnt = _counters(st, out)
        out.functions.append(_function(idx, st, f"out of {st.to}", [
            "\tvoid *data = (void *)(long)ctx->data;",
            "\tstruct ethhdr *eth = data;",
            "\tstruct ebp_fwd_macs *m;",
            "\t__u32 zero = 0, slot = EBP_RD_REDIRECTED;",
            "\tint act;",
            "",
            "\tif ((void *)(eth + 1) > (void *)(long)ctx->data_end) {",
            "\t\tslot = EBP_RD_RUNT;",
            "\t\tact = XDP_DROP;",
            "\t} else {",
            f"\t\tact = bpf_redirect_map(&{ports}, 0, XDP_PASS);",
            "\t\tif (act != XDP_REDIRECT)",
            "\t\t\tslot = EBP_RD_NO_PORT; /* not filled (yet): the kernel keeps the frame */",
            f"\t\telse if ((m = bpf_map_lookup_elem(&{cfg}, &zero)) && m->rewrite)",
            "\t\t\tebp_set_macs(eth, m->dmac, m->smac);",
            "\t}",
            *_count_and_return(idx, cnt)]))


    def _emit_tc(self, idx: int, st: RedirectStage, out: Emit) -> None:
        _header(out, tc=True)
        cfg = map_name(st, "config")
        out.map(cfg, "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_tc_redirect", 1,
                f"redirect '{st.name}': {st.to}'s ifindex, whether it is a peer target, MACs "
                f"to write ({st.macs})", stage=st.name, role="config")
        cnt = _counters(st, out)
        _, peer_ok = _tc_where(out.hook)
        out.functions.append(_function(idx, st, f"out of {st.to}"
                                       + (" (into its peer's namespace when a veth's peer "
                                          "is in another one)" if peer_ok else ""), [
            "	void *data = (void *)(long)ctx->data;",
            "	struct ethhdr *eth = data;",
            "	struct ebp_tc_redirect *r;",
            "	__u32 zero = 0, slot = EBP_RD_REDIRECTED;",
            "	int act;",
            "",
            "	if ((void *)(eth + 1) > (void *)(long)ctx->data_end) {",
            "		slot = EBP_RD_RUNT;",
            "		act = TC_ACT_SHOT;",
            f"	}} else if (!(r = bpf_map_lookup_elem(&{cfg}, &zero)) || !r->ifindex) {{",
            "		slot = EBP_RD_NO_PORT; /* not filled (yet): the kernel keeps the packet */",
            "		act = TC_ACT_OK;",
            "	} else {",
            "		if (r->rewrite)",
            "			ebp_set_macs(eth, r->dmac, r->smac);",
            *(["		if (r->flags & EBP_TC_PORT_PEER) {",
               "			slot = EBP_RD_PEER;",
               "			act = bpf_redirect_peer(r->ifindex, 0);",
               "		} else {",
               "			act = bpf_redirect(r->ifindex, 0);",
               "		}"] if peer_ok else ["		act = bpf_redirect(r->ifindex, 0);"]),
            "	}",
            *_count_and_return(idx, cnt)]))


class TxGen(StageGen):
    kind = "tx"

    def emit(self, idx: int, st: TxStage, out: Emit) -> None:
        _header(out)
        cnt = _counters(st, out)
        out.functions.append(_function(idx, st, "back out of the ingress port"
                                       + (", MACs swapped" if st.swap_macs else ""), [
            "\tstruct ethhdr *eth = (void *)(long)ctx->data;",
            "\t__u32 slot = EBP_TX_SENT;",
            "\tint act = XDP_TX;",
            "",
            "\tif ((void *)(eth + 1) > (void *)(long)ctx->data_end) {",
            "\t\tslot = EBP_TX_RUNT;",
            "\t\tact = XDP_DROP;",
            "\t}",
            *(["\telse", "\t\tebp_swap_macs(eth);"] if st.swap_macs else []),
            *_count_and_return(idx, cnt)]))


class SteerGen(StageGen):
    kind = "steer"

    def emit(self, idx: int, st: SteerStage, out: Emit) -> None:
        _header(out)
        cpus, sel = map_name(st, "cpus"), map_name(st, "config")
        n = len(st.cpus)
        out.map(cpus, "BPF_MAP_TYPE_CPUMAP", "__u32", "struct bpf_cpumap_val",
                max(st.cpus) + 1, f"steer '{st.name}': CPUs {st.cpus}, queue {st.queue_size}",
                stage=st.name, role="cpus")
        out.map(sel, "BPF_MAP_TYPE_ARRAY", "__u32", "__u32", n,
                f"steer '{st.name}': hash bucket -> CPU", stage=st.name, role="config")
        cnt = _counters(st, out)
        out.functions.append(_function(idx, st, f"flows spread over CPUs {list(st.cpus)}", [
            f"\t__u32 bucket = ebp_flow_hash(pkt) % {n}, slot = bucket;",
            f"\t__u32 *cpu = bpf_map_lookup_elem(&{sel}, &bucket);",
            f"\tint act = cpu ? bpf_redirect_map(&{cpus}, *cpu, XDP_PASS) : XDP_PASS;",
            "",
            "\tif (act != XDP_REDIRECT)",
            f"\t\tslot = {n}; /* no CPU entry: the kernel runs it here */",
            *_count_and_return(idx, cnt)]))

    def features(self, st: SteerStage, protocols) -> Features:
        listed = set(protocols)
        return Features(ipv4="ipv4" in listed, ipv6="ipv6" in listed, tcp="tcp" in listed,
                        udp="udp" in listed)


class XskGen(StageGen):
    kind = "xsk"

    def emit(self, idx: int, st: XskStage, out: Emit) -> None:
        _header(out)
        socks = map_name(st, "socks")
        out.map(socks, "BPF_MAP_TYPE_XSKMAP", "__u32", "__u32", st.queue + 1,
                f"xsk '{st.name}': AF_XDP socket of rx queue {st.queue}", stage=st.name,
                role="socks")
        cnt = _counters(st, out)
        match = " || ".join(f"({_match_expr(m)})" for m in st.match) or "1"
        out.functions.append(_function(idx, st, f"rx queue {st.queue} to AF_XDP", [
            f"\t__u32 q = {st.queue}, slot = EBP_XSK_DELIVERED;",
            "\tint act = EBP_NEXT;",
            "",
            "\tif (ctx->rx_queue_index != q)",
            "\t\tslot = EBP_XSK_OTHER_QUEUE;",
            f"\telse if (malformed || !({match}))",
            "\t\tslot = EBP_XSK_NO_MATCH;",
            f"\telse if (!bpf_map_lookup_elem(&{socks}, &q))",
            "\t\tslot = EBP_XSK_NO_SOCKET;",
            "\telse",
            f"\t\tact = bpf_redirect_map(&{socks}, q, XDP_PASS);",
            *_count_and_return(idx, cnt)]))

    def features(self, st: XskStage, protocols) -> Features:
        listed = set(protocols)
        ip = any(m.proto is not None or m.dport is not None for m in st.match)
        ports = any(m.dport is not None for m in st.match)
        return Features(ipv4=ip and "ipv4" in listed, ipv6=ip and "ipv6" in listed,
                        tcp=ports and "tcp" in listed, udp=ports and "udp" in listed)


def _match_expr(m) -> str:
    terms = []
    if m.ethertype is not None:
        terms.append(f"pkt->eth_proto == {m.ethertype:#06x}")
    if m.proto is not None:
        terms.append(f"pkt->family && pkt->proto == {m.proto}")
    if m.dport is not None:
        terms.append(f"(pkt->flags & EBP_PKT_L4) && pkt->dport == {m.dport}")
    return " && ".join(terms)


GENERATORS = {g.kind: g for g in (RouteGen(), BridgeGen(), RedirectGen(), TxGen(), SteerGen(),
                                  XskGen())}
