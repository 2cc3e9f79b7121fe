"""C for one balancer stage (``balancer.h`` holds the reviewed part), and the numbers and
names the control plane shares with it: map names (:func:`map_names`), counter slots
(:data:`COUNTERS`) and backend states, defined here once and written into each program as
#defines (:func:`c_defines`; the header has none of its own), and the structs of its maps
(:data:`LAYOUTS`), written into each program from their ``Layout`` (the control plane packs
them with ``Packed`` of the same objects)."""

from __future__ import annotations

import ipaddress
import struct

from ebplane.codegen.layout import Field, Layout
from ebplane.codegen.pipeline import Emit, Features, StageGen
from ebplane.codegen.stagefn import counters_map, stage_function
from ebplane.stages.balancer.spec import BalancerStage
from ebplane.stages.filter.gen import FRAG_TABLE, frag_table

# counter slots of a balancer stage (EBP_LB_<NAME>, EBP_LB_NCOUNTERS)
COUNTERS: tuple[str, ...] = (
    "new",               # a flow's first packet: Maglev chose its backend
    "known",             # a packet of a flow in the connection table
    "rehashed",          # a flow whose backend was removed: chosen anew
    "frag_first",        # a first fragment: its backend recorded
    "frag_followed",     # a later fragment sent after its first
    "icmp_too_big",      # an ICMP too-big to a VIP, sent to its flow's backend
    "too_big_answered",  # too big once encapsulated: answered with ICMP
    "too_big_stack",     # too big once encapsulated, IPv4 without DF: to the stack
    "no_backend",        # a VIP without backend up: dropped
    "truncated",         # a VIP packet shorter than its IP length: dropped
    "unsupported",       # a VIP packet behind a VLAN tag or so: to the stack
    "tx",                # encapsulated, out of the ingress interface (XDP_TX)
    "redirect",          # encapsulated, redirected to the FIB's egress interface
    "route_stack",       # encapsulated, the FIB had no answer: to the stack
)
# ebp_lb_backend.state (EBP_LB_<STATE>); a slot is free when unused
STATES: tuple[str, ...] = ("unused", "up", "down")
STATE_UNUSED, STATE_UP, STATE_DOWN = range(3)
STATE_NAMES = {STATE_UP: "up", STATE_DOWN: "down"}
# a Maglev entry of a VIP without backends up (EBP_LB_EMPTY)
EMPTY = 0xFFFFFFFF
# encapsulations (EBP_LB_ENCAP_<NAME>)
ENCAPS: dict[str, int] = {"ipip": 0, "gue": 1}


# the structs of the stage's maps and its compiled-in parameters, written into each program
# ahead of balancer.h; addresses are 4 words (IPv4: word 0, the others 0)
VIP_KEY = Layout("ebp_lb_vip_key", [
    Field("addr", "__u32", 4, "IPv4: word 0", raw=True),
    Field("port", "__u16", comment="host order"),
    Field("proto", "__u8"),
    Field("family", "__u8")], "a VIP: the key of the vips map")
VIP = Layout("ebp_lb_vip", [
    Field("index", "__u32", comment="the VIP's slot: its Maglev tables and half index"),
    Field("pad", "__u32")])
BACKEND = Layout("ebp_lb_backend", [
    Field("addr", "__u32", 4, raw=True),
    Field("gen", "__u32",
          comment="bumped when the slot is freed: connection entries of it are stale"),
    Field("weight", "__u16"),
    Field("family", "__u8"),
    Field("state", "__u8", comment="EBP_LB_UNUSED, _UP, _DOWN"),
    Field("vip", "__u32", comment="the VIP it serves (its index)")], "a backend slot")
FLOW = Layout("ebp_lb_flow", [
    Field("src", "__u32", 4, raw=True),
    Field("dst", "__u32", 4, raw=True),
    Field("sport", "__u16"),
    Field("dport", "__u16"),
    Field("family", "__u8"),
    Field("proto", "__u8"),
    Field("pad", "__u16")], "a flow: the key of the connection table")
CONN = Layout("ebp_lb_conn", [Field("backend", "__u32"), Field("gen", "__u32")],
              "a flow's backend slot and the slot's generation when it was chosen")
PARAMS = Layout("ebp_lb_params", [
    Field("table_size", "__u32", comment="M, a prime"),
    Field("mtu", "__u32", comment="largest encapsulated packet (outer IP header included)"),
    Field("src4", "__u32", comment="outer source, IPv4 (network order)"),
    Field("src6", "__u32", 4),
    Field("gue_port", "__u16", comment="host order"),
    Field("encap", "__u8", comment="EBP_LB_ENCAP_*"),
    Field("stage", "__u8", comment="the stage's index (fragment table key)")],
    "what the generator compiles into the stage (from the spec)")
LAYOUTS = (VIP_KEY, VIP, BACKEND, FLOW, CONN, PARAMS)


