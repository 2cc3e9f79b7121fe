"""C for the encap and decap stages (``encap.h`` holds the reviewed primitives).

A decap stage finds the outermost tunnel it was told about from the parser's header offsets
(``ebp_pkt.hdr_off``), removes it, and parses the packet again: the stages after it see the
inner packet (its addresses, ports and ``match:`` fields), and the kernel gets it as if it
had arrived that way.  An encap stage adds outer headers made here, as constant bytes, from
the spec (addresses, TTL, ports, VNI, key), fills the per-packet fields (lengths, IPv4
checksum, UDP source port from the inner flow's hash, GRE protocol) and parses again.

Counter slots (:data:`OUTCOMES`), map names (:func:`map_names`) and the stage's constant
(``struct ebp_encap``, a ``Layout`` with the size of its outer headers) are defined here
only; the C and the control side (``control.py``) both take them from here.
"""

from __future__ import annotations

import ipaddress
import struct

from ebplane.codegen.layout import Field, Layout
from ebplane.codegen.pipeline import TC_PULL_LEN, Emit, Features, StageGen
from ebplane.stages.encap.spec import DecapStage, EncapStage

# counter slots per kind, in this order
OUTCOMES: dict[str, tuple[str, ...]] = {
    # decapsulated: a header removed; not_tunnel: none of the stage's tunnels; malformed: the
    # parser refused the packet; truncated: the inner packet is cut short; not_ip: inner
    # packet of a kind the hook cannot take (TC: not IPv4/IPv6); failed: a kernel helper
    # refused (dropped)
    # refused (TC): a VLAN tag in the packet data in front of an inner IP packet (the kernel
    # normally holds the tag in the skb; adjust_room cuts after a 14-byte MAC header only),
    # or a GRO-merged (GSO) tunnel packet
    "decap": ("decapsulated", "not_tunnel", "malformed", "truncated", "not_ip", "refused",
              "failed"),
    # encapsulated / rewritten (a VLAN tag's id changed); too_big: the outer packet would
    # exceed mtu; skipped: not IP (IP tunnels), or not taken at TC; failed: dropped
    "encap": ("encapsulated", "rewritten", "too_big", "skipped", "failed"),
}
PREFIX = {"decap": "dc", "encap": "ec"}
IPPROTO = {"vxlan": 17, "geneve": 17, "gre": 47, "ipip": 4}
ETH_P_TEB = 0x6558  # transparent Ethernet bridging: GENEVE/GRE carrying a frame
OUTER_MAX = 56      # EBP_ENCAP_OUTER_MAX: IPv6 40 + UDP 8 + VXLAN/GENEVE 8
IPV4_DF = 0x4000

# an encap stage's outer headers, made by the generator (a constant per stage)
ENCAP = Layout("ebp_encap", [
    Field("outer", "__u8", OUTER_MAX, "outer IP header (checksum 0) and what follows"),
    Field("mac", "__u8", 12, "outer Ethernet destination, source (set_mac)"),
    Field("len", "__u8", comment="bytes of outer[]: IP header (20, v6: 40) + 0 (ipip), 4/8 "
                                 "(gre, with key), 16 (udp + vxlan/geneve)"),
    Field("v6", "__u8", comment="the outer header is IPv6"),
    Field("l2", "__u8", comment="carries the Ethernet frame (vxlan, geneve): pushes an outer "
                                "Ethernet"),
    Field("udp", "__u8", comment="UDP after the IP header: source port and length set per "
                                 "packet"),
    Field("gre", "__u8", comment="GRE after the IP header: protocol set per packet"),
    Field("ipip", "__u8", comment="outer protocol set per packet: 4 (IPv4 inside) or 41 "
                                  "(IPv6)"),
    Field("set_mac", "__u8", comment="outer Ethernet addresses from mac[] (else the frame's "
                                     "own)")],
    "an encap stage's outer headers, made by the code generator (constant per stage)")


def map_names(stage) -> dict[str, str]:
    """role -> C name of an encap/decap stage's maps (the one place these names are made)."""
    return {"counters": f"{PREFIX[stage.kind]}_{stage.name}_cnt"}


def slot(kind: str, outcome: str) -> int:
    return OUTCOMES[kind].index(outcome)


