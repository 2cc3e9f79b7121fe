/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Header stages (encap, decap): VLAN tags and tunnels pushed and popped.
 *
 * The generated stage function finds what to remove (decap: from the parser's header offsets)
 * or builds what to add (encap: the outer headers as constant bytes, made by the generator
 * from the spec) and calls one primitive here; each returns 0, or -1 when a kernel helper
 * refused (the packet may then be half changed: the stage drops it).  Offsets:
 *
 *   decap, inner Ethernet frame (VXLAN, GENEVE/GRE carrying 0x6558):  [0, to) removed
 *   decap, inner IP packet (IPIP, GRE, a user header):  [from, to) removed, from = the end
 *     of the Ethernet header and VLAN tags, whose last EtherType becomes the inner one's
 *   encap, Ethernet tunnels: outer Ethernet + outer[] in front of the frame
 *   encap, IP tunnels: outer[] inserted after the Ethernet header and VLAN tags
 *   (outer[]: an IPv4 or IPv6 header, then UDP + VXLAN/GENEVE, or GRE, or nothing)
 *
 * XDP moves the frame's start with bpf_xdp_adjust_head; TC uses bpf_skb_adjust_room at the
 * MAC layer with the ENCAP/DECAP flags, so GSO packets are segmented right afterwards and
 * skb->protocol follows the outer (encap) or inner (decap) family.  Every store at TC passes
 * BPF_F_RECOMPUTE_CSUM: a CHECKSUM_COMPLETE skb's sum covers the MAC header while tc runs.
 */
#ifndef EBPLANE_ENCAP_H
#define EBPLANE_ENCAP_H

/* newer than Debian 12's uapi header (kernel 6.3) */
#define EBP_ADJ_DECAP_L3_IPV4 (1ULL << 7)
#define EBP_ADJ_DECAP_L3_IPV6 (1ULL << 8)

/* EBP_ENCAP_OUTER_MAX (bytes of outer headers a stage may add) and struct ebp_encap (an
 * encap stage's outer headers, which the generator makes from the spec: a constant per
 * stage) are generated into each program from their one definition in
 * ebplane/stages/encap/gen.py (OUTER_MAX, the Layout ENCAP). */
#ifndef EBP_ENCAP_OUTER_MAX
#error "encap.h needs the #define and struct ebplane/stages/encap/gen.py generates"
#endif

/* data + n for n = 14, 18 or 22: a constant offset on each path, which the verifier tracks */
static __always_inline void *ebp_encap_at_l3(void *data, __u32 n)
{
	if (n == 22)
		return data + 22;
	if (n == 18)
		return data + 18;
	return data + 14;
}

/* copy n bytes (a constant at every call once inlined: 4, 12, 14, 18 or 22) */
#define EBP_ENCAP_COPY(dst, src, n) do {                                  \
		if ((n) == 22) __builtin_memcpy(dst, src, 22);          \
		else if ((n) == 18) __builtin_memcpy(dst, src, 18);     \
		else __builtin_memcpy(dst, src, 14);                    \
	} while (0)

static __always_inline __u16 ebp_encap_ipv4_csum(const void *iph)
{
	const __u16 *w = iph;
	__u32 s = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s & 0xffff;
}

/* the inner flow's hash (addresses, protocol, ports), for the outer UDP source port */
static __always_inline __u32 ebp_tunnel_hash(const struct ebp_pkt *pkt)
{
	__u32 h = 0x9e3779b9u ^ pkt->eth_proto ^ ((__u32)pkt->proto << 16);

#pragma unroll
	for (int i = 0; i < 4; i++) {
		h ^= pkt->src32[i];
		h *= 0x85ebca6bu;
		h ^= pkt->dst32[i];
		h = (h << 13) | (h >> 19);
	}
	h ^= ((__u32)pkt->sport << 16) | pkt->dport;
	h ^= h >> 16;
	h *= 0x7feb352du;
	h ^= h >> 15;
	h *= 0x846ca68bu;
	h ^= h >> 16;
	return h;
}

