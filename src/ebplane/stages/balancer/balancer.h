/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The balancer stage: an L4 load balancer for virtual IPs in XDP (ebplane.stages.balancer).
 *
 * A packet to a VIP (address, port, protocol) is sent to one of the VIP's backends,
 * encapsulated (IPIP or GUE, outer IPv4 or IPv6 after the backend's family) so that the
 * backend decapsulates it with the kernel's own ipip/ip6tnl/fou devices and answers the
 * client directly (direct server return).
 *
 * Choosing the backend:
 * - the connection table (LRU hash, by the flow's 5-tuple) keeps the backend of every flow
 *   seen, so a flow stays on its backend when the backend set changes; an entry naming a
 *   backend that was removed since (its slot's generation moved on) is chosen anew;
 * - a new flow takes the backend of its entry in the VIP's Maglev lookup table, at
 *   hash(5-tuple) mod M.  The table has two halves per VIP; the control plane rewrites the
 *   inactive half (only the entries that change), then flips the VIP's half index (one
 *   aligned 32-bit store, read once per packet): a packet sees the old table or the new
 *   one, never a mix.  A backend marked down has no Maglev entries (no new flows) but keeps
 *   its established flows (draining).
 *
 * IP fragments: the first fragment (it carries the ports) is balanced like any packet and
 * its backend recorded in the pipeline's fragment table (ebp_frags, filter.h) under the
 * datagram's IP id; later fragments follow it.  A later fragment whose first was not seen
 * goes to the kernel's stack (counted).
 *
 * Packet too big: when the encapsulated packet would exceed the stage's MTU, the stage
 * answers an IPv4 packet with DF set with ICMP "fragmentation needed" (an IPv6 packet with
 * ICMPv6 "packet too big"), from the VIP, giving MTU minus the encapsulation overhead; an
 * IPv4 packet without DF goes to the kernel's stack.  An ICMP "fragmentation needed" /
 * "packet too big" that a router sends to a VIP (about a backend's direct reply) is sent to
 * the backend of the flow it quotes, so the backend's socket learns the path MTU.
 *
 * Transmit: the outer destination is looked up in the kernel's FIB (as a packet forwarded
 * from the ingress interface: forwarding must be enabled on it, else the lookup fails and
 * the frame goes to the stack); on success the frame
 * leaves by XDP_TX (same interface) or bpf_redirect; otherwise (no neighbour yet, no route)
 * the encapsulated frame goes to the kernel's stack, which resolves and forwards it.
 *
 */
#ifndef EBPLANE_BALANCER_H
#define EBPLANE_BALANCER_H

#include "ebplane.h"
#include "filter.h"	/* the fragment table: ebp_frag_key, ebp_frag_read, ebp_frag_record */

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* Counter slots (EBP_LB_NEW, EBP_LB_KNOWN, ... EBP_LB_NCOUNTERS), backend states
 * (EBP_LB_UNUSED, _UP, _DOWN), encapsulations (EBP_LB_ENCAP_IPIP, _GUE) and the Maglev
 * entry of a VIP without backends up (EBP_LB_EMPTY) are #defines the
 * generator writes into the program from ebplane.stages.balancer.gen. */

/* struct ebp_lb_vip_key, ebp_lb_vip, ebp_lb_backend, ebp_lb_flow, ebp_lb_conn (the maps'
 * keys and values) and ebp_lb_params (what the generator compiles into the stage) are
 * generated into each program from their one definition in ebplane/stages/balancer/gen.py
 * (Layouts; the control plane packs them with the same objects).  Addresses are 4 words
 * (IPv4: word 0, the others 0). */
#ifndef EBP_LB_NCOUNTERS
#error "balancer.h needs the #defines and structs ebplane/stages/balancer/gen.py generates"
#endif

/* count the outcome of a packet the stage decides, and say which it was (trace, replay) */
static __always_inline void ebp_lb_outcome(void *counters, __u32 slot, __u32 len,
					   __u32 *outcome)
{
	ebp_count(counters, slot, len);
	*outcome = slot;
}

/* -- the flow hash: murmur3's 32-bit mixing, over the source address, the ports and the
 * protocol (ebplane.stages.balancer.maglev.flow_hash computes the same in Python) */
static __always_inline __u32 ebp_lb_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 ebp_lb_hash(const struct ebp_lb_flow *f)
{
	__u32 h = 0x5eed1b1b;

	h = ebp_lb_mix(h, f->src[0]);
	h = ebp_lb_mix(h, f->src[1]);
	h = ebp_lb_mix(h, f->src[2]);
	h = ebp_lb_mix(h, f->src[3]);
	h = ebp_lb_mix(h, (__u32)f->sport << 16 | f->dport);
	h = ebp_lb_mix(h, f->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u16 ebp_lb_fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline __u16 ebp_lb_ip_csum(const struct ebp_ipv4_hdr *ip)
{
	const __u16 *w = (const void *)ip;
	__u64 s = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	return ebp_lb_fold(s);
}

/* -- packet too big: answer from the VIP -------------------------------------------------
 * The reply quotes the packet's IP header and the 8 bytes after it.  The frame grows by
 * the new IP and ICMP headers in front, and is cut after the quote. */
#define EBP_LB_QUOTE4 (20 + 8)
#define EBP_LB_QUOTE6 (40 + 8)

static __always_inline int ebp_lb_answer_too_big4(struct xdp_md *ctx, __u32 mtu)
{
	void *data, *data_end;
	struct ethhdr *eth, old;
	struct ebp_ipv4_hdr *ip, *q;
	__u8 *icmp;
	__u32 len;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(old) > data_end)
		return XDP_DROP;
	__builtin_memcpy(&old, data, sizeof(old));
	if (bpf_xdp_adjust_head(ctx, -(int)(20 + 8)))
		return XDP_DROP;
	len = bpf_xdp_get_buff_len(ctx);
	if (len > 14 + 28 + EBP_LB_QUOTE4 &&
	    bpf_xdp_adjust_tail(ctx, (int)(14 + 28 + EBP_LB_QUOTE4) - (int)len))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 14 + 28 + EBP_LB_QUOTE4 > data_end)
		return XDP_DROP;
	eth = data;
	ip = data + 14;
	icmp = data + 14 + 20;
	q = data + 14 + 28;
	__builtin_memcpy(eth->h_dest, old.h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old.h_dest, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ip->ver_ihl = 0x45;
	ip->tos = 0;
	ip->tot_len = bpf_htons(28 + EBP_LB_QUOTE4);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->check = 0;
	ip->saddr = q->daddr;	/* from the VIP */
	ip->daddr = q->saddr;
	ip->check = ebp_lb_ip_csum(ip);
	icmp[0] = 3;		/* destination unreachable */
	icmp[1] = 4;		/* fragmentation needed and DF set */
	icmp[2] = icmp[3] = icmp[4] = icmp[5] = 0;
	icmp[6] = mtu >> 8;
	icmp[7] = mtu & 0xff;
	{
		const __u16 *w = (const void *)icmp;
		__u64 s = 0;

#pragma unroll
		for (int i = 0; i < (8 + EBP_LB_QUOTE4) / 2; i++)
			s += w[i];
		*(__u16 *)(icmp + 2) = ebp_lb_fold(s);
	}
	return XDP_TX;
}

static __always_inline int ebp_lb_answer_too_big6(struct xdp_md *ctx, __u32 mtu)
{
	void *data, *data_end;
	struct ethhdr *eth, old;
	struct ebp_ipv6_hdr *ip6, *q;
	__u8 *icmp;
	__u32 len;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(old) > data_end)
		return XDP_DROP;
	__builtin_memcpy(&old, data, sizeof(old));
	if (bpf_xdp_adjust_head(ctx, -(int)(40 + 8)))
		return XDP_DROP;
	len = bpf_xdp_get_buff_len(ctx);
	if (len > 14 + 48 + EBP_LB_QUOTE6 &&
	    bpf_xdp_adjust_tail(ctx, (int)(14 + 48 + EBP_LB_QUOTE6) - (int)len))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 14 + 48 + EBP_LB_QUOTE6 > data_end)
		return XDP_DROP;
	eth = data;
	ip6 = data + 14;
	icmp = data + 14 + 40;
	q = data + 14 + 48;
	__builtin_memcpy(eth->h_dest, old.h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, old.h_dest, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	ip6->ver_tc_flow = bpf_htonl(0x60000000);
	ip6->payload_len = bpf_htons(8 + EBP_LB_QUOTE6);
	ip6->nexthdr = IPPROTO_ICMPV6;
	ip6->hop_limit = 64;
	__builtin_memcpy(ip6->saddr, q->daddr, 16);	/* from the VIP */
	__builtin_memcpy(ip6->daddr, q->saddr, 16);
	icmp[0] = 2;		/* packet too big */
	icmp[1] = 0;
	icmp[2] = icmp[3] = 0;
	icmp[4] = mtu >> 24;
	icmp[5] = mtu >> 16;
	icmp[6] = mtu >> 8;
	icmp[7] = mtu & 0xff;
	{
		const __u16 *w = (const void *)icmp;
		const __u16 *a = (const void *)ip6->saddr;	/* saddr and daddr: 32 bytes */
		__u64 s = bpf_htons(8 + EBP_LB_QUOTE6) + bpf_htons(IPPROTO_ICMPV6);

#pragma unroll
		for (int i = 0; i < 16; i++)
			s += a[i];
#pragma unroll
		for (int i = 0; i < (8 + EBP_LB_QUOTE6) / 2; i++)
			s += w[i];
		*(__u16 *)(icmp + 2) = ebp_lb_fold(s);
	}
	return XDP_TX;
}

/* -- encapsulation --------------------------------------------------------------------------
 * The inner packet is what follows the Ethernet header (untagged frames only).  Outer
 * headers: IPv4 (DF set, TTL 64, the inner TOS) or IPv6 (hop limit 64, the inner traffic
 * class, the flow hash as flow label), then for GUE a UDP header (source port from the flow
 * hash, 49152-65535; destination the GUE port; checksum 0: IPv4 allows it and RFC 6935 lets
 * tunnels over IPv6 do so, see docs/l4.md) directly followed by the inner IP
 * packet (GUE variant 1, what `ip fou add PORT gue` and `ipproto 4|41` both decapsulate). */
static __always_inline int ebp_lb_encap(struct xdp_md *ctx, const struct ebp_lb_params *p,
					const struct ebp_lb_backend *be, __u8 inner_family,
					__u32 inner_len, __u8 tos, __u32 hash)
{
	void *data, *data_end;
	struct ethhdr old;
	__u32 gue = p->encap == EBP_LB_ENCAP_GUE ? 8 : 0;
	__u32 ovh = (be->family == 4 ? 20 : 40) + gue;
	__u8 next = gue ? IPPROTO_UDP : inner_family == 4 ? IPPROTO_IPIP : IPPROTO_IPV6;

	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(old) > data_end)
		return -1;
	__builtin_memcpy(&old, data, sizeof(old));
	if (bpf_xdp_adjust_head(ctx, -(int)ovh))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (be->family == 4) {
		struct ethhdr *eth = data;
		struct ebp_ipv4_hdr *ip = data + sizeof(*eth);

		if ((void *)(ip + 1) + 8 > data_end)
			return -1;
		__builtin_memcpy(eth, &old, sizeof(old));
		eth->h_proto = bpf_htons(ETH_P_IP);
		ip->ver_ihl = 0x45;
		ip->tos = tos;
		ip->tot_len = bpf_htons(inner_len + ovh);
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000);
		ip->ttl = 64;
		ip->protocol = next;
		ip->check = 0;
		ip->saddr = p->src4;
		ip->daddr = be->addr[0];
		ip->check = ebp_lb_ip_csum(ip);
		if (gue) {
			__be16 *udp = (void *)(ip + 1);

			udp[0] = bpf_htons(0xc000 | (hash & 0x3fff));
			udp[1] = bpf_htons(p->gue_port);
			udp[2] = bpf_htons(inner_len + 8);
			udp[3] = 0;
		}
	} else {
		struct ethhdr *eth = data;
		struct ebp_ipv6_hdr *ip6 = data + sizeof(*eth);

		if ((void *)(ip6 + 1) + 8 > data_end)
			return -1;
		__builtin_memcpy(eth, &old, sizeof(old));
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		ip6->ver_tc_flow = bpf_htonl(0x60000000 | (__u32)tos << 20 | (hash & 0xfffff));
		ip6->payload_len = bpf_htons(inner_len + gue);
		ip6->nexthdr = next;
		ip6->hop_limit = 64;
		__builtin_memcpy(ip6->saddr, p->src6, 16);
		__builtin_memcpy(ip6->daddr, be->addr, 16);
		if (gue) {
			__be16 *udp = (void *)(ip6 + 1);

			udp[0] = bpf_htons(0xc000 | (hash & 0x3fff));
			udp[1] = bpf_htons(p->gue_port);
			udp[2] = bpf_htons(inner_len + 8);
			udp[3] = 0;
		}
	}
	return 0;
}

