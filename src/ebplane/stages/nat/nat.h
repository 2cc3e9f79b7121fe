/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The nat stage: masquerade (source NAT) and port forwards (destination NAT), IPv4 and IPv6
 * (NAT66), at TC (ebplane.stages.nat).
 *
 * The stage runs on the outside interface.  At egress (after the kernel routed the packet)
 * it translates sources: a new flow from a masqueraded inside prefix gets the outside
 * address and a port no other translation towards the same remote end holds; the replies
 * of port-forwarded flows get the outside address back.  At ingress (before the kernel
 * routes) the companion program translates destinations: replies of masqueraded flows go
 * back to their inside client, new flows to a forwarded port go to the inside server.
 *
 * One table (a hash, both directions): an entry is keyed by a packet's tuple as it appears
 * on the wire at the hook that translates it (dir EBP_NAT_OUT at egress, EBP_NAT_IN at
 * ingress) and says what to write; each entry knows the key of its pair (the other
 * direction).  Allocating a port inserts the reply's key with BPF_NOEXIST first: that
 * insert is what makes a port unique per remote end, also between CPUs.
 *
 * Checksums are updated incrementally with bpf_l3_csum_replace / bpf_l4_csum_replace,
 * which also handle CHECKSUM_PARTIAL (offloaded) and CHECKSUM_COMPLETE packets: one reason
 * the stage works at TC and not in XDP.  Later IP fragments carry no ports: a first
 * fragment that is translated leaves its translation in a fragment table keyed by
 * (src, dst, IP id, proto), which the later fragments follow.
 *
 * ICMP errors about a translated flow (unreachable, time exceeded, fragmentation needed,
 * ...) are translated too: the outer address and the quoted packet's address and port, so
 * that an error from outside reaches the inside client (path MTU discovery).
 *
 * Not translated (passed unchanged, counted): IPv6 packets with extension headers (IPv6
 * fragments among them), hairpin (an inside client reaching a forwarded port through the
 * outside address).
 */
#ifndef EBPLANE_NAT_H
#define EBPLANE_NAT_H

#include "ebplane.h"

/* Numbers generated into each program from their one definition in ebplane/stages/nat/gen.py
 * (c_defines):
 *   EBP_NAT_OUT, EBP_NAT_IN   key.dir: a packet leaving (egress: its source is translated),
 *                             a packet arriving (ingress: its destination)
 *   EBP_NAT_SNAT, _DNAT       entry.kind
 *   EBP_NAT_ST_NEW, _REPLIED, _CLOSING   entry.state (closing: TCP FIN or RST seen)
 *   EBP_NAT_CNT_<NAME>        counter slots: TRANSLATED_OUT, TRANSLATED_IN, NEW_SNAT,
 *                             NEW_DNAT, UNTRANSLATED_OUT, UNTRANSLATED_IN, FULL, NO_PORT,
 *                             COLLECTED, EXPIRED, FRAGMENTS, FRAG_UNKNOWN, ICMP_ERROR,
 *                             MALFORMED; EBP_NAT_NCOUNTERS */
#ifndef EBP_NAT_NCOUNTERS
#error "nat.h needs the #defines and structs ebplane/stages/nat/gen.py generates"
#endif

#define EBP_NAT_GC_NS 1000000000ULL	/* collect expired entries at most once a second */
#define EBP_NAT_PORT_TRIES 32		/* ports tried for a new flow */

#ifndef IPPROTO_ICMP
#define IPPROTO_ICMP 1
#endif
#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* addresses are 4 words; IPv4 uses word 0, the others are 0 */
/* struct ebp_nat_key, ebp_nat_entry, ebp_nat_frag_key, ebp_nat_frag, ebp_nat_cfg and
 * ebp_nat_timeouts (seconds, compiled into the stage) are
 * generated into each program from their one definition in ebplane/stages/nat/gen.py
 * (Layouts; the control plane decodes them with the same objects).  Addresses are 4 words
 * (IPv4: word 0, the others 0), addresses and ports in network order. */