/* UDP source port from a flow hash: 49152-65535, like RFC 6335's dynamic range */
static __always_inline __u16 ebp_encap_sport(__u32 hash)
{
	return 49152 | (hash & 0x3fff);
}

/* the per-packet fields of outer[] (a copy on the stack): lengths, IPv4 checksum, UDP source
 * port and IPv6 flow label from the inner flow's hash, GRE / IPIP protocol */
static __always_inline void ebp_outer_fill(__u8 *o, const struct ebp_encap *e, __u32 inner_len,
					   __u32 hash, __u16 inner_proto)
{
	__u32 ip_len = e->v6 ? 40 : 20;
	__u8 ipip = inner_proto == ETH_P_IPV6 ? 41 : 4;

	if (e->v6) {
		struct ebp_ipv6_hdr *ip6 = (void *)o;

		(void)ip6;
		/* version 6, traffic class 0, flow label from the hash (RFC 6438); two 16-bit
		 * stores: at TC outer[] sits 2 bytes off a 4-byte boundary on the stack */
		*(__be16 *)o = bpf_htons(0x6000 | ((hash >> 16) & 0xf));
		*(__be16 *)(o + 2) = bpf_htons(hash & 0xffff);
		ip6->payload_len = bpf_htons(e->len - 40 + inner_len);
		if (e->ipip)
			ip6->nexthdr = ipip;
	} else {
		struct ebp_ipv4_hdr *ip = (void *)o;

		ip->tot_len = bpf_htons(e->len + inner_len);
		if (e->ipip)
			ip->protocol = ipip;
	}
	if (e->udp) {
		*(__be16 *)(o + ip_len) = bpf_htons(ebp_encap_sport(hash));
		*(__be16 *)(o + ip_len + 4) = bpf_htons(e->len - ip_len + inner_len);
	}
	if (e->gre)
		*(__be16 *)(o + ip_len + 2) = bpf_htons(inner_proto);
	if (!e->v6) {
		struct ebp_ipv4_hdr *ip = (void *)o;

		ip->check = 0;
		ip->check = ebp_encap_ipv4_csum(ip);
	}
}

/* write outer[] (n = e->len bytes) at p, checked against data_end */
#define EBP_OUTER_CASE(N) else if (n == N) { \
		if (p + N > data_end) return -1; \
		__builtin_memcpy(p, o, N); }
static __always_inline int ebp_outer_put(void *p, void *data_end, const __u8 *o, __u32 n)
{
	if (0) { }
	EBP_OUTER_CASE(20) EBP_OUTER_CASE(24) EBP_OUTER_CASE(28) EBP_OUTER_CASE(36)
	EBP_OUTER_CASE(40) EBP_OUTER_CASE(44) EBP_OUTER_CASE(48) EBP_OUTER_CASE(56)
	else return -1;
	return 0;
}

/* -- XDP ------------------------------------------------------------------------------------- */

/* decap: remove [from, to); from = 0 (inner Ethernet frame) or the end of the Ethernet header
 * and tags (14, 18, 22), whose EtherType becomes inner_proto */
static __always_inline int ebp_xdp_decap(struct xdp_md *ctx, __u32 from, __u32 to,
					 __u16 inner_proto)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u8 eth[22];

	if (!from)
		return bpf_xdp_adjust_head(ctx, to) ? -1 : 0;
	if (from != 14 && from != 18 && from != 22)
		return -1;
	if (data + 22 > data_end)
		return -1;
	__builtin_memcpy(eth, data, 22);
	if (bpf_xdp_adjust_head(ctx, to - from))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 22 > data_end)
		return -1;
	EBP_ENCAP_COPY(data, eth, from);
	*(__be16 *)(ebp_encap_at_l3(data, from) - 2) = bpf_htons(inner_proto);
	return 0;
}

