"""C for one nat stage (``nat.h`` holds the reviewed part): the egress stage function (source
translation) and the companion TC ingress program (destination translation)."""

from __future__ import annotations

import ipaddress

from ebplane.codegen.layout import Field, Layout
from ebplane.codegen.pipeline import Emit, Features, StageGen, TC_PULL_LEN
from ebplane.errors import SpecError
from ebplane.stages.nat.spec import NAT_PROTOS, NatStage

# counter slots (EBP_NAT_CNT_<NAME> in nat.h), defined here once
COUNTERS: tuple[str, ...] = (
    "translated_out",    # sources translated at egress
    "translated_in",     # destinations translated at ingress
    "new_snat",          # masqueraded flows started
    "new_dnat",          # forwarded flows started
    "untranslated_out",  # left unchanged at egress (not masqueraded, not for the stage)
    "untranslated_in",   # left unchanged at ingress (no translation: for the host)
    "full",              # a new flow found the table full
    "no_port",           # no free port found for a new flow
    "collected",         # expired entries the collector deleted
    "expired",           # expired translations a packet of their tuple ended
    "fragments",         # later fragments translated like their first
    "frag_unknown",      # later fragments without a translated first fragment
    "icmp_error",        # ICMP errors about a translated flow, translated
    "malformed",         # cut short: left unchanged
)


# the structs of the stage's maps, written into each program ahead of nat.h; addresses
# (4 words, IPv4 in word 0) and ports are in network order
NAT_KEY = Layout("ebp_nat_key", [
    Field("src", "__u32", 4, raw=True),
    Field("dst", "__u32", 4, raw=True),
    Field("sport", "__u16", comment="ICMP echo: the identifier in both"),
    Field("dport", "__u16"),
    Field("proto", "__u8"),
    Field("dir", "__u8", comment="EBP_NAT_OUT / EBP_NAT_IN"),
    Field("family", "__u8", comment="4 or 6"),
    Field("pad", "__u8")], "a packet's tuple as it appears on the wire where it is translated")
NAT_ENTRY = Layout("ebp_nat_entry", [
    Field("seen_ns", "__u64", comment="last packet of this direction, bpf_ktime_get_ns()"),
    Field("timeout_ns", "__u64"),
    Field("packets", "__u64"),
    Field("pair", NAT_KEY, comment="the key of the other direction's entry"),
    Field("addr", "__u32", 4, "write this address ...", raw=True),
    Field("port", "__u16", comment="... and port (ICMP: identifier)"),
    Field("kind", "__u8", comment="EBP_NAT_SNAT / EBP_NAT_DNAT: what made it"),
    Field("orig", "__u8", comment="1: the direction of the flow's first packet"),
    Field("state", "__u8", comment="EBP_NAT_ST_*"),
    Field("pad", "__u8", 3)], "a translation, one direction")
NAT_FRAG_KEY = Layout("ebp_nat_frag_key", [
    Field("src", "__u32"), Field("dst", "__u32"), Field("id", "__u16"),
    Field("proto", "__u8"), Field("dir", "__u8")],
    "an IPv4 datagram in fragments (IPv6 fragments are not translated)")
NAT_FRAG = Layout("ebp_nat_frag", [
    Field("addr", "__u32", comment="the address the first fragment got"),
    Field("pad", "__u32")], "what a datagram's first fragment got")
NAT_CFG = Layout("ebp_nat_cfg", [
    Field("addr", "__u32", 4, "the outside IPv4 address (word 0); 0: none", raw=True),
    Field("addr6", "__u32", 4, "the outside IPv6 address; 0: none", raw=True),
    Field("port_lo", "__u16"),
    Field("port_hi", "__u16"),
    Field("pad", "__u32"),
    Field("gc_last", "__u64", comment="the stage's last collection of expired entries")],
    "set by the control plane (outside addresses, port range); gc_last by the stage")
LAYOUTS = (NAT_KEY, NAT_ENTRY, NAT_FRAG_KEY, NAT_FRAG, NAT_CFG)


# a key's direction (EBP_NAT_OUT: a packet leaving, its source translated; EBP_NAT_IN: a
# packet arriving, its destination), what made an entry (EBP_NAT_SNAT, EBP_NAT_DNAT) and an
# entry's state (EBP_NAT_ST_<STATE>; closing: TCP FIN or RST seen)
DIRECTIONS: dict[str, int] = {"out": 0, "in": 1}
ENTRY_KINDS: dict[str, int] = {"snat": 1, "dnat": 2}
ENTRY_STATES: tuple[str, ...] = ("new", "replied", "closing")