static __always_inline int ebp_nat_addr_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* the outside address for a family into @out; 0 when there is none */
static __always_inline int ebp_nat_outside(const struct ebp_nat_cfg *cfg, __u8 family,
					   __be32 *out)
{
	__builtin_memcpy(out, family == 4 ? cfg->addr : cfg->addr6, 16);
	return (out[0] | out[1] | out[2] | out[3]) != 0;
}

/* what a packet is for the stage */
struct ebp_nat_pkt {
	struct ebp_nat_key key;	/* dir filled by the caller */
	__u32 l3, l4;
	__u8  tcp_flags;
	__u8  later_frag;	/* a non-first fragment: addresses only */
	__u8  first_frag;	/* a first fragment (more follow) */
	__u8  pad;
	__be16 ip_id;
};

static __always_inline __u64 ebp_nat_timeout(__u8 proto, __u8 state,
					     const struct ebp_nat_timeouts *t)
{
	__u64 s;

	if (proto == IPPROTO_TCP)
		s = state == EBP_NAT_ST_CLOSING ? t->tcp_close :
		    state == EBP_NAT_ST_REPLIED ? t->tcp : t->tcp_syn;
	else if (proto == IPPROTO_UDP)
		s = t->udp;
	else
		s = t->icmp;
	return s * 1000000000ULL;
}

static __always_inline int ebp_nat_idle(const struct ebp_nat_entry *e, __u64 now)
{
	return now > e->seen_ns && now - e->seen_ns > e->timeout_ns;
}

/* an entry is expired when neither it nor its pair saw a packet within its timeout */
static __always_inline int ebp_nat_expired(void *table, struct ebp_nat_entry *e, __u64 now)
{
	struct ebp_nat_entry *p;

	if (!ebp_nat_idle(e, now))
		return 0;
	p = bpf_map_lookup_elem(table, &e->pair);
	if (p && !ebp_nat_idle(p, now)) {
		e->seen_ns = p->seen_ns;
		return 0;
	}
	return 1;
}

static __always_inline void ebp_nat_forget(void *table, struct ebp_nat_key *k,
					   struct ebp_nat_entry *e)
{
	struct ebp_nat_key pair = e->pair;

	bpf_map_delete_elem(table, &pair);
	bpf_map_delete_elem(table, k);
}

struct ebp_nat_gc {
	void *table;
	__u64 now;
	__u64 deleted;
};

static long ebp_nat_gc_one(void *map, struct ebp_nat_key *k, struct ebp_nat_entry *e,
			   struct ebp_nat_gc *g)
{
	/* an entry and its pair are deleted together: the pair when its own turn comes */
	if (ebp_nat_idle(e, g->now)) {
		struct ebp_nat_entry *p = bpf_map_lookup_elem(map, &e->pair);

		if ((!p || ebp_nat_idle(p, g->now)) && !bpf_map_delete_elem(map, k))
			g->deleted++;
	}
	return 0;
}

/* echo request/reply and the errors the stage translates, per family */
static __always_inline int ebp_nat_icmp_echo(__u8 family, __u8 type)
{
	return family == 4 ? type == 8 || type == 0 : type == 128 || type == 129;
}

static __always_inline int ebp_nat_icmp_err(__u8 family, __u8 type)
{
	return family == 4 ? type == 3 || type == 11 || type == 12 : type >= 1 && type <= 4;
}

/* Read what the stage needs of an IP packet; 0 when it can be translated, 1 when it is not
 * for the stage (not IP, another protocol, an IPv6 extension header, an ICMP message other
 * than echo or an error), 2 for an ICMP error (see ebp_nat_icmp_error), -1 when it is cut
 * short. */
static __always_inline int ebp_nat_read(struct __sk_buff *ctx, const struct ebp_pkt *pkt,
					struct ebp_nat_pkt *np)
{
	__u8 proto, icmp_proto;