/* encap: l3_off = end of the Ethernet header and tags; frame_len = the whole frame */
static __always_inline int ebp_xdp_encap(struct xdp_md *ctx, const struct ebp_encap *e,
					 __u32 l3_off, __u32 frame_len, __u32 hash,
					 __u16 inner_proto)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u32 keep = e->l2 ? 0 : l3_off;   /* bytes that stay in front of outer[] */
	__u32 push = e->len + (e->l2 ? 14 : 0);
	__u8 eth[22], o[EBP_ENCAP_OUTER_MAX];
	void *p;

	if (keep && keep != 14 && keep != 18 && keep != 22)
		return -1;
	if (e->l2) {     /* any frame, down to a bare Ethernet header */
		if (data + 14 > data_end)
			return -1;
		__builtin_memcpy(eth, data, 14);
	} else {         /* an IP packet follows: at least 22 bytes */
		if (data + 22 > data_end)
			return -1;
		__builtin_memcpy(eth, data, 22);
	}
	__builtin_memcpy(o, e->outer, EBP_ENCAP_OUTER_MAX);
	ebp_outer_fill(o, e, frame_len - keep, hash, inner_proto);
	if (bpf_xdp_adjust_head(ctx, -(int)push))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 22 > data_end)
		return -1;
	if (e->l2) {
		if (e->set_mac)
			__builtin_memcpy(data, e->mac, 12);
		else
			__builtin_memcpy(data, eth, 12);   /* the frame's own addresses */
		*(__be16 *)(data + 12) = bpf_htons(e->v6 ? ETH_P_IPV6 : ETH_P_IP);
		p = data + 14;
	} else {
		EBP_ENCAP_COPY(data, eth, keep);
		if (e->set_mac)
			__builtin_memcpy(data, e->mac, 12);
		p = ebp_encap_at_l3(data, keep);
		*(__be16 *)(p - 2) = bpf_htons(e->v6 ? ETH_P_IPV6 : ETH_P_IP);
	}
	return ebp_outer_put(p, data_end, o, e->len);
}

/* VLAN: push a tag in front of the existing ones (tpid 0x8100 or 0x88a8) */
static __always_inline int ebp_xdp_vlan_push(struct xdp_md *ctx, __u16 tpid, __u16 tci)
{
	void *data, *data_end;
	__u8 macs[12];

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 14 > data_end)
		return -1;
	__builtin_memcpy(macs, data, 12);
	if (bpf_xdp_adjust_head(ctx, -4))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 18 > data_end)
		return -1;
	__builtin_memcpy(data, macs, 12);
	*(__be16 *)(data + 12) = bpf_htons(tpid);
	*(__be16 *)(data + 14) = bpf_htons(tci);
	return 0;
}

/* VLAN: remove the outer tag (the frame has one: the caller checked) */
static __always_inline int ebp_xdp_vlan_pop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u8 macs[12];

	if (data + 18 > data_end)
		return -1;
	__builtin_memcpy(macs, data, 12);
	if (bpf_xdp_adjust_head(ctx, 4))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 14 > data_end)
		return -1;
	__builtin_memcpy(data, macs, 12);
	return 0;
}

/* -- TC -------------------------------------------------------------------------------------- */

