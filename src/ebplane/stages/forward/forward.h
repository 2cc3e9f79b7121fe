/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Forwarding building blocks for XDP stages: FIB routing with TTL / hop-limit decrement,
 * MAC rewrites, bridge learning and flooding, flow hashing.
 *
 * Every helper returns the XDP action and stores the counter slot of its outcome in *slot;
 * the generated stage function counts it.  Whenever the kernel has work to do that XDP
 * cannot (resolve a neighbour, send an ICMP error, fragment, deliver locally) the helper
 * returns XDP_PASS without having touched the frame.
 */
#ifndef EBPLANE_FORWARD_H
#define EBPLANE_FORWARD_H

#include "ebplane.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define EBP_IP_DF 0x4000

/* Generated into each program from ebplane/stages/forward/gen.py, their one definition:
 *   EBP_RT_<OUTCOME>, EBP_BR_..., EBP_RD_..., EBP_TX_..., EBP_XSK_...  the counter slots of
 *       route, bridge, redirect, tx and xsk stages (gen.py's OUTCOMES; *_SLOTS: how many);
 *       steer: one slot per target CPU (in the order of the spec), then one for no CPU entry
 *   struct ebp_fdb_key, struct ebp_fdb_entry  the bridge's forwarding database
 *   struct ebp_fwd_macs                       the MACs a redirect stage writes
 *   EBP_ETH_ALEN                              bytes of a MAC address */
#ifndef EBP_RT_SLOTS
#error "forward.h needs the #defines ebplane/stages/forward/gen.py generates"
#endif

/* RFC 1624 eqn. 3: the checksum after one 16-bit word changed from @old to @new. */
static __always_inline void ebp_csum_replace16(__sum16 *check, __u16 old, __u16 new)
{
	__u32 sum = (__u16)~*check + (__u16)~old + new;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	*check = (__sum16)~sum;
}

/* Decrement the TTL and patch the header checksum (the TTL shares a word with protocol). */
static __always_inline void ebp_ipv4_dec_ttl(struct ebp_ipv4_hdr *ip)
{
	__u16 *word = (__u16 *)&ip->ttl;
	__u16 old = *word;

	ip->ttl--;
	ebp_csum_replace16(&ip->check, old, *word);
}

static __always_inline void ebp_set_macs(struct ethhdr *eth, const __u8 *dmac, const __u8 *smac)
{
	__builtin_memcpy(eth->h_dest, dmac, EBP_ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, EBP_ETH_ALEN);
}

static __always_inline void ebp_swap_macs(struct ethhdr *eth)
{
	__u8 tmp[EBP_ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_dest, EBP_ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, EBP_ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, EBP_ETH_ALEN);
}

/* The route slot of a bpf_fib_lookup() result other than success. */
static __always_inline __u32 ebp_fib_slot(int rc, int may_fragment)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return EBP_RT_NO_NEIGH;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return EBP_RT_LOCAL;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return EBP_RT_BLACKHOLE;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return may_fragment ? EBP_RT_FRAG : EBP_RT_MTU;
	default:
		return EBP_RT_OTHER;
	}
}

/* Look the packet up in the kernel's FIB; on success redirect it through @ports (a DEVMAP
 * keyed by ifindex holding the interfaces that can take redirected frames), with the TTL /
 * hop limit decremented and the MACs of the next hop.  Untagged frames only. */
static __always_inline int ebp_fwd_route(struct xdp_md *ctx, struct ebp_pkt *pkt, int malformed,
					 void *ports, __u32 *slot)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct bpf_fib_lookup fib = {};
	int rc, act;

	if (malformed) {
		*slot = EBP_RT_MALFORMED;
		return XDP_PASS;
	}
	if (pkt->family != 4 && pkt->family != 6) {
		*slot = EBP_RT_NOT_IP;
		return EBP_NEXT;
	}
	/* the IP header right after Ethernet: no VLAN tag, no MPLS label, ... */
	if (pkt->n_vlan || (pkt->eth_proto != ETH_P_IP && pkt->eth_proto != ETH_P_IPV6)) {
		*slot = EBP_RT_OTHER;
		return XDP_PASS;
	}
	fib.ifindex = ctx->ingress_ifindex;