	np->l3 = pkt->l3_off;
	if (pkt->family == 4 && pkt->eth_proto == ETH_P_IP) {
		struct ebp_ipv4_hdr ip;
		__u16 frag;

		if (bpf_skb_load_bytes(ctx, np->l3, &ip, sizeof(ip)))
			return -1;
		proto = ip.protocol;
		np->key.src[0] = ip.saddr;
		np->key.dst[0] = ip.daddr;
		np->ip_id = ip.id;
		np->l4 = np->l3 + (ip.ver_ihl & 0x0f) * 4;
		icmp_proto = IPPROTO_ICMP;
		frag = bpf_ntohs(ip.frag_off);
		if (frag & 0x1fff)
			np->later_frag = 1;
		np->first_frag = (frag & 0x3fff) == 0x2000;
	} else if (pkt->family == 6 && pkt->eth_proto == ETH_P_IPV6) {
		struct ebp_ipv6_hdr ip6;

		if (bpf_skb_load_bytes(ctx, np->l3, &ip6, sizeof(ip6)))
			return -1;
		proto = ip6.nexthdr;	/* extension headers (fragments too): not translated */
		__builtin_memcpy(np->key.src, ip6.saddr, 16);
		__builtin_memcpy(np->key.dst, ip6.daddr, 16);
		np->l4 = np->l3 + sizeof(ip6);
		icmp_proto = IPPROTO_ICMPV6;
	} else {
		return 1;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != icmp_proto)
		return 1;
	np->key.family = pkt->family;
	np->key.proto = proto;
	if (np->later_frag)
		return 0;
	if (proto == icmp_proto) {
		__u8 icmp[8];

		if (bpf_skb_load_bytes(ctx, np->l4, icmp, sizeof(icmp)))
			return -1;
		if (!ebp_nat_icmp_echo(pkt->family, icmp[0]))
			return ebp_nat_icmp_err(pkt->family, icmp[0]) ? 2 : 1;
		__builtin_memcpy(&np->key.sport, &icmp[4], 2);
		np->key.dport = np->key.sport;
		return 0;
	}
	{
		__u8 l4[14];

		if (bpf_skb_load_bytes(ctx, np->l4, l4, proto == IPPROTO_TCP ? 14 : 8))
			return -1;
		__builtin_memcpy(&np->key.sport, &l4[0], 2);
		__builtin_memcpy(&np->key.dport, &l4[2], 2);
		if (proto == IPPROTO_TCP)
			np->tcp_flags = l4[13];
	}
	return 0;
}

/* Rewrite the source (dst_side 0) or destination (1) address and port of a packet,
 * checksums updated incrementally; a later fragment: the address only.  IPv6: no header
 * checksum, but every transport checksum covers the addresses (ICMPv6's too). */
