"""C for one count stage: one per-CPU counter map, slots :data:`COUNTERS`."""

from __future__ import annotations

from ebplane.codegen.pipeline import Emit, StageGen
from ebplane.stages.count.spec import CountStage

# counter slots of map cnt_<stage> (the C below indexes them by name through this tuple)
COUNTERS: tuple[str, ...] = ("all", "ipv4", "ipv6", "other")


def map_names(stage: str) -> dict[str, str]:
    """role -> C name of a count stage's maps (the one place these names are made)."""
    return {"counters": f"cnt_{stage}"}


class CountGen(StageGen):
    kind = "count"

    def emit(self, idx: int, st: CountStage, out: Emit) -> None:
        cname = map_names(st.name)["counters"]
        slot = {name: i for i, name in enumerate(COUNTERS)}
        out.map(cname, "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count", len(COUNTERS),
                f"count '{st.name}': {', '.join(COUNTERS)}", stage=st.name, role="counters",
                slots=COUNTERS)
        out.functions.append("\n".join([
            f"/* count '{st.name}': every packet reaching it, and by family */",
            f"static __always_inline int stage_{idx}_count(EBP_CTX *ctx, struct ebp_pkt *pkt, int malformed)",
            "{",
            f"\tebp_count(&{cname}, {slot['all']}, pkt->len);",
            f"\tebp_count(&{cname}, pkt->eth_proto == ETH_P_IP ? {slot['ipv4']} : "
            f"pkt->eth_proto == ETH_P_IPV6 ? {slot['ipv6']} : {slot['other']}, pkt->len);",
            "\treturn EBP_NEXT;",
            "}",
        ]))


GENERATORS = {"count": CountGen()}