def outer_headers(st: EncapStage) -> bytes:
    """The outer headers of an IP tunnel as sent, with the per-packet fields zero (IPv4
    total length and checksum, IPv6 payload length and flow label, UDP source port and
    length, GRE protocol)."""
    src, dst = ipaddress.ip_address(st.src), ipaddress.ip_address(st.dst)
    if src.version == 6:
        ip = struct.pack("!IHBB16s16s", 0x60000000, 0, IPPROTO[st.tunnel], st.ttl,
                         src.packed, dst.packed)
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, IPV4_DF, st.ttl, IPPROTO[st.tunnel],
                         0, src.packed, dst.packed)
    if st.tunnel == "vxlan":
        return ip + struct.pack("!HHHH", 0, st.dport, 0, 0) + struct.pack("!II", 0x08 << 24,
                                                                         st.vni << 8)
    if st.tunnel == "geneve":
        return ip + struct.pack("!HHHH", 0, st.dport, 0, 0) + struct.pack("!BBHI", 0, 0,
                                                                         ETH_P_TEB, st.vni << 8)
    if st.tunnel == "gre":
        if st.key is None:
            return ip + struct.pack("!HH", 0, 0)
        return ip + struct.pack("!HHI", 0x2000, 0, st.key)  # K bit
    return ip


def _bytes(b: bytes) -> str:
    return "{ " + ", ".join(f"0x{x:02x}" for x in b) + " }"


