"""C for one conntrack stage (``conntrack.h`` holds the reviewed part)."""

from __future__ import annotations

from ebplane.codegen.pipeline import Emit, Features, StageGen
from ebplane.stages.conntrack.spec import ConntrackStage

# counter slots (conntrack.h: one per packet state, then EBP_CT_CNT_*)
COUNTERS: tuple[str, ...] = ("untracked", "new", "established", "related", "invalid",
                             "full", "collected", "expired")
TIMEOUT_FIELDS = {"tcp_syn": "syn", "tcp_established": "established", "tcp_fin": "fin",
                  "tcp_close": "close", "udp": "udp", "udp_replied": "udp_replied",
                  "icmp": "icmp"}


def map_names(stage: str) -> dict[str, str]:
    """role -> C name of a conntrack stage's maps (the one place these names are made)."""
    t = f"ct_{stage}"
    return {"table": f"{t}_tab", "config": f"{t}_cfg", "counters": f"{t}_cnt"}


class ConntrackGen(StageGen):
    kind = "conntrack"

    def emit(self, idx: int, st: ConntrackStage, out: Emit) -> None:
        out.include("conntrack.h")
        n = map_names(st.name)
        out.map(n["table"], "BPF_MAP_TYPE_HASH", "struct ebp_ct_key", "struct ebp_ct_entry",
                st.size, f"conntrack '{st.name}': connections by their original tuple",
                stage=st.name, role="table", flags="BPF_F_NO_PREALLOC")
        out.map(n["config"], "BPF_MAP_TYPE_ARRAY", "__u32", "__u64", 1,
                f"conntrack '{st.name}': time of the last collection of expired entries",
                stage=st.name, role="config")
        out.map(n["counters"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                len(COUNTERS), f"conntrack '{st.name}': {', '.join(COUNTERS)}",
                stage=st.name, role="counters", slots=COUNTERS)
        to = ", ".join(f".{TIMEOUT_FIELDS[k]} = {v}" for k, v in st.timeouts)
        full = "EBP_V_DROP" if st.when_full == "drop" else "EBP_NEXT"
        out.functions.append("\n".join([
            f"/* conntrack '{st.name}': sets pkt->ct_state; table of {st.size} connections, "
            f"when full: {st.when_full} */",
            f"static __always_inline int stage_{idx}_conntrack(EBP_CTX *ctx, struct ebp_pkt *pkt, "
            "int malformed)",
            "{",
            f"\tconst struct ebp_ct_timeouts to = {{ {to} }};",
            "\t__u32 zero = 0;",
            f"\t__u64 *gc_last = bpf_map_lookup_elem(&{n['config']}, &zero);",
            "\tint refused = 0;",
            "",
            "\tif (malformed || !gc_last) {",
            "\t\tpkt->ct_state = EBP_CT_UNTRACKED;",
            "\t} else {",
            f"\t\tpkt->ct_state = ebp_ct_track(ctx, pkt, &{n['table']}, &to, gc_last, "
            f"&{n['counters']}, &refused);",
            "\t}",
            f"\tebp_count(&{n['counters']}, pkt->ct_state, pkt->len);",
            "\tif (refused) {",
            f"\t\tEBP_TRACE_SET({idx}, {COUNTERS.index('full')});" if full != "EBP_NEXT" else "",
            f"\t\treturn {full};",
            "\t}",
            "\treturn EBP_NEXT;",
            "}",
        ]))

    def features(self, st: ConntrackStage, protocols) -> Features:
        listed = set(protocols)
        return Features(ipv4="ipv4" in listed, ipv6="ipv6" in listed, tcp="tcp" in listed,
                        udp="udp" in listed)


GENERATORS = {"conntrack": ConntrackGen()}