def c_defines() -> dict[str, int]:
    """The #defines balancer.h reads, from the tables above."""
    d = {f"EBP_LB_{n.upper()}": i for i, n in enumerate(COUNTERS)}
    d["EBP_LB_NCOUNTERS"] = len(COUNTERS)
    d["EBP_LB_EMPTY"] = EMPTY
    d.update({f"EBP_LB_{n.upper()}": i for i, n in enumerate(STATES)})
    d.update({f"EBP_LB_ENCAP_{n.upper()}": v for n, v in ENCAPS.items()})
    return d


def map_names(stage: str) -> dict[str, str]:
    """role -> C name of a balancer stage's maps (the one place these names are made)."""
    t = f"lb_{stage}"
    return {"vips": f"{t}_vips", "halves": f"{t}_half", "table": f"{t}_tab",
            "backends": f"{t}_be", "connections": f"{t}_conn", "counters": f"{t}_cnt",
            "flows": f"{t}_flows"}


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed.ljust(16, b"\0")


def _c_words(address: str | None, n: int) -> str:
    raw = packed(address) if address else b"\0" * 16
    words = struct.unpack("<4I", raw)[:n]
    return ", ".join(f"{w:#x}" for w in words)


class BalancerGen(StageGen):
    kind = "balancer"

    def emit(self, idx: int, st: BalancerStage, out: Emit) -> None:
        for name, value in c_defines().items():
            out.define(name, value)
        for layout in LAYOUTS:
            out.struct(layout)
        out.include("balancer.h")
        n = map_names(st.name)
        # a re-apply reuses each map whose definition is unchanged; the control plane keeps
        # their contents only when all of the stage's maps were reused (runtime/balancer.py)
        out.map(n["vips"], "BPF_MAP_TYPE_HASH", "struct ebp_lb_vip_key", "struct ebp_lb_vip",
                len(st.vips), f"balancer '{st.name}': VIP (address, port, protocol) -> its index",
                stage=st.name, role="vips")
        out.map(n["halves"], "BPF_MAP_TYPE_ARRAY", "__u32", "__u32", len(st.vips),
                f"balancer '{st.name}': per VIP, the half of its Maglev table in use",
                stage=st.name, role="halves")
        out.map(n["table"], "BPF_MAP_TYPE_ARRAY", "__u32", "__u32",
                len(st.vips) * 2 * st.table_size,
                f"balancer '{st.name}': Maglev tables, (VIP * 2 + half) * {st.table_size} + "
                "hash mod M -> backend slot", stage=st.name, role="table")
        out.map(n["backends"], "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_lb_backend",
                st.max_backends, f"balancer '{st.name}': backend slots",
                stage=st.name, role="backends")
        out.map(n["connections"], "BPF_MAP_TYPE_LRU_HASH", "struct ebp_lb_flow",
                "struct ebp_lb_conn", st.connections,
                f"balancer '{st.name}': flow -> backend (LRU)",
                stage=st.name, role="connections")
        counters_map(out, n["counters"], st, COUNTERS)
        out.map(n["flows"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                st.max_backends, f"balancer '{st.name}': new flows per backend slot",
                stage=st.name, role="flows")
        frag_table(out)  # filter.h's (with its #defines and structs): balancer.h includes it
        src4 = _c_words(st.source4, 1)
        src6 = _c_words(st.source6, 4)
        out.functions.append(stage_function(
            idx, st, f"{len(st.vips)} VIPs, Maglev M = {st.table_size}, {st.encap} encapsulation, "
            f"MTU {st.mtu}", [
            "\tconst struct ebp_lb_params p = {",
            f"\t\t.table_size = {st.table_size}, .mtu = {st.mtu}, .src4 = {src4},",
            f"\t\t.src6 = {{ {src6} }}, .gue_port = {st.gue_port}, "
            f".encap = {ENCAPS[st.encap]}, .stage = {idx},",
            "\t};",
            "\t__u32 outcome = EBP_LB_NCOUNTERS;",
            f"\tint action = ebp_lb_run(ctx, pkt, malformed, &p, &{n['vips']}, &{n['halves']}, "
            f"&{n['table']}, &{n['backends']}, &{n['connections']}, &{FRAG_TABLE}, "
            f"&{n['counters']}, &{n['flows']}, &outcome);",
            "",
            "\tif (action != EBP_NEXT)",
            f"\t\tEBP_TRACE_SET({idx}, outcome);",
            "\treturn action;",
        ]))

    def features(self, st: BalancerStage, protocols) -> Features:
        listed = set(protocols)
        fams = {v.family for v in st.vips}
        protos = {v.proto for v in st.vips}
        return Features(ipv4=4 in fams and "ipv4" in listed, ipv6=6 in fams and "ipv6" in listed,
                        tcp="tcp" in protos and "tcp" in listed,
                        udp="udp" in protos and "udp" in listed)


GENERATORS = {"balancer": BalancerGen()}
