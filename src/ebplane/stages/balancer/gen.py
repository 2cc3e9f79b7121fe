"""C for one balancer stage (``balancer.h`` holds the reviewed part), and the layouts the
control plane shares with it: map names (:func:`map_names`), counter slots
(:data:`COUNTERS`, read from balancer.h's enum) and map key/value codecs (:data:`LAYOUTS`,
checked against the loaded maps' sizes by the tests)."""

from __future__ import annotations

import ipaddress
import re
import struct
from pathlib import Path

from ebplane.codegen.pipeline import Emit, Features, StageGen, register_generator
from ebplane.kernel.codec import Struct
from ebplane.spec.balancer import BalancerStage
from ebplane.stages.filter.gen import FRAG_TABLE

HEADER = Path(__file__).with_name("balancer.h")


def _counters() -> tuple[str, ...]:
    """The slots of enum ebp_lb_counter, in order, lower-case without the prefix."""
    text = HEADER.read_text()
    body = re.search(r"enum ebp_lb_counter \{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = [n.strip() for n in body.split(",") if n.strip()]
    assert names[-1] == "EBP_LB_NCOUNTERS"
    return tuple(n.removeprefix("EBP_LB_").lower() for n in names[:-1])


COUNTERS: tuple[str, ...] = _counters()

# key/value layouts of the stage's maps (struct ebp_lb_* in balancer.h)
VIP_KEY = Struct("ebp_lb_vip_key", [("addr", "16s"), ("port", "H"), ("proto", "B"),
                                    ("family", "B")])
VIP = Struct("ebp_lb_vip", [("index", "I"), ("pad", "I")])
BACKEND = Struct("ebp_lb_backend", [("addr", "16s"), ("gen", "I"), ("weight", "H"),
                                    ("family", "B"), ("state", "B"), ("vip", "I")])
FLOW = Struct("ebp_lb_flow", [("src", "16s"), ("dst", "16s"), ("sport", "H"), ("dport", "H"),
                              ("family", "B"), ("proto", "B"), ("pad", "H")])
CONN = Struct("ebp_lb_conn", [("backend", "I"), ("gen", "I")])
LAYOUTS = {"ebp_lb_vip_key": VIP_KEY, "ebp_lb_vip": VIP, "ebp_lb_backend": BACKEND,
           "ebp_lb_flow": FLOW, "ebp_lb_conn": CONN}

STATE_UNUSED, STATE_UP, STATE_DOWN = 0, 1, 2
STATE_NAMES = {STATE_UP: "up", STATE_DOWN: "down"}
ENCAPS = {"ipip": 0, "gue": 1}


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
        out.map(n["counters"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                len(COUNTERS), f"balancer '{st.name}': {', '.join(COUNTERS)}",
                stage=st.name, role="counters")
        out.map(n["flows"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                st.max_backends, f"balancer '{st.name}': new flows per backend slot",
                stage=st.name, role="flows")
        if not any(m.cname == FRAG_TABLE for m in out.prog.maps):
            out.map(FRAG_TABLE, "BPF_MAP_TYPE_LRU_HASH", "struct ebp_frag_key",
                    "struct ebp_frag_val", "EBP_FRAG_TABLE_SIZE",
                    "IP fragments: the decision of each datagram's first fragment, per stage",
                    stage=None, role="frags")
        src4 = _c_words(st.source4, 1)
        src6 = _c_words(st.source6, 4)
        out.functions.append("\n".join([
            f"/* balancer '{st.name}': {len(st.vips)} VIPs, Maglev M = {st.table_size}, "
            f"{st.encap} encapsulation, MTU {st.mtu} */",
            f"static __always_inline int stage_{idx}_balancer(EBP_CTX *ctx, struct ebp_pkt *pkt, "
            "int malformed)",
            "{",
            "\tconst struct ebp_lb_params p = {",
            f"\t\t.table_size = {st.table_size}, .mtu = {st.mtu}, .src4 = {src4},",
            f"\t\t.src6 = {{ {src6} }}, .gue_port = {st.gue_port}, "
            f".encap = {ENCAPS[st.encap]}, .stage = {idx},",
            "\t};",
            f"\treturn ebp_lb_run(ctx, pkt, malformed, &p, &{n['vips']}, &{n['halves']}, "
            f"&{n['table']}, &{n['backends']}, &{n['connections']}, &{FRAG_TABLE}, "
            f"&{n['counters']}, &{n['flows']});",
            "}",
        ]))

    def features(self, st: BalancerStage, protocols) -> Features:
        listed = set(protocols)
        fams = {v.family for v in st.vips}
        protos = {v.proto for v in st.vips}
        return Features(ipv4=4 in fams and "ipv4" in listed, ipv6=6 in fams and "ipv6" in listed,
                        tcp="tcp" in protos and "tcp" in listed,
                        udp="udp" in protos and "udp" in listed)


register_generator(BalancerGen())