static __always_inline int ebp_nat_rewrite(struct __sk_buff *ctx, const struct ebp_nat_pkt *np,
					   int dst_side, const __be32 *addr, __be16 port)
{
	const __be32 *old = dst_side ? np->key.dst : np->key.src;
	__be16 old_port = dst_side ? np->key.dport : np->key.sport;
	__u32 csum_off, port_off, mangled = 0;

	if (np->key.proto == IPPROTO_TCP) {
		csum_off = np->l4 + 16;
		port_off = np->l4 + (dst_side ? 2 : 0);
	} else if (np->key.proto == IPPROTO_UDP) {
		csum_off = np->l4 + 6;
		port_off = np->l4 + (dst_side ? 2 : 0);
		mangled = BPF_F_MARK_MANGLED_0;	/* a UDP checksum of 0 (none) stays 0 */
	} else {
		csum_off = np->l4 + 2;
		port_off = np->l4 + 4;		/* the echo identifier */
	}
	if (np->key.family == 4 && old[0] != addr[0]) {
		__be32 a = addr[0];

		if (!np->later_frag && np->key.proto != IPPROTO_ICMP &&
		    bpf_l4_csum_replace(ctx, csum_off, old[0], a,
					BPF_F_PSEUDO_HDR | mangled | sizeof(a)))
			return -1;
		if (bpf_l3_csum_replace(ctx, np->l3 + 10, old[0], a, sizeof(a)))
			return -1;
		if (bpf_skb_store_bytes(ctx, np->l3 + (dst_side ? 16 : 12), &a, sizeof(a), 0))
			return -1;
	} else if (np->key.family == 6 && !ebp_nat_addr_eq(old, addr)) {
		__be32 from[4], to[4];
		__s64 diff;

		__builtin_memcpy(from, old, 16);
		__builtin_memcpy(to, addr, 16);
		diff = bpf_csum_diff(from, 16, to, 16, 0);
		if (diff < 0 ||
		    bpf_l4_csum_replace(ctx, csum_off, 0, (__u32)diff, BPF_F_PSEUDO_HDR | mangled))
			return -1;
		if (bpf_skb_store_bytes(ctx, np->l3 + (dst_side ? 24 : 8), to, 16, 0))
			return -1;
	}
	if (!np->later_frag && old_port != port) {
		/* ICMP echo: the identifier, in both of its key's ports */
		if (bpf_l4_csum_replace(ctx, csum_off, old_port, port, mangled | sizeof(port)))
			return -1;
		if (bpf_skb_store_bytes(ctx, port_off, &port, sizeof(port), 0))
			return -1;
	}
	return 0;
}

/* the first fragment of a translated packet: remember its translation for the others */
static __always_inline void ebp_nat_frag_note(void *frags, const struct ebp_nat_pkt *np,
					      const __be32 *addr)
{
	struct ebp_nat_frag_key fk = { .src = np->key.src[0], .dst = np->key.dst[0],
				       .id = np->ip_id, .proto = np->key.proto, .dir = np->key.dir };
	struct ebp_nat_frag f = { .addr = addr[0] };

	if (np->key.family != 4)
		return;
	bpf_map_update_elem(frags, &fk, &f, BPF_ANY);
}

/* a later fragment: the address its first fragment got; 1 when translated */
static __always_inline int ebp_nat_frag_follow(struct __sk_buff *ctx, void *frags,
					       const struct ebp_nat_pkt *np, void *counters,
					       __u32 len)
{
	struct ebp_nat_frag_key fk = { .src = np->key.src[0], .dst = np->key.dst[0],
				       .id = np->ip_id, .proto = np->key.proto, .dir = np->key.dir };
	struct ebp_nat_frag *f = bpf_map_lookup_elem(frags, &fk);
	int dst_side = np->key.dir == EBP_NAT_IN;
	__be32 addr[4] = {};

	if (!f) {
		ebp_count(counters, EBP_NAT_CNT_FRAG_UNKNOWN, len);
		return 0;
	}
	addr[0] = f->addr;
	ebp_nat_rewrite(ctx, np, dst_side, addr, 0);
	ebp_count(counters, EBP_NAT_CNT_FRAGMENTS, len);
	return 1;
}

/* TCP: a FIN or RST shortens both entries' timeouts; the first reply lengthens them */
static __always_inline void ebp_nat_seen(void *table, struct ebp_nat_entry *e,
					 const struct ebp_nat_pkt *np, __u64 now,
					 const struct ebp_nat_timeouts *to)
{
	__u8 state = e->state;
	struct ebp_nat_entry *p;

	e->seen_ns = now;
	e->packets++;
	if (np->key.proto == IPPROTO_TCP && (np->tcp_flags & 0x05))	/* FIN | RST */
		state = EBP_NAT_ST_CLOSING;
	else if (!e->orig && state == EBP_NAT_ST_NEW)
		state = EBP_NAT_ST_REPLIED;
	if (state == e->state)
		return;
	e->state = state;
	e->timeout_ns = ebp_nat_timeout(np->key.proto, state, to);
	p = bpf_map_lookup_elem(table, &e->pair);
	if (p) {
		p->state = state;
		p->timeout_ns = e->timeout_ns;
	}
}