/* send the encapsulated frame toward the outer destination */
static __always_inline int ebp_lb_xmit(struct xdp_md *ctx, const struct ebp_lb_params *p,
				       const struct ebp_lb_backend *be, __u32 outer_len,
				       void *counters, __u32 len, __u32 *outcome)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct bpf_fib_lookup fib = {};
	int rc;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	fib.ifindex = ctx->ingress_ifindex;
	fib.tot_len = outer_len;
	if (be->family == 4) {
		fib.family = AF_INET;
		fib.ipv4_src = p->src4;
		fib.ipv4_dst = be->addr[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, p->src6, 16);
		__builtin_memcpy(fib.ipv6_dst, be->addr, 16);
	}
	/* as forwarded from the ingress interface (BPF_FIB_LOOKUP_OUTPUT would bind the lookup
	 * to that interface as the output): forwarding must be enabled on it */
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		ebp_lb_outcome(counters, EBP_LB_ROUTE_STACK, len, outcome);
		return XDP_PASS;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex) {
		ebp_lb_outcome(counters, EBP_LB_TX, len, outcome);
		return XDP_TX;
	}
	ebp_lb_outcome(counters, EBP_LB_REDIRECT, len, outcome);
	return bpf_redirect(fib.ifindex, 0);
}

/* The backend of a flow: its connection entry, else the VIP's Maglev table. */
static __always_inline struct ebp_lb_backend *
ebp_lb_pick(const struct ebp_lb_params *p, const struct ebp_lb_vip *vip,
	    const struct ebp_lb_flow *f, __u32 hash, void *conns, void *table, void *halves,
	    void *backends, void *counters, void *per_backend, __u32 len, __u32 *chosen)
{
	struct ebp_lb_conn *c = bpf_map_lookup_elem(conns, f);
	struct ebp_lb_backend *be;
	struct ebp_lb_conn fresh = {};
	__u32 *half, *entry, slot, b, vi = vip->index;
	int rehash = 0;

	if (c) {
		b = c->backend;
		be = bpf_map_lookup_elem(backends, &b);
		if (be && be->gen == c->gen && be->state != EBP_LB_UNUSED) {
			ebp_count(counters, EBP_LB_KNOWN, len);
			*chosen = b;
			return be;
		}
		rehash = 1;
	}
	half = bpf_map_lookup_elem(halves, &vi);
	if (!half)
		return NULL;
	slot = (vi * 2 + (*(volatile __u32 *)half & 1)) * p->table_size + hash % p->table_size;
	entry = bpf_map_lookup_elem(table, &slot);
	if (!entry || *entry == EBP_LB_EMPTY)
		return NULL;
	b = *entry;
	be = bpf_map_lookup_elem(backends, &b);
	if (!be || be->state != EBP_LB_UP)
		return NULL;
	fresh.backend = b;
	fresh.gen = be->gen;
	bpf_map_update_elem(conns, f, &fresh, BPF_ANY);
	ebp_count(counters, rehash ? EBP_LB_REHASHED : EBP_LB_NEW, len);
	ebp_count(per_backend, b, len);	/* new flows per backend */
	*chosen = b;
	return be;
}

