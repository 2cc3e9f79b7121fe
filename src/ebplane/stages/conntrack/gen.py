"""C for one conntrack stage (``conntrack.h`` holds the reviewed part)."""

from __future__ import annotations

from ebplane.codegen.layout import Field, Layout
from ebplane.codegen.pipeline import Emit, Features, StageGen
from ebplane.spec.rules import STATES
from ebplane.stages.conntrack.spec import ConntrackStage

# The numbers conntrack.h works with, defined here once and written into each program as
# #defines (the header has none of its own):
# packet states (ebp_pkt.ct_state, what `state:` rules match): EBP_CT_<STATE>
PACKET_STATES: tuple[str, ...] = tuple(sorted(STATES, key=STATES.get))
# counter slots: one per packet state, then these (EBP_CT_CNT_<NAME>), EBP_CT_NCOUNTERS
EVENTS: tuple[str, ...] = ("full",        # a new connection found the table full
                           "collected",   # expired entries the collector deleted
                           "expired")     # expired entries a packet of their tuple deleted
COUNTERS: tuple[str, ...] = PACKET_STATES + EVENTS
# states of a table entry (value = index; 0 is no entry): EBP_CTS_<STATE>.  conntrack.h
# compares them by order (FIN_WAIT and after: closing)
ENTRY_STATES: tuple[str, ...] = ("none", "syn_sent", "syn_recv", "established", "fin_wait",
                                 "close", "udp", "icmp")


def c_defines() -> dict[str, int]:
    """The #defines conntrack.h reads, from the tables above."""
    d = {f"EBP_CT_{n.upper()}": STATES[n] for n in PACKET_STATES}
    d.update({f"EBP_CT_CNT_{n.upper()}": COUNTERS.index(n) for n in EVENTS})
    d["EBP_CT_NCOUNTERS"] = len(COUNTERS)
    d.update({f"EBP_CTS_{n.upper()}": i for i, n in enumerate(ENTRY_STATES) if i})
    return d

# the key and value of the table (the control plane decodes them for stats), written into
# each program ahead of conntrack.h
CT_KEY = Layout("ebp_ct_key", [
    Field("src", "__u32", 4, "IPv4: word 0", raw=True),
    Field("dst", "__u32", 4, raw=True),
    Field("sport", "__u16", comment="host order; ICMP echo: the identifier in both"),
    Field("dport", "__u16"),
    Field("family", "__u8"),
    Field("proto", "__u8"),
    Field("pad", "__u16")], "a connection: the tuple of its first packet")
CT_ENTRY = Layout("ebp_ct_entry", [
    Field("seen_ns", "__u64", comment="last packet, bpf_ktime_get_ns()"),
    Field("created_ns", "__u64"),
    Field("packets", "__u64", 2, "per direction: original, reply"),
    Field("timeout_ns", "__u64", comment="idle time after which the entry is expired "
                                         "(from its state)"),
    Field("state", "__u8", comment="EBP_CTS_*"),
    Field("replied", "__u8", comment="a reply-direction packet was seen"),
    Field("fin", "__u8", comment="bit 0: FIN from the originator, bit 1: from the responder"),
    Field("pad", "__u8", 5)], "a connection's state")

# the spec's `timeouts:` keys -> the fields of ebp_ct_timeouts (seconds without packets,
# per entry state), compiled into each stage
TIMEOUT_FIELDS = {"tcp_syn": "syn", "tcp_established": "established", "tcp_fin": "fin",
                  "tcp_close": "close", "udp": "udp", "udp_replied": "udp_replied",
                  "icmp": "icmp"}
CT_TIMEOUTS = Layout("ebp_ct_timeouts", [Field(n, "__u64") for n in TIMEOUT_FIELDS.values()],
                     "seconds without packets, per entry state (the stage's timeouts:)")
LAYOUTS = (CT_KEY, CT_ENTRY, CT_TIMEOUTS)


def map_names(stage: str) -> dict[str, str]:
    """role -> C name of a conntrack stage's maps (the one place these names are made)."""
    t = f"ct_{stage}"
    return {"table": f"{t}_tab", "config": f"{t}_cfg", "counters": f"{t}_cnt"}


class ConntrackGen(StageGen):
    kind = "conntrack"

    def emit(self, idx: int, st: ConntrackStage, out: Emit) -> None:
        for name, value in c_defines().items():
            out.define(name, value)
        for layout in LAYOUTS:
            out.struct(layout)
        out.include("conntrack.h")
        n = map_names(st.name)
        out.map(n["table"], "BPF_MAP_TYPE_HASH", "struct ebp_ct_key", "struct ebp_ct_entry",
                st.size, f"conntrack '{st.name}': connections by their original tuple"
                + (", preallocated" if st.prealloc else ""),
                stage=st.name, role="table", flags=None if st.prealloc else "BPF_F_NO_PREALLOC")
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