/* decap at TC: the MAC header is 14 bytes (the kernel keeps VLAN tags in skb->vlan_tci) */
static __always_inline int ebp_tc_decap(struct __sk_buff *ctx, __u32 from, __u32 to,
					__u16 inner_proto)
{
	__u64 flags = inner_proto == ETH_P_IPV6 ? EBP_ADJ_DECAP_L3_IPV6 : EBP_ADJ_DECAP_L3_IPV4;
	__be16 proto = bpf_htons(inner_proto);
	__u8 eth[14];

	if (!from) {
		/* the inner Ethernet header replaces the outer one; [14, to + 14) goes */
		if (bpf_skb_load_bytes(ctx, to, eth, 14))
			return -1;
		if (bpf_skb_adjust_room(ctx, -(__s32)to, BPF_ADJ_ROOM_MAC, flags))
			return -1;
		return bpf_skb_store_bytes(ctx, 0, eth, 14, BPF_F_RECOMPUTE_CSUM) ? -1 : 0;
	}
	if (from != 14)
		return -1;
	if (bpf_skb_adjust_room(ctx, -(__s32)(to - from), BPF_ADJ_ROOM_MAC, flags))
		return -1;
	return bpf_skb_store_bytes(ctx, 12, &proto, 2, BPF_F_RECOMPUTE_CSUM) ? -1 : 0;
}

/* the EtherType of an inner Ethernet frame at offset to (0: cut short) */
static __always_inline __u16 ebp_tc_inner_ethertype(struct __sk_buff *ctx, __u32 to)
{
	__be16 et;

	if (bpf_skb_load_bytes(ctx, to + 12, &et, 2))
		return 0;
	return bpf_ntohs(et);
}

#define EBP_TC_GROW(N) else if (n == N) { \
		if (bpf_skb_adjust_room(ctx, N, BPF_ADJ_ROOM_MAC, flags)) return -1; \
		return bpf_skb_store_bytes(ctx, 0, buf, 14 + N, BPF_F_RECOMPUTE_CSUM) ? -1 : 0; }

static __always_inline int ebp_tc_encap(struct __sk_buff *ctx, const struct ebp_encap *e,
					__u32 hash, __u16 inner_proto)
{
	__u8 buf[14 + EBP_ENCAP_OUTER_MAX + 14];   /* outer Ethernet, outer[], inner Ethernet */
	__u64 flags = e->v6 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV4;
	__u32 inner_len = ctx->len - (e->l2 ? 0 : 14);
	__u32 n = e->len;
	__be16 et = bpf_htons(e->v6 ? ETH_P_IPV6 : ETH_P_IP);

	if (bpf_skb_load_bytes(ctx, 0, buf, 14))
		return -1;
	__builtin_memcpy(buf + 14, e->outer, EBP_ENCAP_OUTER_MAX);
	ebp_outer_fill(buf + 14, e, inner_len, hash, inner_proto);
	if (e->udp)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	if (e->gre)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L4_GRE;
	if (e->l2) {
		/* [outer eth][outer[]][inner eth]: the room goes after the MAC header; every
		 * Ethernet tunnel is UDP: 36 bytes over IPv4, 56 over IPv6 */
		flags |= BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(14);
		if (n == 36)
			__builtin_memcpy(buf + 14 + 36, buf, 14);
		else if (n == 56)
			__builtin_memcpy(buf + 14 + 56, buf, 14);
		else
			return -1;
		if (e->set_mac)
			__builtin_memcpy(buf, e->mac, 12);
		__builtin_memcpy(buf + 12, &et, 2);
		if (bpf_skb_adjust_room(ctx, n + 14, BPF_ADJ_ROOM_MAC, flags))
			return -1;
		if (n == 36)
			return bpf_skb_store_bytes(ctx, 0, buf, 14 + 36 + 14, BPF_F_RECOMPUTE_CSUM) ? -1 : 0;
		return bpf_skb_store_bytes(ctx, 0, buf, 14 + 56 + 14, BPF_F_RECOMPUTE_CSUM) ? -1 : 0;
	}
	if (e->set_mac)
		__builtin_memcpy(buf, e->mac, 12);
	__builtin_memcpy(buf + 12, &et, 2);
	if (0) { }
	EBP_TC_GROW(20) EBP_TC_GROW(24) EBP_TC_GROW(28)
	EBP_TC_GROW(40) EBP_TC_GROW(44) EBP_TC_GROW(48)
	return -1;
}

#endif /* EBPLANE_ENCAP_H */