#ifdef EBP_PARSE_IPV4
	if (pkt->family == 4) {
		struct ebp_ipv4_hdr *ip = data + sizeof(*eth);

		if ((void *)(ip + 1) > data_end) {
			*slot = EBP_RT_MALFORMED;
			return XDP_PASS;
		}
		if (ip->ttl <= 1) {
			*slot = EBP_RT_TTL_EXCEEDED;
			return XDP_PASS;
		}
		fib.family = AF_INET;
		fib.tos = ip->tos;
		fib.l4_protocol = ip->protocol;
		fib.tot_len = bpf_ntohs(ip->tot_len);
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
			*slot = ebp_fib_slot(rc, !(ip->frag_off & bpf_htons(EBP_IP_DF)));
			return XDP_PASS;
		}
		act = bpf_redirect_map(ports, fib.ifindex, XDP_PASS);
		if (act != XDP_REDIRECT) {
			*slot = EBP_RT_NO_PORT;
			return XDP_PASS;
		}
		ebp_ipv4_dec_ttl(ip);
		ebp_set_macs(eth, fib.dmac, fib.smac);
		*slot = EBP_RT_FORWARDED;
		return act;
	}
#endif
#ifdef EBP_PARSE_IPV6
	if (pkt->family == 6) {
		struct ebp_ipv6_hdr *ip6 = data + sizeof(*eth);

		if ((void *)(ip6 + 1) > data_end) {
			*slot = EBP_RT_MALFORMED;
			return XDP_PASS;
		}
		/* multicast, and link-local source or destination: never forwarded */
		if (ip6->daddr[0] == 0xff ||
		    (ip6->daddr[0] == 0xfe && (ip6->daddr[1] & 0xc0) == 0x80) ||
		    (ip6->saddr[0] == 0xfe && (ip6->saddr[1] & 0xc0) == 0x80)) {
			*slot = EBP_RT_LOCAL;
			return XDP_PASS;
		}
		if (ip6->hop_limit <= 1) {
			*slot = EBP_RT_TTL_EXCEEDED;
			return XDP_PASS;
		}
		fib.family = AF_INET6;
		fib.flowinfo = ip6->ver_tc_flow & bpf_htonl(0x0fffffff);
		fib.l4_protocol = ip6->nexthdr;
		fib.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		__builtin_memcpy(fib.ipv6_src, ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, ip6->daddr, 16);
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
			*slot = ebp_fib_slot(rc, 0);	/* IPv6 routers never fragment */
			return XDP_PASS;
		}
		act = bpf_redirect_map(ports, fib.ifindex, XDP_PASS);
		if (act != XDP_REDIRECT) {
			*slot = EBP_RT_NO_PORT;
			return XDP_PASS;
		}
		ip6->hop_limit--;	/* IPv6 has no header checksum */
		ebp_set_macs(eth, fib.dmac, fib.smac);
		*slot = EBP_RT_FORWARDED;
		return act;
	}
#endif
	*slot = EBP_RT_NOT_IP;
	return EBP_NEXT;
}

/* Learn the source MAC on the ingress port (written at most once a second per MAC, so a
 * busy flow does not bounce the entry's cache line between CPUs); counts learn / move. */
static __always_inline void ebp_bridge_learn(void *fdb, void *counters, struct ethhdr *eth,
					     __u16 vlan, __u32 ingress, __u64 now, __u32 len)
{
	struct ebp_fdb_key key = { .vlan = vlan };
	struct ebp_fdb_entry *e, fresh = { .ifindex = ingress, .seen_ns = now };

	if (eth->h_source[0] & 1)	/* a multicast source is bogus: never learn it */
		return;
	__builtin_memcpy(key.mac, eth->h_source, EBP_ETH_ALEN);
	e = bpf_map_lookup_elem(fdb, &key);
	if (e && e->ifindex == ingress && now - e->seen_ns < 1000000000ULL)
		return;
	if (!e)
		ebp_count(counters, EBP_BR_LEARNED, len);
	else if (e->ifindex != ingress)
		ebp_count(counters, EBP_BR_MOVED, len);
	bpf_map_update_elem(fdb, &key, &fresh, BPF_ANY);
}