# the idle timeouts compiled into each stage (seconds; the spec's `timeouts:` keys)
TIMEOUT_FIELDS = ("tcp_syn", "tcp", "tcp_close", "udp", "icmp")
NAT_TIMEOUTS = Layout("ebp_nat_timeouts", [Field(n, "__u64") for n in TIMEOUT_FIELDS],
                      "idle timeouts in seconds, compiled into the stage")
LAYOUTS = LAYOUTS + (NAT_TIMEOUTS,)


def c_defines() -> dict[str, int]:
    """The #defines nat.h reads, from COUNTERS and the tables above."""
    d = {f"EBP_NAT_CNT_{n.upper()}": i for i, n in enumerate(COUNTERS)}
    d["EBP_NAT_NCOUNTERS"] = len(COUNTERS)
    d.update({f"EBP_NAT_{n.upper()}": v for n, v in DIRECTIONS.items()})
    d.update({f"EBP_NAT_{n.upper()}": v for n, v in ENTRY_KINDS.items()})
    d.update({f"EBP_NAT_ST_{n.upper()}": i for i, n in enumerate(ENTRY_STATES)})
    return d
# the program apply attaches at tc-ingress next to the pipeline's tc-egress program
INGRESS_PROG = "ebp_nat_in"
FRAG_ENTRIES = 4096


def map_names(stage: str) -> dict[str, str]:
    """role -> C name of a nat stage's maps (the one place these names are made)."""
    t = f"nat_{stage}"
    return {"table": f"{t}_tab", "frags": f"{t}_frag", "config": f"{t}_cfg",
            "counters": f"{t}_cnt"}


def _words(value: int, family: int) -> list[int]:
    """An address (or mask) as the 4 words of ebp_nat_key (IPv4: word 0, the rest 0)."""
    if family == 4:
        return [value, 0, 0, 0]
    return [(value >> (96 - 32 * i)) & 0xFFFFFFFF for i in range(4)]


def _masq_test(prefixes: tuple[str, ...]) -> str:
    """C: whether ``k`` (struct ebp_nat_key *) has a source in one of ``prefixes``."""
    tests = []
    for p in prefixes:
        net = ipaddress.ip_network(p)
        words = zip(_words(int(net.netmask), net.version),
                    _words(int(net.network_address), net.version))
        parts = [f"(k->src[{i}] & bpf_htonl(0x{m:08x})) == bpf_htonl(0x{a:08x})"
                 for i, (m, a) in enumerate(words) if m]
        tests.append(f"(k->family == {net.version}" + "".join(f" && {t}" for t in parts)
                     + ")")
    return " ||\n\t       ".join(tests) or "0"


def _addr_words(addr: str) -> list[str]:
    a = ipaddress.ip_address(addr)
    return [f"bpf_htonl(0x{w:08x})" for w in _words(int(a), a.version)]


