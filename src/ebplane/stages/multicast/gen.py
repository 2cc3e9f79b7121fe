"""C for one multicast stage (``multicast.h`` holds the reviewed part), and the one place
its map names, counter slots, numbers and struct layouts are defined (the structs as
``Layout``s, written into each program ahead of the header; the control plane packs them
with ``Packed`` of the same objects)."""

from __future__ import annotations

from ebplane.codegen.layout import Field, Layout
from ebplane.codegen.pipeline import Emit, Features, MapRole, StageGen
from ebplane.stages.multicast.spec import MC_ADDRESSES_MAX, MC_MEMBERS_MAX, MulticastStage

# counter slots (EBP_MC_<OUTCOME> in multicast.h)
OUTCOMES: tuple[str, ...] = ("sent", "no_group", "runt", "multi_buffer")
KIND_MAC, KIND_IPV4, KIND_IPV6 = 0, 4, 6
MEMBERS_MAX = MC_MEMBERS_MAX
SNOOP_RING_BYTES = 1 << 16
SNOOP_BYTES = 256  # of a frame a snooping stage copies (EBP_MC_SNOOP_BYTES)

NAME_BYTES = 16  # of a group's name in the names map

KEY = Layout("ebp_mc_key", [
    Field("kind", "__u8", comment="EBP_MC_KIND_*"),
    Field("pad", "__u8", 3),
    Field("addr", "__u8", 16, "MAC: 6 bytes, IPv4: 4, IPv6: 16; the rest zero")],
    "a group address: the key of the addresses map")
NAME = Layout("ebp_mc_name", [Field("name", "__u8", NAME_BYTES)],
              "control plane only: the name of the group in each slot (\"\" for a free slot)")
SNOOP_REC = Layout("ebp_mc_snoop_rec", [
    Field("ifindex", "__u32", comment="ingress port"),
    Field("len", "__u32", comment="bytes of data[] that hold the frame"),
    Field("data", "__u8", SNOOP_BYTES)],
    "snooping: the head of an IGMP or MLD frame (or of other ICMPv6 to a multicast "
    "address), for the control plane that learns members")
LAYOUTS = (KEY, NAME, SNOOP_REC)


def c_defines() -> dict[str, int]:
    """The #defines multicast.h reads, from the tables above."""
    d = {f"EBP_MC_{n.upper()}": i for i, n in enumerate(OUTCOMES)}
    d["EBP_MC_NSLOTS"] = len(OUTCOMES)
    d.update({"EBP_MC_KIND_MAC": KIND_MAC, "EBP_MC_KIND_IPV4": KIND_IPV4,
              "EBP_MC_KIND_IPV6": KIND_IPV6, "EBP_MC_SNOOP_BYTES": SNOOP_BYTES,
              "EBP_MC_MEMBERS_MAX": MEMBERS_MAX})
    return d


def map_names(stage: str) -> dict[str, str]:
    """role -> C name of a multicast stage's maps."""
    t = f"mc_{stage}"
    return {"groups": f"{t}_grp", "addresses": f"{t}_addr", "names": f"{t}_names",
            "counters": f"{t}_cnt", "group_counters": f"{t}_gcnt", "snoop": f"{t}_snoop"}


def member_map_type(hook: str) -> str:
    """The map type of a group's members: XDP broadcasts through a DEVMAP_HASH (keyed by
    ifindex), TC walks an ARRAY of ifindexes with bpf_clone_redirect."""
    return "BPF_MAP_TYPE_DEVMAP_HASH" if hook == "xdp" else "BPF_MAP_TYPE_ARRAY"


def member_struct(stage: str) -> str:
    """The C struct of a group's member map (the inner map template of ``groups``)."""
    return f"ebp_mc_{stage}_members"