/* Insert a new translation: @k (this packet's direction, translated to @addr:@port) and
 * @rk (its reply's, translated back to @raddr:@rport), from @e (its common fields set).
 * The reply's key first, with BPF_NOEXIST: a taken reply tuple fails there.  One entry
 * struct serves both (the BPF stack is small).  Returns 0, -EEXIST (taken) or -E2BIG (the
 * table is full). */
static __always_inline long ebp_nat_insert(void *table, const struct ebp_nat_key *k,
					   const __be32 *addr, __be16 port,
					   const struct ebp_nat_key *rk, const __be32 *raddr,
					   __be16 rport, struct ebp_nat_entry *e)
{
	long err;

	e->pair = *k;
	__builtin_memcpy(e->addr, raddr, 16);
	e->port = rport;
	e->orig = 0;
	err = bpf_map_update_elem(table, rk, e, BPF_NOEXIST);
	if (err)
		return err;
	e->pair = *rk;
	__builtin_memcpy(e->addr, addr, 16);
	e->port = port;
	e->orig = 1;
	err = bpf_map_update_elem(table, k, e, BPF_NOEXIST);
	if (err)	/* another CPU made this packet's entry first, or full */
		bpf_map_delete_elem(table, rk);
	return err;
}

/* the table is full: delete expired entries, at most once per EBP_NAT_GC_NS */
static __always_inline void ebp_nat_collect(void *table, struct ebp_nat_cfg *cfg, __u64 now,
					    void *counters)
{
	struct ebp_nat_gc g = { .table = table, .now = now };
	struct ebp_count *c;

	if (now - cfg->gc_last <= EBP_NAT_GC_NS)
		return;
	cfg->gc_last = now;
	bpf_for_each_map_elem(table, ebp_nat_gc_one, &g, 0);
	c = bpf_map_lookup_elem(counters, &(__u32){EBP_NAT_CNT_COLLECTED});
	if (c)
		c->packets += g.deleted;
}

/* A new masqueraded flow leaving (@np: its egress key): find a port (the client's own
 * first, when it is in the range and free), insert both entries.  Returns 0 (translated
 * to @outside and *port_out), 1 no free port, 2 the table is full. */
static __always_inline int ebp_nat_snat_new(void *table, struct ebp_nat_cfg *cfg,
					    const __be32 *outside, const struct ebp_nat_pkt *np,
					    __u64 now, const struct ebp_nat_timeouts *to,
					    void *counters, __be16 *port_out)
{
	const struct ebp_nat_key *k = &np->key;
	struct ebp_nat_key rk = {};
	struct ebp_nat_entry e = {};
	__u32 lo = cfg->port_lo, span = (__u32)cfg->port_hi - lo + 1;
	__u32 start = bpf_get_prandom_u32(), own = bpf_ntohs(k->sport);
	int full = 0;

	if (span == 0 || span > 65536)
		return 1;
	__builtin_memcpy(rk.src, k->dst, 16);
	__builtin_memcpy(rk.dst, outside, 16);
	rk.sport = k->dport;
	rk.proto = k->proto;
	rk.family = k->family;
	rk.dir = EBP_NAT_IN;
	e.seen_ns = now;
	e.timeout_ns = ebp_nat_timeout(k->proto, EBP_NAT_ST_NEW, to);
	e.kind = EBP_NAT_SNAT;
	for (int i = 0; i < EBP_NAT_PORT_TRIES; i++) {
		__u32 p = i == 0 && own >= lo && own - lo < span ? own : lo + (start + i * 7919) % span;
		__be16 port = bpf_htons((__u16)p);
		long err;

		rk.dport = port;
		if (k->proto == IPPROTO_ICMP || k->proto == IPPROTO_ICMPV6)
			rk.sport = port;	/* the echo reply carries the new identifier */
		err = ebp_nat_insert(table, k, outside, port, &rk, k->src, k->sport, &e);
		if (err == -7 /* E2BIG */ && !full) {
			full = 1;
			ebp_nat_collect(table, cfg, now, counters);
			err = ebp_nat_insert(table, k, outside, port, &rk, k->src, k->sport, &e);
		}
		if (err == -7)
			return 2;
		if (!err) {
			*port_out = port;
			return 0;
		}
		/* -EEXIST: the port is taken towards this remote end (or this very packet's
		 * entry was made by another CPU meanwhile: the next packet finds it) */
	}
	return 1;
}

