/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The nat stage: masquerade (source NAT) and port forwards (destination NAT), IPv4, at TC
 * (ebplane.stages.nat).
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
 * Not translated (passed unchanged, counted): IPv6, hairpin (an inside client reaching a
 * forwarded port through the outside address).
 */
#ifndef EBPLANE_NAT_H
#define EBPLANE_NAT_H

#include "ebplane.h"

#define EBP_NAT_OUT 0	/* key of a packet leaving (egress): its source is translated */
#define EBP_NAT_IN  1	/* key of a packet arriving (ingress): its destination */

/* entry.kind */
#define EBP_NAT_SNAT 1
#define EBP_NAT_DNAT 2

/* entry.state */
#define EBP_NAT_ST_NEW     0	/* no reply seen yet */
#define EBP_NAT_ST_REPLIED 1
#define EBP_NAT_ST_CLOSING 2	/* TCP FIN or RST seen */

/* counter slots (ebplane.stages.nat.gen reads these names from here) */
#define EBP_NAT_CNT_TRANSLATED_OUT   0	/* sources translated at egress */
#define EBP_NAT_CNT_TRANSLATED_IN    1	/* destinations translated at ingress */
#define EBP_NAT_CNT_NEW_SNAT         2	/* masqueraded flows started */
#define EBP_NAT_CNT_NEW_DNAT         3	/* forwarded flows started */
#define EBP_NAT_CNT_UNTRANSLATED_OUT 4	/* left unchanged at egress (not masqueraded, not IPv4) */
#define EBP_NAT_CNT_UNTRANSLATED_IN  5	/* left unchanged at ingress (no translation: for the host) */
#define EBP_NAT_CNT_FULL             6	/* a new flow found the table full */
#define EBP_NAT_CNT_NO_PORT          7	/* no free port found for a new flow */
#define EBP_NAT_CNT_COLLECTED        8	/* expired entries the collector deleted */
#define EBP_NAT_CNT_EXPIRED          9	/* expired translations a packet of their tuple ended */
#define EBP_NAT_CNT_FRAGMENTS       10	/* later fragments translated like their first */
#define EBP_NAT_CNT_FRAG_UNKNOWN    11	/* later fragments without a translated first fragment */
#define EBP_NAT_CNT_ICMP_ERROR      12	/* ICMP errors about a translated flow, translated */
#define EBP_NAT_CNT_MALFORMED       13	/* cut short: left unchanged */

#define EBP_NAT_GC_NS 1000000000ULL	/* collect expired entries at most once a second */
#define EBP_NAT_PORT_TRIES 32		/* ports tried for a new flow */

#ifndef IPPROTO_ICMP
#define IPPROTO_ICMP 1
#endif

struct ebp_nat_key {
	__be32 src;
	__be32 dst;
	__be16 sport;	/* ICMP echo: the identifier in both */
	__be16 dport;
	__u8   proto;
	__u8   dir;	/* EBP_NAT_OUT / EBP_NAT_IN */
	__u16  pad;
};

struct ebp_nat_entry {
	__u64 seen_ns;		/* last packet of this direction, bpf_ktime_get_ns() */
	__u64 timeout_ns;
	__u64 packets;
	struct ebp_nat_key pair;	/* the key of the other direction's entry */
	__be32 addr;		/* write this address ... */
	__be16 port;		/* ... and port (ICMP: identifier) */
	__u8   kind;		/* EBP_NAT_SNAT / EBP_NAT_DNAT: what made it */
	__u8   orig;		/* 1: the direction of the flow's first packet */
	__u8   state;		/* EBP_NAT_ST_* */
	__u8   pad[7];
};

struct ebp_nat_frag_key {
	__be32 src;
	__be32 dst;
	__be16 id;
	__u8   proto;
	__u8   dir;
};

struct ebp_nat_frag {
	__be32 addr;		/* the address the first fragment got */
	__u32  pad;
};

/* set by the control plane (the outside address, the port range); gc_last by the stage */
struct ebp_nat_cfg {
	__be32 addr;
	__u16  port_lo;
	__u16  port_hi;
	__u64  gc_last;
};