/* Read the ICMP error at @off (a too-big message to a VIP): the flow it quotes, reversed
 * into the client's direction, and the VIP it was sent by.  -1: not one to handle. */
static __always_inline int ebp_lb_icmp_flow(struct xdp_md *ctx, const struct ebp_pkt *pkt,
					    struct ebp_lb_flow *f, struct ebp_lb_vip_key *vk)
{
	__u8 icmp[8], ports[4];
	__u32 off;

	if (pkt->family == 4) {
		struct ebp_ipv4_hdr ip, q;

		if (pkt->proto != IPPROTO_ICMP || bpf_xdp_load_bytes(ctx, pkt->l3_off, &ip, 20) ||
		    ip.ver_ihl != 0x45)
			return -1;
		off = pkt->l3_off + 20;
		if (bpf_xdp_load_bytes(ctx, off, icmp, 8) || icmp[0] != 3 || icmp[1] != 4)
			return -1;
		if (bpf_xdp_load_bytes(ctx, off + 8, &q, 20) || q.ver_ihl != 0x45 ||
		    bpf_xdp_load_bytes(ctx, off + 28, ports, 4))
			return -1;
		f->src[0] = q.daddr;	/* the client */
		f->dst[0] = q.saddr;	/* the VIP */
		f->proto = q.protocol;
		f->family = 4;
		vk->addr[0] = q.saddr;
	} else {
		struct ebp_ipv6_hdr ip6, q;

		if (bpf_xdp_load_bytes(ctx, pkt->l3_off, &ip6, 40) || ip6.nexthdr != IPPROTO_ICMPV6)
			return -1;
		off = pkt->l3_off + 40;
		if (bpf_xdp_load_bytes(ctx, off, icmp, 8) || icmp[0] != 2)
			return -1;
		if (bpf_xdp_load_bytes(ctx, off + 8, &q, 40) ||
		    bpf_xdp_load_bytes(ctx, off + 48, ports, 4))
			return -1;
		__builtin_memcpy(f->src, q.daddr, 16);
		__builtin_memcpy(f->dst, q.saddr, 16);
		__builtin_memcpy(vk->addr, q.saddr, 16);
		f->proto = q.nexthdr;
		f->family = 6;
	}
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return -1;
	f->sport = (__u16)ports[2] << 8 | ports[3];	/* the quoted packet went VIP -> client */
	f->dport = (__u16)ports[0] << 8 | ports[1];
	vk->port = f->dport;
	vk->proto = f->proto;
	vk->family = f->family;
	return 0;
}