def _mac(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else bytes(6)


def _header(out: Emit) -> None:
    """encap.h, after the #define and struct it reads (both kinds include it)."""
    out.define("EBP_ENCAP_OUTER_MAX", OUTER_MAX)
    out.struct(ENCAP)
    out.include("encap.h")


def _counters(st, out: Emit) -> str:
    cname = map_names(st)["counters"]
    names = OUTCOMES[st.kind]
    out.map(cname, "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count", len(names),
            f"{st.kind} '{st.name}': packets and bytes per outcome ({', '.join(names)})",
            stage=st.name, role="counters")
    return cname


def _reparse(hook: str, length: str) -> list[str]:
    """Parse the changed packet again (the stages after see it as it is now); ``length``:
    the frame's new length (XDP: all buffers)."""
    if hook == "xdp":
        return [f"\t{{ __u32 len_ = {length};",
                "\t\tvoid *d_ = (void *)(long)ctx->data, *e_ = (void *)(long)ctx->data_end;",
                "\t\t__builtin_memset(pkt, 0, sizeof(*pkt));",
                "\t\t*malformed = ebp_parse(d_, e_, pkt) == EBP_MALFORMED;",
                "\t\tpkt->len = len_; }"]
    return [f"\tbpf_skb_pull_data(ctx, ctx->len < {TC_PULL_LEN} ? ctx->len : {TC_PULL_LEN});",
            "\t{ void *d_ = (void *)(long)ctx->data, *e_ = (void *)(long)ctx->data_end;",
            "\t\t__builtin_memset(pkt, 0, sizeof(*pkt));",
            "\t\t*malformed = ebp_parse(d_, e_, pkt) == EBP_MALFORMED;",
            "\t\tpkt->len = ctx->len; }"]


def _end(idx: int, st, cnt: str, decides: dict[str, str]) -> list[str]:
    """Count the outcome in ``slot`` and return: ``decides`` maps outcomes to the verdict they
    end in (the others go on to the next stage)."""
    lines = ["done:", f"\tebp_count(&{cnt}, slot, pkt->len);"]
    for outcome, verdict in decides.items():
        lines += [f"\tif (slot == {slot(st.kind, outcome)}) {{ /* {outcome} */",
                  f"\t\tEBP_TRACE_SET({idx}, slot);", f"\t\treturn {verdict};", "\t}"]
    lines.append("\treturn EBP_NEXT;")
    return lines


def _head(idx: int, st, comment: str) -> list[str]:
    return [f"/* {st.kind} '{st.name}': {comment} */",
            f"static __always_inline int stage_{idx}_{st.kind}(EBP_CTX *ctx, "
            "struct ebp_pkt *pkt, int *malformed)", "{"]


def _prefixes(prefixes) -> str:
    """C condition: the packet's (parsed) destination is in one of ``prefixes``."""
    conds = []
    for text in prefixes:
        net = ipaddress.ip_network(text)
        words = struct.unpack("!4I", net.network_address.packed.ljust(16, bytes(1)))
        masks = struct.unpack("!4I", net.netmask.packed.ljust(16, bytes(1)))
        parts = [f"pkt->family == {net.version}"]
        parts += [f"(bpf_ntohl(pkt->dst32[{i}]) & {m:#x}) == {w:#x}"
                  for i, (w, m) in enumerate(zip(words, masks)) if m]
        conds.append("(" + " && ".join(parts) + ")")
    return " || ".join(conds)


class _HeaderGen(StageGen):
    def call(self, idx: int, stage) -> str:
        # the stage parses the changed packet again: the stages after read its verdict
        return f"stage_{idx}_{stage.kind}(ctx, &pkt, &malformed)"


class DecapGen(_HeaderGen):
    kind = "decap"

    def emit(self, idx: int, st: DecapStage, out: Emit) -> None:
        _header(out)
        cnt = _counters(st, out)
        graph = out.prog.graph
        tc = out.hook != "xdp"
        s = lambda o: f"{slot('decap', o)} /* {o} */"  # noqa: E731
        what = ", ".join(list(st.tunnels) + ([f"header {st.header}"] if st.header else []))
        body = _head(idx, st, f"remove the outermost of {what}; then parse again")
        body += ["\tvoid *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;",
                 "\t__u32 from = 0, to = 0, off, slot;",
                 "\t__u16 inner = 0, gp;", "\t__u8 *p;", ""]
        if out.spec.parser_mode != "fused":
            # the parse-info of a separate/XDP parser has no header offsets: parse here
            body += ["\t{ __u32 len_ = pkt->len;", "\t\t__builtin_memset(pkt, 0, sizeof(*pkt));",
                     "\t\t*malformed = ebp_parse(data, data_end, pkt) == EBP_MALFORMED;",
                     "\t\tpkt->len = len_; }"]
        body += ["\t(void)gp; (void)p; (void)off;",
                 f"\tif (*malformed) {{ slot = {s('malformed')}; goto done; }}"]
        if "vlan" in st.tunnels:
            cond = "ctx->vlan_present || pkt->n_vlan" if tc else "pkt->n_vlan"
            pop = "bpf_skb_vlan_pop(ctx)" if tc else "ebp_xdp_vlan_pop(ctx)"
            body += [f"\tif ({cond}) {{ /* vlan: the outer tag */",
                     f"\t\tif ({pop}) {{ slot = {s('failed')}; goto done; }}",
                     f"\t\tebp_count(&{cnt}, {s('decapsulated')}, pkt->len);",
                     *["\t" + ln for ln in _reparse(out.hook, "pkt->len - 4")],
                     "\t\treturn EBP_NEXT;", "\t}"]

        def has(h: str) -> bool:
            return h in graph.instances

        if st.header is not None:
            size = graph.instances[st.header].type.byte_size
            body += [f"\tif (!to && (off = pkt->hdr_off[EBP_HDR_{st.header.upper()}]) != 0xffff) {{",
                     f"\t\tto = off + {size}; /* user header {st.header}, {size} bytes */"]
            if st.inner == "ethernet":
                body.append("\t\tfrom = 0;")
            else:
                body += ["\t\tfrom = pkt->l3_off;",
                         "\t\tif (!(p = ebp_hdr(data, data_end, to, 1)))",
                         f"\t\t\t{{ slot = {s('truncated')}; goto done; }}",
                         "\t\tinner = (p[0] >> 4) == 4 ? ETH_P_IP : (p[0] >> 4) == 6 ? "
                         "ETH_P_IPV6 : 0;",
                         f"\t\tif (!inner) {{ slot = {s('not_ip')}; goto done; }}"]
            body.append("\t}")
        # vni: only these VNIs (bytes 4-6 of the VXLAN and GENEVE headers)
        vni = ""
        if st.vni:
            vni = " && (" + " || ".join(
                f"(p[4] == {v >> 16:#x} && p[5] == {(v >> 8) & 0xff:#x} && p[6] == {v & 0xff:#x})"
                for v in st.vni) + ")"
        if "vxlan" in st.tunnels and has("vxlan"):
            body += ["\tif (!to && (off = pkt->hdr_off[EBP_HDR_VXLAN]) != 0xffff &&",
                     f"\t    (p = ebp_hdr(data, data_end, off, 8)){vni})",
                     "\t\tto = off + 8; /* vxlan: an Ethernet frame follows */"]
        payload = [  # gp: the EtherType a GENEVE or GRE header says follows
            f"\t\tif (gp == {ETH_P_TEB:#x}) from = 0;",
            "\t\telse if (gp == ETH_P_IP || gp == ETH_P_IPV6) { from = pkt->l3_off; inner = gp; }",
            "\t\telse to = 0; /* something else: not decapsulated */"]
        if "geneve" in st.tunnels and has("geneve"):
            body += ["\tif (!to && (off = pkt->hdr_off[EBP_HDR_GENEVE]) != 0xffff &&",
                     f"\t    (p = ebp_hdr(data, data_end, off, 8)){vni}) {{ /* geneve, options */",
                     "\t\tgp = (__u16)p[2] << 8 | p[3];",
                     "\t\tto = off + 8 + (p[0] & 0x3f) * 4;", *payload, "\t}"]
        if "gre" in st.tunnels and has("gre"):
            body += ["\tif (!to && (off = pkt->hdr_off[EBP_HDR_GRE]) != 0xffff &&",
                     "\t    (p = ebp_hdr(data, data_end, off, 4)) &&",
                     "\t    !(p[0] & 0x40) && !(p[1] & 7)) { /* gre version 0, no routing */",
                     "\t\tgp = (__u16)p[2] << 8 | p[3];",
                     "\t\tto = off + 4 + ((p[0] & 0x80) ? 4 : 0) + ((p[0] & 0x20) ? 4 : 0) +",
                     "\t\t     ((p[0] & 0x10) ? 4 : 0); /* checksum, key, sequence */",
                     *payload, "\t}"]
        if "ipip" in st.tunnels:
            if has("ipv4"):
                body += ["\tif (!to && pkt->family == 4 && !(pkt->flags & EBP_PKT_FRAG) &&",
                         "\t    (off = pkt->hdr_off[EBP_HDR_IPV4]) != 0xffff &&",
                         "\t    (p = ebp_hdr(data, data_end, off, 20)) && (p[9] == 4 || p[9] == 41)) {",
                         "\t\tto = off + (p[0] & 0xf) * 4; /* ipip, 6in4 */",
                         "\t\tfrom = pkt->l3_off;",
                         "\t\tinner = p[9] == 4 ? ETH_P_IP : ETH_P_IPV6;", "\t}"]
            if has("ipv6"):
                body += ["\tif (!to && pkt->family == 6 &&",
                         "\t    (off = pkt->hdr_off[EBP_HDR_IPV6]) != 0xffff &&",
                         "\t    (p = ebp_hdr(data, data_end, off, 40)) && (p[6] == 4 || p[6] == 41)) {",
                         "\t\tto = off + 40; /* ip6ip6, 4in6: the next header right after */",
                         "\t\tfrom = pkt->l3_off;",
                         "\t\tinner = p[6] == 4 ? ETH_P_IP : ETH_P_IPV6;", "\t}"]
        body += [f"\tif (!to) {{ slot = {s('not_tunnel')}; goto done; }}"]
        if tc:
            body += [
                "\tif (!from) { /* TC takes IP frames only: skb->protocol must follow */",
                "\t\tinner = ebp_tc_inner_ethertype(ctx, to);",
                f"\t\tif (!inner) {{ slot = {s('truncated')}; goto done; }}",
                f"\t\tif (inner != ETH_P_IP && inner != ETH_P_IPV6) {{ slot = {s('not_ip')}; goto done; }}",
                "\t}",
                f"\tif (from && from != 14) {{ slot = {s('refused')}; goto done; }}",
                "\t/* a GRO-merged tunnel packet: this kernel's adjust_room cannot clear its tunnel",
                "\t * GSO type (no BPF_F_ADJ_ROOM_DECAP_L4_UDP/GRE), which would break its",
                "\t * segmentation later: left to the kernel's tunnel device */",
                f"\tif (ctx->gso_size) {{ slot = {s('refused')}; goto done; }}",
                f"\tif (to + (from ? 20 : 34) > ctx->len) {{ slot = {s('truncated')}; goto done; }}",
                f"\tif (ebp_tc_decap(ctx, from, to, inner)) {{ slot = {s('failed')}; goto done; }}"]
        else:
            body += [
                f"\tif (to + (from ? 20 : 14) > pkt->len) {{ slot = {s('truncated')}; goto done; }}",
                "\t__u32 removed = to - from;",
                f"\tif (ebp_xdp_decap(ctx, from, to, inner)) {{ slot = {s('failed')}; goto done; }}"]
        body += [f"\tebp_count(&{cnt}, {s('decapsulated')}, pkt->len);",
                 *_reparse(out.hook, "pkt->len - removed"), "\treturn EBP_NEXT;"]
        body += _end(idx, st, cnt, {"failed": "EBP_V_DROP"})
        body.append("}")
        out.functions.append("\n".join(body))

    def features(self, st: DecapStage, protocols) -> Features:
        return Features(vlan="vlan" in protocols)


class EncapGen(_HeaderGen):
    kind = "encap"

    def emit(self, idx: int, st: EncapStage, out: Emit) -> None:
        _header(out)
        cnt = _counters(st, out)
        s = lambda o: f"{slot('encap', o)} /* {o} */"  # noqa: E731
        tc = out.hook != "xdp"
        if st.tunnel == "vlan":
            body = self._vlan(idx, st, out, cnt, s, tc)
        else:
            body = self._ip(idx, st, out, cnt, s, tc)
        too_big = {"too_big": "EBP_V_DROP"} if st.too_big == "drop" else {}
        body += _end(idx, st, cnt, {"failed": "EBP_V_DROP", **too_big})
        body.append("}")
        out.functions.append("\n".join(body))

    def _vlan(self, idx, st: EncapStage, out: Emit, cnt, s, tc) -> list[str]:
        tci = st.pcp << 13 | st.vid
        body = _head(idx, st, f"VLAN tag {st.vid} (pcp {st.pcp}); a tagged frame: "
                              f"{st.tagged}; then parse again")
        body += ["\tvoid *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;",
                 "\t__u32 slot;", "\t__be16 *tci;", "\t(void)tci;", ""]
        if st.tagged == "rewrite":
            if tc:
                body += ["\tif (ctx->vlan_present) { /* the kernel holds the outer tag */",
                         "\t\tif (bpf_skb_vlan_pop(ctx) || bpf_skb_vlan_push(ctx, "
                         f"bpf_htons(pkt->n_vlan ? ETH_P_8021AD : 0x8100), {tci:#x}))",
                         f"\t\t\t{{ slot = {s('failed')}; goto done; }}",
                         f"\t\tslot = {s('rewritten')}; goto done;", "\t}"]
            write = ("\t\t{ __be16 v_ = bpf_htons((bpf_ntohs(*tci) & 0x1000) | "
                     f"{tci:#x}); /* keep DEI */\n"
                     "\t\t  if (bpf_skb_store_bytes(ctx, 14, &v_, 2, BPF_F_RECOMPUTE_CSUM))\n"
                     f"\t\t\t{{ slot = {s('failed')}; goto done; }} }}"
                     if tc else
                     f"\t\t*tci = bpf_htons((bpf_ntohs(*tci) & 0x1000) | {tci:#x}); /* keep DEI */")
            body += ["\tif (pkt->n_vlan) {",
                     "\t\tif (!(tci = ebp_hdr(data, data_end, 14, 2)))",
                     f"\t\t\t{{ slot = {s('failed')}; goto done; }}",
                     write,
                     "\t\tpkt->vlan = " + str(st.vid) + ";",
                     f"\t\tslot = {s('rewritten')}; goto done;", "\t}"]
        tagged = "ctx->vlan_present || pkt->n_vlan" if tc else "pkt->n_vlan"
        push = (f"bpf_skb_vlan_push(ctx, bpf_htons(({tagged}) ? ETH_P_8021AD : 0x8100), {tci:#x})"
                if tc else
                f"ebp_xdp_vlan_push(ctx, pkt->n_vlan ? ETH_P_8021AD : 0x8100, {tci:#x})")
        body += [f"\tif ({push}) {{ slot = {s('failed')}; goto done; }}",
                 f"\tebp_count(&{cnt}, {s('encapsulated')}, pkt->len);",
                 *_reparse(out.hook, "pkt->len + 4"), "\treturn EBP_NEXT;"]
        return body

    def _ip(self, idx, st: EncapStage, out: Emit, cnt, s, tc) -> list[str]:
        outer = outer_headers(st)
        macs = _mac(st.dst_mac) + _mac(st.src_mac)
        set_mac = st.dst_mac is not None  # the spec gives both or neither
        cfg = (f"\tconst struct ebp_encap e = {{\n\t\t.outer = {_bytes(outer.ljust(OUTER_MAX, bytes(1)))},\n"
               f"\t\t.mac = {_bytes(macs)},\n"
               f"\t\t.len = {len(outer)}, .v6 = {int(':' in st.src)}, .l2 = {int(st.l2)}, .udp = {int(st.tunnel in ('vxlan', 'geneve'))},"
               f" .gre = {int(st.tunnel == 'gre')}, .ipip = {int(st.tunnel == 'ipip')},"
               f" .set_mac = {int(set_mac)},\n\t}};")
        body = _head(idx, st, f"{st.tunnel} from {st.src} to {st.dst}; outer packets above "
                              f"{st.mtu} bytes: {st.too_big}; then parse again")
        body += [cfg, "\t__u32 slot, keep, push = e.len + (e.l2 ? 14 : 0);",
                 "\t__u16 inner = pkt->eth_proto;", ""]
        ip_only = "inner != ETH_P_IP && inner != ETH_P_IPV6"
        # gre and ipip carry the IP packet: one whose fixed IP header is cut short goes on
        # unchanged (the kernel judges it), as a frame that is not IP does; it is no failure
        cut = (f"\tif (pkt->len < (__u32)pkt->l3_off + (inner == ETH_P_IP ? 20 : 40)) "
               f"{{ slot = {s('skipped')}; goto done; }}")
        if st.inner_dst:
            body.append(f"\tif (!({_prefixes(st.inner_dst)})) {{ slot = {s('skipped')}; goto done; }}")
        if tc:
            if st.l2:  # bpf_skb_adjust_room takes IPv4/IPv6 skbs only
                body.append(f"\tif (ctx->protocol != bpf_htons(ETH_P_IP) && ctx->protocol != "
                            f"bpf_htons(ETH_P_IPV6)) {{ slot = {s('skipped')}; goto done; }}")
            else:
                body.append(f"\tif (({ip_only}) || pkt->l3_off != 14) "
                            f"{{ slot = {s('skipped')}; goto done; }}")
                body.append(cut)
            body += ["\tkeep = e.l2 ? 0 : 14;",
                     "\t/* a GSO packet's segments are sized by the stack; adjust_room shrinks "
                     "them by the overhead */",
                     f"\tif (!ctx->gso_size && e.len + ctx->len - keep > {st.mtu}) "
                     f"{{ slot = {s('too_big')}; goto done; }}",
                     f"\tif (ebp_tc_encap(ctx, &e, bpf_get_hash_recalc(ctx), inner)) "
                     f"{{ slot = {s('failed')}; goto done; }}"]
        else:
            if not st.l2:
                body.append(f"\tif ({ip_only}) {{ slot = {s('skipped')}; goto done; }}")
                body.append(cut)
            body += ["\tkeep = e.l2 ? 0 : pkt->l3_off;",
                     f"\tif (e.len + pkt->len - keep > {st.mtu}) {{ slot = {s('too_big')}; goto done; }}",
                     "\tif (ebp_xdp_encap(ctx, &e, pkt->l3_off, pkt->len, ebp_tunnel_hash(pkt), inner))",
                     f"\t\t{{ slot = {s('failed')}; goto done; }}"]
        body += ["\t(void)keep; (void)push;",
                 f"\tebp_count(&{cnt}, {s('encapsulated')}, pkt->len);",
                 *_reparse(out.hook, "pkt->len + push"), "\treturn EBP_NEXT;"]
        return body

    def features(self, st: EncapStage, protocols) -> Features:
        listed = set(protocols)
        if st.tunnel == "vlan":
            return Features(vlan="vlan" in listed)
        # the flow hash of the outer UDP source port reads addresses and ports
        return Features(vlan="vlan" in listed, ipv4="ipv4" in listed, ipv6="ipv6" in listed,
                        tcp="tcp" in listed, udp="udp" in listed)


GENERATORS = {"decap": DecapGen(), "encap": EncapGen()}