struct ebp_nat_timeouts {
	__u64 tcp_syn, tcp, tcp_close, udp, icmp;	/* seconds */
};

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

/* Read what the stage needs of an IPv4 packet; 0 when it can be translated, 1 when it is
 * not for the stage (not IPv4, another protocol, an ICMP message other than echo or an
 * error), 2 for an ICMP error (see ebp_nat_icmp_error), -1 when it is cut short. */
static __always_inline int ebp_nat_read(struct __sk_buff *ctx, const struct ebp_pkt *pkt,
					struct ebp_nat_pkt *np)
{
	struct ebp_ipv4_hdr ip;
	__u16 frag;

	if (pkt->family != 4 || pkt->eth_proto != ETH_P_IP)
		return 1;
	np->l3 = pkt->l3_off;
	if (bpf_skb_load_bytes(ctx, np->l3, &ip, sizeof(ip)))
		return -1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP && ip.protocol != IPPROTO_ICMP)
		return 1;
	np->key.src = ip.saddr;
	np->key.dst = ip.daddr;
	np->key.proto = ip.protocol;
	np->ip_id = ip.id;
	np->l4 = np->l3 + (ip.ver_ihl & 0x0f) * 4;
	frag = bpf_ntohs(ip.frag_off);
	if (frag & 0x1fff) {
		np->later_frag = 1;
		return 0;
	}
	np->first_frag = !!(frag & 0x2000);
	if (ip.protocol == IPPROTO_ICMP) {
		__u8 icmp[8];

		if (bpf_skb_load_bytes(ctx, np->l4, icmp, sizeof(icmp)))
			return -1;
		if (icmp[0] != 8 && icmp[0] != 0)
			return icmp[0] == 3 || icmp[0] == 11 || icmp[0] == 12 ? 2 : 1;
		__builtin_memcpy(&np->key.sport, &icmp[4], 2);
		np->key.dport = np->key.sport;
		return 0;
	}
	{
		__u8 l4[14];

		if (bpf_skb_load_bytes(ctx, np->l4, l4, ip.protocol == IPPROTO_TCP ? 14 : 8))
			return -1;
		__builtin_memcpy(&np->key.sport, &l4[0], 2);
		__builtin_memcpy(&np->key.dport, &l4[2], 2);
		if (ip.protocol == IPPROTO_TCP)
			np->tcp_flags = l4[13];
	}
	return 0;
}

/* Rewrite the source (dst_side 0) or destination (1) address and port of an IPv4 packet,
 * checksums updated incrementally; a later fragment: the address only. */