/* One packet: the action, or EBP_NEXT for a packet to no VIP; *outcome: the counter slot
 * of what was done (left as it was when no counter says it: a failed helper). */
static __always_inline int ebp_lb_run(struct xdp_md *ctx, struct ebp_pkt *pkt, int malformed,
				      const struct ebp_lb_params *p, void *vips, void *halves,
				      void *table, void *backends, void *conns, void *frags,
				      void *counters, void *per_backend, __u32 *outcome)
{
	struct ebp_lb_vip_key vk = {};
	struct ebp_lb_flow f = {};
	struct ebp_lb_vip *vip;
	struct ebp_lb_backend *be;
	struct ebp_frag_key fk;
	__u32 inner_len, hash, b = 0, len = pkt->len, ovh, foff, frame_len;
	__u8 tos, df = 0;
	int more;

	if (malformed || (pkt->family != 4 && pkt->family != 6))
		return EBP_NEXT;
	if (pkt->flags & EBP_PKT_LATER_FRAG) {
		/* no ports: the backend its first fragment got, if that was a VIP's */
		struct ebp_frag_val *fv;

		if (ebp_frag_read(ctx, pkt, p->stage, &fk, &foff, &more))
			return EBP_NEXT;
		fv = bpf_map_lookup_elem(frags, &fk);
		if (!fv)
			return EBP_NEXT;
		b = fv->slot;
		be = bpf_map_lookup_elem(backends, &b);
		if (!be || be->gen != (__u32)fv->verdict || be->state == EBP_LB_UNUSED)
			return EBP_NEXT;
		ebp_count(counters, EBP_LB_FRAG_FOLLOWED, len);
		hash = fk.id ^ fk.src[0];
		goto encap;
	}
	if (pkt->flags & EBP_PKT_L4) {
		__builtin_memcpy(vk.addr, pkt->dst32, 16);
		vk.port = pkt->dport;
		vk.proto = pkt->proto;
		vk.family = pkt->family;
		vip = bpf_map_lookup_elem(vips, &vk);
		if (!vip)
			return EBP_NEXT;
		__builtin_memcpy(f.src, pkt->src32, 16);
		__builtin_memcpy(f.dst, pkt->dst32, 16);
		f.sport = pkt->sport;
		f.dport = pkt->dport;
		f.family = pkt->family;
		f.proto = pkt->proto;
	} else {
		if (ebp_lb_icmp_flow(ctx, pkt, &f, &vk))
			return EBP_NEXT;
		vip = bpf_map_lookup_elem(vips, &vk);
		if (!vip)
			return EBP_NEXT;
		ebp_count(counters, EBP_LB_ICMP_TOO_BIG, len);
	}
	hash = ebp_lb_hash(&f);
	be = ebp_lb_pick(p, vip, &f, hash, conns, table, halves, backends, counters,
			 per_backend, len, &b);
	if (!be) {
		ebp_lb_outcome(counters, EBP_LB_NO_BACKEND, len, outcome);
		return XDP_DROP;
	}
	if (pkt->flags & EBP_PKT_FRAG) {
		if (!ebp_frag_read(ctx, pkt, p->stage, &fk, &foff, &more)) {
			ebp_frag_record(frags, &fk, (__s32)be->gen, b);
			ebp_count(counters, EBP_LB_FRAG_FIRST, len);
		}
	}
encap:
	if (pkt->n_vlan || pkt->l3_off != sizeof(struct ethhdr)) {
		ebp_lb_outcome(counters, EBP_LB_UNSUPPORTED, len, outcome);
		return XDP_PASS;
	}
	{
		/* the IP header right after Ethernet (checked above), read in place */
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;

		if (pkt->family == 4) {
			struct ebp_ipv4_hdr *ip = data + sizeof(struct ethhdr);

			if ((void *)(ip + 1) > data_end)
				return XDP_DROP;
			inner_len = bpf_ntohs(ip->tot_len);
			tos = ip->tos;
			df = !!(ip->frag_off & bpf_htons(0x4000));
		} else {
			struct ebp_ipv6_hdr *ip6 = data + sizeof(struct ethhdr);

			if ((void *)(ip6 + 1) > data_end)
				return XDP_DROP;
			inner_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
			tos = bpf_ntohl(ip6->ver_tc_flow) >> 20;
		}
		frame_len = data_end - data;
	}
	/* (a multi-buffer frame: its other buffers count too) */
	if ((inner_len + sizeof(struct ethhdr) > frame_len &&
	     inner_len + sizeof(struct ethhdr) > bpf_xdp_get_buff_len(ctx)) ||
	    inner_len < (pkt->family == 4 ? 20 : 40)) {
		ebp_lb_outcome(counters, EBP_LB_TRUNCATED, len, outcome);
		return XDP_DROP;
	}
	ovh = (be->family == 4 ? 20 : 40) + (p->encap == EBP_LB_ENCAP_GUE ? 8 : 0);
	if (inner_len + ovh > p->mtu) {
		__u32 room = p->mtu - ovh;

		if (pkt->family == 4 && !df) {
			ebp_lb_outcome(counters, EBP_LB_TOO_BIG_STACK, len, outcome);
			return XDP_PASS;
		}
		ebp_lb_outcome(counters, EBP_LB_TOO_BIG_ANSWERED, len, outcome);
		if (pkt->family == 4)
			return ebp_lb_answer_too_big4(ctx, room < 68 ? 68 : room);
		return ebp_lb_answer_too_big6(ctx, room < 1280 ? 1280 : room);
	}
	if (ebp_lb_encap(ctx, p, be, pkt->family, inner_len, tos, hash))
		return XDP_DROP;
	return ebp_lb_xmit(ctx, p, be, inner_len + ovh, counters, len, outcome);
}

#endif /* EBPLANE_BALANCER_H */