class MulticastGen(StageGen):
    kind = "multicast"

    def emit(self, idx: int, st: MulticastStage, out: Emit) -> None:
        for name, value in c_defines().items():
            out.define(name, value)
        for layout in LAYOUTS:
            out.struct(layout)
        out.include("multicast.h")
        n = map_names(st.name)
        inner = member_struct(st.name)
        xdp = out.hook == "xdp"
        out.maps.append("\n".join([
            f"/* multicast '{st.name}': a group's member ports (inner map; "
            + ("by ifindex) */" if xdp else "index -> ifindex, 0: the end) */"),
            f"struct {inner} {{", f"\t__uint(type, {member_map_type(out.hook)});",
            f"\t__uint(max_entries, {MEMBERS_MAX});", "\t__type(key, __u32);",
            "\t__type(value, __u32);", "};",
            f"/* multicast '{st.name}': group slot -> its members (swapped whole at run time) */",
            "struct {", "\t__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);",
            f"\t__uint(max_entries, {st.max_groups});", "\t__type(key, __u32);",
            f"\t__array(values, struct {inner});", f"}} {n['groups']} SEC(\".maps\");"]))
        out.prog.maps.append(MapRole(n["groups"], st.name, "groups",
                                     mtype="BPF_MAP_TYPE_ARRAY_OF_MAPS", key="__u32",
                                     value=f"struct {inner}", max_entries=st.max_groups))
        out.map(n["addresses"], "BPF_MAP_TYPE_HASH", "struct ebp_mc_key", "__u32",
                MC_ADDRESSES_MAX, f"multicast '{st.name}': group address -> group slot",
                stage=st.name, role="addresses")
        out.map(n["names"], "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_mc_name", st.max_groups,
                f"multicast '{st.name}': group slot -> group name (control plane)",
                stage=st.name, role="names")
        out.map(n["counters"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                len(OUTCOMES), f"multicast '{st.name}': {', '.join(OUTCOMES)}",
                stage=st.name, role="counters", slots=OUTCOMES)
        out.map(n["group_counters"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                st.max_groups, f"multicast '{st.name}': frames sent per group slot",
                stage=st.name, role="group-counters")
        if st.snooping:
            out.maps.append("\n".join([
                f"/* multicast '{st.name}': IGMP/MLD frames for the snooper "
                f"({SNOOP_RING_BYTES} bytes) */",
                "struct {", "\t__uint(type, BPF_MAP_TYPE_RINGBUF);",
                f"\t__uint(max_entries, {SNOOP_RING_BYTES});", f"}} {n['snoop']} SEC(\".maps\");"]))
            out.prog.maps.append(MapRole(n["snoop"], st.name, "snoop", reusable=False,
                                         mtype="BPF_MAP_TYPE_RINGBUF",
                                         max_entries=SNOOP_RING_BYTES))
        out.functions.append("\n".join([
            f"/* multicast '{st.name}': up to {st.max_groups} groups, each to its members but "
            "the ingress port */",
            f"static __always_inline int stage_{idx}_multicast(EBP_CTX *ctx, struct ebp_pkt *pkt, "
            "int malformed)",
            "{",
            f"\t__u32 slot = {OUTCOMES.index('runt')}; /* EBP_MC_RUNT */",
            *([f"\tif (!malformed)\n\t\tebp_mc_snoop(ctx, pkt, &{n['snoop']});"]
              if st.snooping else []),
            f"\tint act = ebp_multicast{'' if xdp else '_tc'}(ctx, pkt, &{n['addresses']}, "
            f"&{n['groups']}, &{n['group_counters']}, &slot);",
            "",
            f"\tebp_count(&{n['counters']}, slot, pkt->len);",
            "\tif (act != EBP_NEXT)",
            f"\t\tEBP_TRACE_SET({idx}, slot);",
            "\treturn act;",
            "}"]))

    def features(self, st: MulticastStage, protocols) -> Features:
        # groups with IP addresses may be added at run time: parse what is listed
        listed = set(protocols)
        return Features(ipv4="ipv4" in listed, ipv6="ipv6" in listed)


GENERATORS = {"multicast": MulticastGen()}