static __always_inline int ebp_nat_rewrite(struct __sk_buff *ctx, const struct ebp_nat_pkt *np,
					   int dst_side, __be32 addr, __be16 port)
{
	__be32 old_addr = dst_side ? np->key.dst : np->key.src;
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
	if (old_addr != addr) {
		if (!np->later_frag && np->key.proto != IPPROTO_ICMP &&
		    bpf_l4_csum_replace(ctx, csum_off, old_addr, addr,
					BPF_F_PSEUDO_HDR | mangled | sizeof(addr)))
			return -1;
		if (bpf_l3_csum_replace(ctx, np->l3 + 10, old_addr, addr, sizeof(addr)))
			return -1;
		if (bpf_skb_store_bytes(ctx, np->l3 + (dst_side ? 16 : 12), &addr, sizeof(addr), 0))
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
					      __be32 addr)
{
	struct ebp_nat_frag_key fk = { .src = np->key.src, .dst = np->key.dst, .id = np->ip_id,
				       .proto = np->key.proto, .dir = np->key.dir };
	struct ebp_nat_frag f = { .addr = addr };

	bpf_map_update_elem(frags, &fk, &f, BPF_ANY);
}

/* a later fragment: the address its first fragment got; 1 when translated */
static __always_inline int ebp_nat_frag_follow(struct __sk_buff *ctx, void *frags,
					       const struct ebp_nat_pkt *np, void *counters,
					       __u32 len)
{
	struct ebp_nat_frag_key fk = { .src = np->key.src, .dst = np->key.dst, .id = np->ip_id,
				       .proto = np->key.proto, .dir = np->key.dir };
	struct ebp_nat_frag *f = bpf_map_lookup_elem(frags, &fk);
	int dst_side = np->key.dir == EBP_NAT_IN;

	if (!f) {
		ebp_count(counters, EBP_NAT_CNT_FRAG_UNKNOWN, len);
		return 0;
	}
	ebp_nat_rewrite(ctx, np, dst_side, f->addr, 0);
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

/* Insert a new translation: @k (this packet's direction) and @rk (its reply's), entries
 * @e / @re.  The reply's key first, with BPF_NOEXIST: a taken reply tuple fails there.
 * Returns 0, -EEXIST (taken) or -E2BIG (the table is full). */
static __always_inline long ebp_nat_insert(void *table, struct ebp_nat_key *k,
					   struct ebp_nat_entry *e, struct ebp_nat_key *rk,
					   struct ebp_nat_entry *re)
{
	long err = bpf_map_update_elem(table, rk, re, BPF_NOEXIST);

	if (err)
		return err;
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
 * into *addr/*port), 1 no free port, 2 the table is full. */
static __always_inline int ebp_nat_snat_new(void *table, struct ebp_nat_cfg *cfg,
					    const struct ebp_nat_pkt *np, __u64 now,
					    const struct ebp_nat_timeouts *to, void *counters,
					    __be16 *port_out)
{
	struct ebp_nat_key k = np->key, rk = {};
	struct ebp_nat_entry e = {}, re = {};
	__u32 lo = cfg->port_lo, span = (__u32)cfg->port_hi - lo + 1;
	__u32 start = bpf_get_prandom_u32(), own = bpf_ntohs(np->key.sport);
	int full = 0;

	if (span == 0 || span > 65536)
		return 1;
	rk.src = k.dst;
	rk.dst = cfg->addr;
	rk.sport = k.dport;
	rk.proto = k.proto;
	rk.dir = EBP_NAT_IN;
	e.seen_ns = re.seen_ns = now;
	e.timeout_ns = re.timeout_ns = ebp_nat_timeout(k.proto, EBP_NAT_ST_NEW, to);
	e.kind = re.kind = EBP_NAT_SNAT;
	e.orig = 1;
	e.pair = rk;
	e.addr = cfg->addr;
	re.pair = k;
	re.addr = k.src;
	re.port = k.sport;
	for (int i = 0; i < EBP_NAT_PORT_TRIES; i++) {
		__u32 p = i == 0 && own >= lo && own - lo < span ? own : lo + (start + i * 7919) % span;
		long err;

		e.port = bpf_htons((__u16)p);
		rk.dport = e.port;
		if (k.proto == IPPROTO_ICMP)
			rk.sport = e.port;	/* the echo reply carries the new identifier */
		e.pair = rk;
		err = ebp_nat_insert(table, &k, &e, &rk, &re);
		if (err == -7 /* E2BIG */ && !full) {
			full = 1;
			ebp_nat_collect(table, cfg, now, counters);
			err = ebp_nat_insert(table, &k, &e, &rk, &re);
		}
		if (err == -7)
			return 2;
		if (!err) {
			*port_out = e.port;
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
					    const struct ebp_nat_pkt *np, __be32 to_addr,
					    __be16 to_port, __u64 now,
					    const struct ebp_nat_timeouts *to, void *counters)
{
	struct ebp_nat_key k = np->key, rk = {};
	struct ebp_nat_entry e = {}, re = {};
	long err;

	rk.src = to_addr;
	rk.dst = k.src;
	rk.sport = to_port;
	rk.dport = k.sport;
	rk.proto = k.proto;
	rk.dir = EBP_NAT_OUT;
	e.seen_ns = re.seen_ns = now;
	e.timeout_ns = re.timeout_ns = ebp_nat_timeout(k.proto, EBP_NAT_ST_NEW, to);
	e.kind = re.kind = EBP_NAT_DNAT;
	e.orig = 1;
	e.pair = rk;
	e.addr = to_addr;
	e.port = to_port;
	re.pair = k;
	re.addr = k.dst;
	re.port = k.dport;
	err = ebp_nat_insert(table, &k, &e, &rk, &re);
	if (err == -7) {
		ebp_nat_collect(table, cfg, now, counters);
		err = ebp_nat_insert(table, &k, &e, &rk, &re);
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
	__be32 addr;
	__be16 port;

	if (!e)
		return 0;
	if (ebp_nat_expired(table, e, now)) {
		ebp_count(counters, EBP_NAT_CNT_EXPIRED, len);
		ebp_nat_forget(table, &np->key, e);
		return 0;
	}
	ebp_nat_seen(table, e, np, now, to);
	addr = e->addr;
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
 * the quoted destination.  The quoted IP header's checksum is updated with its address (so
 * the ICMP checksum over it does not change); the ICMP checksum follows the port.  The
 * quoted transport checksum is left as it is (a receiver does not check a quote's).
 * Returns 1 when translated. */
static __always_inline int ebp_nat_icmp_error(struct __sk_buff *ctx, void *table,
					      const struct ebp_nat_pkt *np)
{
	struct ebp_ipv4_hdr in;
	struct ebp_nat_key k = {};
	struct ebp_nat_entry *e;
	__u8 l4[8];
	__u32 q = np->l4 + 8;
	int ingress = np->key.dir == EBP_NAT_IN;
	__be32 old_addr, addr;
	__be16 old_port, port;
	__u32 port_off;

	if (np->later_frag || bpf_skb_load_bytes(ctx, q, &in, sizeof(in)) ||
	    (in.ver_ihl & 0x0f) != 5 || bpf_skb_load_bytes(ctx, q + 20, l4, sizeof(l4)))
		return 0;
	k.src = in.daddr;
	k.dst = in.saddr;
	k.proto = in.protocol;
	k.dir = np->key.dir;
	if (in.protocol == IPPROTO_TCP || in.protocol == IPPROTO_UDP) {
		__builtin_memcpy(&k.sport, &l4[2], 2);
		__builtin_memcpy(&k.dport, &l4[0], 2);
		port_off = q + 20 + (ingress ? 0 : 2);
	} else if (in.protocol == IPPROTO_ICMP && (l4[0] == 8 || l4[0] == 0)) {
		__builtin_memcpy(&k.sport, &l4[4], 2);
		k.dport = k.sport;
		port_off = q + 20 + 4;
	} else {
		return 0;
	}
	e = bpf_map_lookup_elem(table, &k);
	if (!e)
		return 0;
	addr = e->addr;
	port = e->port;
	old_addr = ingress ? in.saddr : in.daddr;
	if (ingress ? np->key.dst != old_addr : np->key.src != old_addr)
		return 0;	/* the outer address is not the one translated: not ours */
	__builtin_memcpy(&old_port, ingress ? &k.dport : &k.sport, 2);
	/* outer header */
	if (bpf_l3_csum_replace(ctx, np->l3 + 10, old_addr, addr, sizeof(addr)) ||
	    bpf_skb_store_bytes(ctx, np->l3 + (ingress ? 16 : 12), &addr, sizeof(addr), 0))
		return 0;
	/* the quoted IP header: address and its own checksum (their sum stays the same) */
	if (bpf_l3_csum_replace(ctx, q + 10, old_addr, addr, sizeof(addr)) ||
	    bpf_skb_store_bytes(ctx, q + (ingress ? 12 : 16), &addr, sizeof(addr), 0))
		return 0;
	/* the quoted port (or echo identifier), and the ICMP checksum with it */
	if (old_port != port &&
	    (bpf_l4_csum_replace(ctx, np->l4 + 2, old_port, port, sizeof(port)) ||
	     bpf_skb_store_bytes(ctx, port_off, &port, sizeof(port), 0)))
		return 0;
	return 1;
}

#endif /* EBPLANE_NAT_H */