class NatGen(StageGen):
    kind = "nat"

    def emit(self, idx: int, st: NatStage, out: Emit) -> None:
        if out.prog.tc_ingress:
            raise SpecError("a pipeline has at most one nat stage", given=st.name,
                            hint="put all translations into one nat stage")
        for name, value in c_defines().items():
            out.define(name, value)
        for layout in LAYOUTS:
            out.struct(layout)
        out.include("nat.h")
        n = map_names(st.name)
        out.map(n["table"], "BPF_MAP_TYPE_HASH", "struct ebp_nat_key", "struct ebp_nat_entry",
                2 * st.size, f"nat '{st.name}': translations, both directions of "
                f"{st.size} connections" + (", preallocated" if st.prealloc else ""),
                stage=st.name, role="table", flags=None if st.prealloc else "BPF_F_NO_PREALLOC")
        out.map(n["frags"], "BPF_MAP_TYPE_LRU_HASH", "struct ebp_nat_frag_key",
                "struct ebp_nat_frag", FRAG_ENTRIES,
                f"nat '{st.name}': the address a translated first fragment got, for the others",
                stage=st.name, role="frags")
        out.map(n["config"], "BPF_MAP_TYPE_ARRAY", "__u32", "struct ebp_nat_cfg", 1,
                f"nat '{st.name}': outside address, port range (control plane); last collection",
                stage=st.name, role="config")
        out.map(n["counters"], "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count",
                len(COUNTERS), f"nat '{st.name}': {', '.join(COUNTERS)}",
                stage=st.name, role="counters")
        to = ", ".join(f".{k} = {v}" for k, v in st.timeouts)
        full = "EBP_V_DROP" if st.when_full == "drop" else "EBP_NEXT"
        tab, frags, cnt, cfgm = (f"&{n[r]}" for r in ("table", "frags", "counters", "config"))
        out.functions.append("\n".join([
            f"/* nat '{st.name}': sources masqueraded */",
            f"static __always_inline int nat_{idx}_masq(const struct ebp_nat_key *k)", "{",
            f"\treturn {_masq_test(st.masq_from)};", "}"]))
        common = [
            f"\tconst struct ebp_nat_timeouts to = {{ {to} }};",
            "\tstruct ebp_nat_pkt np = {};",
            f"\tstruct ebp_nat_cfg *cfg = bpf_map_lookup_elem({cfgm}, &(__u32){{0}});",
            "\t__u64 now;",
            "\tint r;",
            "",
            "\tif (!cfg)",
            "\t\treturn EBP_NEXT;",
            "\tr = malformed ? -1 : ebp_nat_read(ctx, pkt, &np);",
            "\tnp.key.dir = @DIR@;",
            "\tif (r == 2 && ebp_nat_icmp_error(ctx, " + tab + ", &np)) {",
            f"\t\tebp_count({cnt}, EBP_NAT_CNT_ICMP_ERROR, pkt->len);",
            "\t\treturn EBP_NEXT;",
            "\t}",
            "\tif (r) {",
            f"\t\tebp_count({cnt}, r < 0 ? EBP_NAT_CNT_MALFORMED : @UNTR@, pkt->len);",
            "\t\treturn EBP_NEXT;",
            "\t}",
            "\tif (np.later_frag) {",
            f"\t\tebp_nat_frag_follow(ctx, {frags}, &np, {cnt}, pkt->len);",
            "\t\treturn EBP_NEXT;",
            "\t}",
            "\tnow = bpf_ktime_get_ns();",
            f"\tif (ebp_nat_existing(ctx, {tab}, {frags}, &np, now, &to, {cnt}, pkt->len)) {{",
            f"\t\tebp_count({cnt}, @TR@, pkt->len);",
            "\t\treturn EBP_NEXT;",
            "\t}",
        ]

        def fn(name: str, direction: str, untranslated: str, translated: str,
               rest: list[str], doc: str) -> str:
            body = [ln.replace("@DIR@", direction).replace("@UNTR@", untranslated)
                    .replace("@TR@", translated) for ln in common]
            return "\n".join([
                f"/* nat '{st.name}': {doc} */",
                f"static __always_inline int {name}(EBP_CTX *ctx, struct ebp_pkt *pkt, "
                "int malformed)", "{", *body, *rest, "}"])

        new_snat = [
            f"\t/* masquerade: {', '.join(st.masq_from) or 'none'} */",
            "\t{",
            "\t\t__be32 outside[4];",
            "\t\t__be16 port;",
            "",
            f"\t\tif (!ebp_nat_outside(cfg, np.key.family, outside) || "
            f"!nat_{idx}_masq(&np.key)) {{",
            f"\t\t\tebp_count({cnt}, EBP_NAT_CNT_UNTRANSLATED_OUT, pkt->len);",
            "\t\t\treturn EBP_NEXT;",
            "\t\t}",
            f"\t\tr = ebp_nat_snat_new({tab}, cfg, outside, &np, now, &to, {cnt}, &port);",
            "\t\tif (!r && !ebp_nat_rewrite(ctx, &np, 0, outside, port)) {",
            "\t\t\tif (np.first_frag)",
            f"\t\t\t\tebp_nat_frag_note({frags}, &np, outside);",
            f"\t\t\tebp_count({cnt}, EBP_NAT_CNT_NEW_SNAT, pkt->len);",
            f"\t\t\tebp_count({cnt}, EBP_NAT_CNT_TRANSLATED_OUT, pkt->len);",
            "\t\t\treturn EBP_NEXT;",
            "\t\t}",
            "\t}",
            "\t/* never let an inside address out untranslated */",
            f"\tebp_count({cnt}, r == 2 ? EBP_NAT_CNT_FULL : EBP_NAT_CNT_NO_PORT, pkt->len);",
            f"\tEBP_TRACE_SET({idx}, r == 2 ? EBP_NAT_CNT_FULL : EBP_NAT_CNT_NO_PORT);"
            if full != "EBP_NEXT" else "",
            f"\treturn {full};",
        ]
        out.functions.append(fn(f"stage_{idx}_nat", "EBP_NAT_OUT",
                                "EBP_NAT_CNT_UNTRANSLATED_OUT", "EBP_NAT_CNT_TRANSLATED_OUT",
                                new_snat, "sources of packets leaving (egress)"))
        fwd = []
        for i, f in enumerate(st.forwards):
            syn = " && (np.tcp_flags & 0x12) == 0x02" if f.proto == "tcp" else ""
            fam = ipaddress.ip_address(f.to).version
            fwd += [f"\tif (np.key.family == {fam} && np.key.proto == {NAT_PROTOS[f.proto]} && "
                    f"np.key.dport == bpf_htons({f.port}){syn}) {{",
                    *(f"\t\tto_addr[{w}] = {v};" for w, v in enumerate(_addr_words(f.to))),
                    "\t\tforward = 1;",
                    f"\t\tto_port = bpf_htons({f.to_port});",
                    "\t}"]
        new_dnat = [
            f"\t/* port forwards: {len(st.forwards)} */",
            "\t{",
            "\t\t__be32 to_addr[4] = {};",
            "\t\tint forward = 0;",
            "\t\t__be32 outside[4];",
            "\t\t__be16 to_port = 0;",
            "",
            "\t\tif (ebp_nat_outside(cfg, np.key.family, outside) &&",
            "\t\t    ebp_nat_addr_eq(np.key.dst, outside)) {",
            *("\t" + ln for ln in fwd),
            "\t\t}",
            "\t\tif (!forward) {",
            f"\t\t\tebp_count({cnt}, EBP_NAT_CNT_UNTRANSLATED_IN, pkt->len);",
            "\t\t\treturn EBP_NEXT;",
            "\t\t}",
            f"\t\tr = ebp_nat_dnat_new({tab}, cfg, &np, to_addr, to_port, now, &to, {cnt});",
            "\t\tif (!r && !ebp_nat_rewrite(ctx, &np, 1, to_addr, to_port)) {",
            "\t\t\tif (np.first_frag)",
            f"\t\t\t\tebp_nat_frag_note({frags}, &np, to_addr);",
            f"\t\t\tebp_count({cnt}, EBP_NAT_CNT_NEW_DNAT, pkt->len);",
            f"\t\t\tebp_count({cnt}, EBP_NAT_CNT_TRANSLATED_IN, pkt->len);",
            "\t\t\treturn EBP_NEXT;",
            "\t\t}",
            "\t}",
            f"\tebp_count({cnt}, r == 2 ? EBP_NAT_CNT_FULL : EBP_NAT_CNT_NO_PORT, pkt->len);",
            f"\treturn r == 2 ? {full} : EBP_NEXT;",
        ]
        in_fn = f"nat_{idx}_in"
        out.functions.append(fn(in_fn, "EBP_NAT_IN", "EBP_NAT_CNT_UNTRANSLATED_IN",
                                "EBP_NAT_CNT_TRANSLATED_IN", new_dnat,
                                "destinations of packets arriving (ingress)"))
        out.functions.append("\n".join([
            f"/* nat '{st.name}': the program at tc-ingress of the same interfaces, before "
            "the kernel routes */",
            'SEC("tc")', f"int {INGRESS_PROG}(struct __sk_buff *ctx)", "{",
            f"\t__u32 linear_want = ctx->len < {TC_PULL_LEN} ? ctx->len : {TC_PULL_LEN};",
            "\tif ((void *)(long)ctx->data + linear_want > (void *)(long)ctx->data_end)",
            "\t\tbpf_skb_pull_data(ctx, linear_want);",
            "\tvoid *data = (void *)(long)ctx->data;",
            "\tvoid *data_end = (void *)(long)ctx->data_end;",
            "\tstruct ebp_pkt pkt = {};",
            "\tint malformed = ebp_parse(data, data_end, &pkt) == EBP_MALFORMED;",
            "\tint action;", "",
            "\tpkt.len = ctx->len;",
            f"\taction = {in_fn}(ctx, &pkt, malformed);",
            "\treturn action == EBP_NEXT ? TC_ACT_OK : action;", "}"]))
        out.prog.tc_ingress = INGRESS_PROG

    def features(self, st: NatStage, protocols) -> Features:
        listed = set(protocols)
        return Features(ipv4="ipv4" in listed, ipv6="ipv6" in listed, tcp="tcp" in listed,
                        udp="udp" in listed)


GENERATORS = {"nat": NatGen()}