/* A new flow to a forwarded port arriving (@np: its ingress key) goes to @to:@to_port;
 * the same results as ebp_nat_snat_new. */
static __always_inline int ebp_nat_dnat_new(void *table, struct ebp_nat_cfg *cfg,
					    const struct ebp_nat_pkt *np, const __be32 *to_addr,
					    __be16 to_port, __u64 now,
					    const struct ebp_nat_timeouts *to, void *counters)
{
	const struct ebp_nat_key *k = &np->key;
	struct ebp_nat_key rk = {};
	struct ebp_nat_entry e = {};
	long err;

	__builtin_memcpy(rk.src, to_addr, 16);
	__builtin_memcpy(rk.dst, k->src, 16);
	rk.sport = to_port;
	rk.dport = k->sport;
	rk.proto = k->proto;
	rk.family = k->family;
	rk.dir = EBP_NAT_OUT;
	e.seen_ns = now;
	e.timeout_ns = ebp_nat_timeout(k->proto, EBP_NAT_ST_NEW, to);
	e.kind = EBP_NAT_DNAT;
	err = ebp_nat_insert(table, k, to_addr, to_port, &rk, k->dst, k->dport, &e);
	if (err == -7) {
		ebp_nat_collect(table, cfg, now, counters);
		err = ebp_nat_insert(table, k, to_addr, to_port, &rk, k->dst, k->dport, &e);
	}
	return err == -7 ? 2 : err ? 1 : 0;
}

/* Look the packet's key up and translate it when an entry exists.  Returns 1 translated,
 * 0 no (live) entry. */
static __always_inline int ebp_nat_existing(struct __sk_buff *ctx, void *table, void *frags,
					    struct ebp_nat_pkt *np, __u64 now,
					    const struct ebp_nat_timeouts *to, void *counters,
					    __u32 len)
{
	struct ebp_nat_entry *e = bpf_map_lookup_elem(table, &np->key);
	__be32 addr[4];
	__be16 port;

	if (!e)
		return 0;
	if (ebp_nat_expired(table, e, now)) {
		ebp_count(counters, EBP_NAT_CNT_EXPIRED, len);
		ebp_nat_forget(table, &np->key, e);
		return 0;
	}
	ebp_nat_seen(table, e, np, now, to);
	__builtin_memcpy(addr, e->addr, 16);
	port = e->port;
	if (ebp_nat_rewrite(ctx, np, np->key.dir == EBP_NAT_IN, addr, port))
		return 0;
	if (np->first_frag)
		ebp_nat_frag_note(frags, np, addr);
	return 1;
}

/* An ICMP error (@np: its outer header, key.dir set) quoting a packet of a translated flow.
 * The error travels the way an answer to the quoted packet would, so the quoted packet's
 * reversed tuple is the key of the translation to apply: at ingress the outer destination
 * and the quoted source (address and port: the client's), at egress the outer source and
 * the quoted destination.  IPv4: the quoted IP header's checksum is updated with its
 * address (so the ICMP checksum over it does not change); IPv6: the ICMPv6 checksum
 * follows both addresses (the outer one through the pseudo-header).  The ICMP checksum
 * follows the port.  The quoted transport checksum is left as it is (a receiver does not
 * check a quote's).  Returns 1 when translated. */
