"""C for one mirror stage (``mirror.h`` holds the reviewed part), and the one place its map
names, counter slots and config struct (a ``Layout``, written into each program ahead of
the header; the control plane packs it with ``Packed`` of the same object) are defined."""

from __future__ import annotations

from ebplane.codegen.layout import Field, Layout
from ebplane.codegen.pipeline import Emit, Features, StageGen
from ebplane.stages.forward.gen import _match_expr
from ebplane.stages.mirror.spec import MirrorStage

# counter slots (EBP_MR_<OUTCOME> in mirror.h)
OUTCOMES: tuple[str, ...] = ("mirrored", "not_selected", "not_sampled", "no_port", "failed",
                             "multi_buffer")

CFG = Layout("ebp_mirror_cfg", [
    Field("to", "__u32", comment="ifindex of the mirror port (0: not set)"),
    Field("out", "__u32", comment="XDP: ifindex the original leaves by")],
    "the stage's config (set by the control plane)")


def c_defines() -> dict[str, int]:
    """The #defines mirror.h reads: its counter slots."""
    d = {f"EBP_MR_{n.upper()}": i for i, n in enumerate(OUTCOMES)}
    d["EBP_MR_NSLOTS"] = len(OUTCOMES)
    return d


def map_names(stage: str) -> dict[str, str]:
    """role -> C name of a mirror stage's maps (``ports``: XDP only)."""
    t = f"mr_{stage}"
    return {"ports": f"{t}_ports", "config": f"{t}_cfg", "counters": f"{t}_cnt"}


def selected_expr(st: MirrorStage) -> str:
    return " || ".join(f"({_match_expr(m)})" for m in st.match) or "1"


class MirrorGen(StageGen):
    kind = "mirror"

    def emit(self, idx: int, st: MirrorStage, out: Emit) -> None:
        xdp = out.hook == "xdp"
        for name, value in c_defines().items():
            out.define(name, value)
        out.struct(CFG)
        out.include("mirror.h")
        n = map_names(st.name)
        if xdp:
            out.map(n["ports"], "BPF_MAP_TYPE_DEVMAP_HASH", "__u32", "__u32", 2,
                    f"mirror '{st.name}': {st.to} (the copy) and {st.out} (the original)",
                    stage=st.name, role="ports")
        out.map(n["config"], "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_mirror_cfg", 1,
                f"mirror '{st.name}': ifindexes of {st.to}" + (f" and {st.out}" if xdp else ""),
                stage=st.name, role="config")
        out.map(n["counters"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                len(OUTCOMES), f"mirror '{st.name}': {', '.join(OUTCOMES)}",
                stage=st.name, role="counters", slots=OUTCOMES)
        sel = selected_expr(st)
        call = (f"ebp_mirror_xdp(ctx, selected, {st.sample}, &{n['ports']}, &{n['config']}, &slot)"
                if xdp else f"ebp_mirror_tc(ctx, selected, {st.sample}, &{n['config']}, &slot)")
        what = f"to {st.to}" + (f", original out of {st.out}" if xdp else ", original goes on")
        out.functions.append("\n".join([
            f"/* mirror '{st.name}': a copy of 1 in {st.sample} selected packets {what} */",
            f"static __always_inline int stage_{idx}_mirror(EBP_CTX *ctx, struct ebp_pkt *pkt, "
            "int malformed)",
            "{",
            f"\t__u32 slot = {OUTCOMES.index('not_selected')}; /* EBP_MR_NOT_SELECTED */",
            f"\tint selected = !malformed && ({sel});",
            f"\tint act = {call};",
            "",
            f"\tebp_count(&{n['counters']}, slot, pkt->len);",
            "\tif (act != EBP_NEXT)",
            f"\t\tEBP_TRACE_SET({idx}, slot);",
            "\treturn act;",
            "}"]))

    def features(self, st: MirrorStage, protocols) -> Features:
        listed = set(protocols)
        ip = any(m.proto is not None or m.dport is not None for m in st.match)
        ports = any(m.dport is not None for m in st.match)
        return Features(ipv4=ip and "ipv4" in listed, ipv6=ip and "ipv6" in listed,
                        tcp=ports and "tcp" in listed, udp=ports and "udp" in listed)


GENERATORS = {"mirror": MirrorGen()}