#ifndef EBP_XDP_MULTI_BUFFER
#define EBP_XDP_MULTI_BUFFER
/* Whether the frame spans several buffers (only an xdp.frags program sees such frames). */
static __always_inline int ebp_xdp_multi_buffer(struct xdp_md *ctx)
{
	return bpf_xdp_get_buff_len(ctx) > (__u64)(ctx->data_end - ctx->data);
}
#endif

/* Flood: every port but the ingress; a multi-buffer frame, which the kernel's devmap
 * broadcast would drop without a trace, goes to the kernel instead. */
static __always_inline int ebp_bridge_flood(struct xdp_md *ctx, void *ports, __u32 slot,
					    __u32 *out)
{
	if (ebp_xdp_multi_buffer(ctx)) {
		*out = EBP_BR_MULTI_BUFFER;
		return XDP_PASS;
	}
	*out = slot;
	return bpf_redirect_map(ports, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
}

/* Bridge between the interfaces of @ports (a DEVMAP_HASH keyed by ifindex). */
static __always_inline int ebp_fwd_bridge(struct xdp_md *ctx, struct ebp_pkt *pkt, void *ports,
					  void *fdb, void *counters, __u64 ageing_ns, __u32 *slot)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ingress = ctx->ingress_ifindex;
	__u16 vlan = pkt->n_vlan ? pkt->vlan : 0;
	struct ebp_fdb_key key = { .vlan = vlan };
	struct ebp_fdb_entry *e;
	__u64 now;
	int act;

	if ((void *)(eth + 1) > data_end) {
		*slot = EBP_BR_RUNT;
		return XDP_DROP;
	}
	if (!bpf_map_lookup_elem(ports, &ingress)) {
		*slot = EBP_BR_NOT_PORT;
		return EBP_NEXT;
	}
	now = bpf_ktime_get_ns();
	ebp_bridge_learn(fdb, counters, eth, vlan, ingress, now, pkt->len);
	if (eth->h_dest[0] & 1)	/* broadcast and multicast */
		return ebp_bridge_flood(ctx, ports, EBP_BR_BROADCAST, slot);
	__builtin_memcpy(key.mac, eth->h_dest, EBP_ETH_ALEN);
	e = bpf_map_lookup_elem(fdb, &key);
	if (e && now - e->seen_ns <= ageing_ns) {
		if (e->ifindex == ingress) {
			*slot = EBP_BR_FILTERED;
			return XDP_DROP;
		}
		act = bpf_redirect_map(ports, e->ifindex, XDP_ABORTED);
		if (act == XDP_REDIRECT) {
			*slot = EBP_BR_FORWARDED;
			return act;
		}
	}
	/* unknown, aged, or its port left the bridge */
	return ebp_bridge_flood(ctx, ports, EBP_BR_FLOODED, slot);
}

/* A flow hash over addresses, protocol and ports (non-IP: the EtherType), so that all
 * packets of a flow land on one CPU. */
static __always_inline __u32 ebp_hash_step(__u32 h, __u32 v)
{
	h ^= v * 0x9e3779b1u;
	h = (h << 15) | (h >> 17);
	return h * 5u + 0x7feb352du;
}

static __always_inline __u32 ebp_flow_hash(const struct ebp_pkt *pkt)
{
	__u32 h = 0x2545f491u;

	if (!pkt->family)
		return ebp_hash_step(h, pkt->eth_proto);
	for (int i = 0; i < 4; i++) {
		h = ebp_hash_step(h, pkt->src32[i]);
		h = ebp_hash_step(h, pkt->dst32[i]);
	}
	h = ebp_hash_step(h, pkt->proto);
	h = ebp_hash_step(h, ((__u32)pkt->sport << 16) | pkt->dport);
	h ^= h >> 16;		/* final avalanche */
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

#endif