static __always_inline int ebp_nat_icmp_error(struct __sk_buff *ctx, void *table,
					      const struct ebp_nat_pkt *np)
{
	struct ebp_nat_key k = {};
	struct ebp_nat_entry *e;
	__u8 l4[8];
	__u32 q = np->l4 + 8, ql4, port_off;
	int ingress = np->key.dir == EBP_NAT_IN, v4 = np->key.family == 4;
	__be32 old[4], addr[4];
	__be16 old_port, port;
	__u8 icmp_proto = v4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;

	if (np->later_frag)
		return 0;
	if (v4) {
		struct ebp_ipv4_hdr in;

		if (bpf_skb_load_bytes(ctx, q, &in, sizeof(in)) || (in.ver_ihl & 0x0f) != 5)
			return 0;
		k.src[0] = in.daddr;
		k.dst[0] = in.saddr;
		k.proto = in.protocol;
		ql4 = q + sizeof(in);
	} else {
		struct ebp_ipv6_hdr in6;

		if (bpf_skb_load_bytes(ctx, q, &in6, sizeof(in6)))
			return 0;
		__builtin_memcpy(k.src, in6.daddr, 16);
		__builtin_memcpy(k.dst, in6.saddr, 16);
		k.proto = in6.nexthdr;
		ql4 = q + sizeof(in6);
	}
	if (bpf_skb_load_bytes(ctx, ql4, l4, sizeof(l4)))
		return 0;
	k.family = np->key.family;
	k.dir = np->key.dir;
	if (k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP) {
		__builtin_memcpy(&k.sport, &l4[2], 2);
		__builtin_memcpy(&k.dport, &l4[0], 2);
		port_off = ql4 + (ingress ? 0 : 2);
	} else if (k.proto == icmp_proto && ebp_nat_icmp_echo(k.family, l4[0])) {
		__builtin_memcpy(&k.sport, &l4[4], 2);
		k.dport = k.sport;
		port_off = ql4 + 4;
	} else {
		return 0;
	}
	e = bpf_map_lookup_elem(table, &k);
	if (!e)
		return 0;
	__builtin_memcpy(addr, e->addr, 16);
	port = e->port;
	__builtin_memcpy(old, ingress ? k.dst : k.src, 16);	/* the quoted address to change */
	if (!ebp_nat_addr_eq(ingress ? np->key.dst : np->key.src, old))
		return 0;	/* the outer address is not the one translated: not ours */
	__builtin_memcpy(&old_port, ingress ? &k.dport : &k.sport, 2);
	if (v4) {
		/* outer header; the quoted header's address and its own checksum (their sum
		 * stays the same, and so does the ICMP checksum over them) */
		if (bpf_l3_csum_replace(ctx, np->l3 + 10, old[0], addr[0], 4) ||
		    bpf_skb_store_bytes(ctx, np->l3 + (ingress ? 16 : 12), addr, 4, 0) ||
		    bpf_l3_csum_replace(ctx, q + 10, old[0], addr[0], 4) ||
		    bpf_skb_store_bytes(ctx, q + (ingress ? 12 : 16), addr, 4, 0))
			return 0;
	} else {
		__s64 diff = bpf_csum_diff(old, 16, addr, 16, 0);

		if (diff < 0 ||
		    bpf_l4_csum_replace(ctx, np->l4 + 2, 0, (__u32)diff, BPF_F_PSEUDO_HDR) ||
		    bpf_skb_store_bytes(ctx, np->l3 + (ingress ? 24 : 8), addr, 16, 0) ||
		    bpf_l4_csum_replace(ctx, np->l4 + 2, 0, (__u32)diff, 0) ||
		    bpf_skb_store_bytes(ctx, q + (ingress ? 8 : 24), addr, 16, 0))
			return 0;
	}
	/* the quoted port (or echo identifier), and the ICMP checksum with it */
	if (old_port != port &&
	    (bpf_l4_csum_replace(ctx, np->l4 + 2, old_port, port, sizeof(port)) ||
	     bpf_skb_store_bytes(ctx, port_off, &port, sizeof(port), 0)))
		return 0;
	return 1;
}

#endif /* EBPLANE_NAT_H */
