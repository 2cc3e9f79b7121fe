/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The conntrack stage: connection tracking in a hash table of its own (ebplane.stages.conntrack).
 *
 * A connection is keyed by the tuple of its first packet (the originator's direction); a
 * packet finds its entry under its own tuple (direction 0, original) or the reversed one
 * (direction 1, reply).  The stage sets ebp_pkt.ct_state for the filter rules after it:
 *
 *   untracked    not IP, a protocol other than TCP/UDP/ICMP echo, a later IP fragment
 *   new          the first packet of a connection, and its original-direction packets until
 *                a reply was seen (netfilter's meaning)
 *   established  a packet of a connection that has seen a reply (and the reply itself)
 *   related      an ICMP error about a tracked connection
 *   invalid      a TCP packet that opens nothing (no SYN) and belongs to no connection, an
 *                echo reply without request, an ICMP error about nothing tracked
 *
 * TCP entry states follow the handshake: SYN_SENT (SYN seen), SYN_RECV (SYN-ACK seen),
 * ESTABLISHED (the ACK), FIN_WAIT (a FIN), CLOSE (RST, or FINs from both sides); each state
 * has its timeout.  An entry idle past its timeout is expired: the next packet of its tuple
 * deletes it and starts afresh.
 *
 * The table is a plain hash (BPF_MAP_TYPE_HASH), not an LRU: a tracked connection is never
 * evicted to make room.  When an insert finds the table full, the stage deletes every expired
 * entry (bpf_for_each_map_elem, at most once per EBP_CT_GC_NS) and retries; if the table is
 * still full the new connection is refused (counted; the stage's when_full decides whether
 * the packet is dropped or passes on as `new` without an entry).
 */
#ifndef EBPLANE_CONNTRACK_H
#define EBPLANE_CONNTRACK_H

#include "ebplane.h"

#ifndef ebp_load_bytes
#define ebp_load_bytes(ctx, off, to, len)						\
	_Generic((ctx), struct xdp_md *: bpf_xdp_load_bytes,				\
		 default: bpf_skb_load_bytes)((ctx), (off), (to), (len))
#endif

/* The numbers below are generated into each program from their one definition in
 * ebplane/stages/conntrack/gen.py (c_defines):
 *   EBP_CT_<STATE>      ebp_pkt.ct_state, the values `state:` rules match (UNTRACKED, NEW,
 *                       ESTABLISHED, RELATED, INVALID)
 *   EBP_CT_CNT_<EVENT>  counter slots after the one per packet state: FULL (a new
 *                       connection found the table full), COLLECTED (expired entries the
 *                       collector deleted), EXPIRED (expired entries a packet of their tuple
 *                       deleted); EBP_CT_NCOUNTERS slots in all
 *   EBP_CTS_<STATE>     states of a table entry, in this order: SYN_SENT, SYN_RECV,
 *                       ESTABLISHED, FIN_WAIT, CLOSE, UDP, ICMP (compared by order)
 * and, from the Layouts there (CT_KEY, CT_ENTRY: the control plane decodes the table with
 * the same definition), struct ebp_ct_key (a connection: the tuple of its first packet) and
 * struct ebp_ct_entry (its state, timeout and packets per direction). */
#ifndef EBP_CT_NCOUNTERS
#error "conntrack.h needs the #defines ebplane/stages/conntrack/gen.py generates"
#endif

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

#define EBP_CT_GC_NS 1000000000ULL	/* collect expired entries at most once a second */

#define EBP_TCP_FIN 0x01
#define EBP_TCP_SYN 0x02
#define EBP_TCP_RST 0x04
#define EBP_TCP_ACK 0x10

/* struct ebp_ct_timeouts (seconds without packets, per entry state: the stage's timeouts:)
 * is generated like ebp_ct_key and ebp_ct_entry (ebplane/stages/conntrack/gen.py). */

static __always_inline __u64 ebp_ct_timeout_ns(const struct ebp_ct_entry *e,
					       const struct ebp_ct_timeouts *t)
{
	__u64 s;

	switch (e->state) {
	case EBP_CTS_SYN_SENT:
	case EBP_CTS_SYN_RECV:    s = t->syn; break;
	case EBP_CTS_ESTABLISHED: s = t->established; break;
	case EBP_CTS_FIN_WAIT:    s = t->fin; break;
	case EBP_CTS_CLOSE:       s = t->close; break;
	case EBP_CTS_UDP:         s = e->replied ? t->udp_replied : t->udp; break;
	default:                  s = t->icmp; break;
	}
	return s * 1000000000ULL;
}

/* set an entry's state (and its timeout with it) */
static __always_inline void ebp_ct_set(struct ebp_ct_entry *e, __u8 state,
				       const struct ebp_ct_timeouts *t)
{
	e->state = state;
	e->timeout_ns = ebp_ct_timeout_ns(e, t);
}

static __always_inline int ebp_ct_expired(const struct ebp_ct_entry *e, __u64 now)
{
	return now > e->seen_ns && now - e->seen_ns > e->timeout_ns;
}

struct ebp_ct_gc {
	__u64 now;
	__u64 deleted;
};

static long ebp_ct_gc_one(void *map, struct ebp_ct_key *k, struct ebp_ct_entry *e,
			  struct ebp_ct_gc *g)
{
	if (ebp_ct_expired(e, g->now) && !bpf_map_delete_elem(map, k))
		g->deleted++;
	return 0;
}

static __always_inline void ebp_ct_reverse(struct ebp_ct_key *r, const struct ebp_ct_key *k)
{
	__builtin_memcpy(r->src, k->dst, 16);
	__builtin_memcpy(r->dst, k->src, 16);
	r->sport = k->dport;
	r->dport = k->sport;
	r->family = k->family;
	r->proto = k->proto;
	r->pad = 0;
}

/* ICMP types: echo request/reply and the errors that quote a packet */
static __always_inline int ebp_ct_icmp_echo(__u8 family, __u8 type, int *request)
{
	*request = family == 4 ? type == 8 : type == 128;
	return family == 4 ? (type == 8 || type == 0) : (type == 128 || type == 129);
}

static __always_inline int ebp_ct_icmp_error(__u8 family, __u8 type)
{
	if (family == 4)
		return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

/* The key of the packet an ICMP error quotes (at @off: its IP header); -1 when unreadable.
 * IPv4 quotes with options and IPv6 quotes with extension headers are not followed. */
static __always_inline int ebp_ct_quoted_key(EBP_CTX *ctx, __u8 family, __u32 off,
					     struct ebp_ct_key *k)
{
	__u8 l4[8];
	__u32 l4off;

	__builtin_memset(k, 0, sizeof(*k));
	k->family = family;
	if (family == 4) {
		struct ebp_ipv4_hdr ip;

		if (ebp_load_bytes(ctx, off, &ip, sizeof(ip)) || (ip.ver_ihl & 0x0f) != 5)
			return -1;
		k->src[0] = ip.saddr;
		k->dst[0] = ip.daddr;
		k->proto = ip.protocol;
		l4off = off + 20;
	} else {
		struct ebp_ipv6_hdr ip6;

		if (ebp_load_bytes(ctx, off, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(k->src, ip6.saddr, 16);
		__builtin_memcpy(k->dst, ip6.daddr, 16);
		k->proto = ip6.nexthdr;
		l4off = off + 40;
	}
	if (ebp_load_bytes(ctx, l4off, l4, sizeof(l4)))
		return -1;
	if (k->proto == IPPROTO_TCP || k->proto == IPPROTO_UDP) {
		k->sport = (__u16)l4[0] << 8 | l4[1];
		k->dport = (__u16)l4[2] << 8 | l4[3];
		return 0;
	}
	if (k->proto == (family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6)) {
		int req;

		if (!ebp_ct_icmp_echo(family, l4[0], &req))
			return -1;
		k->sport = k->dport = (__u16)l4[4] << 8 | l4[5];
		return 0;
	}
	return -1;
}

/* Track one packet: returns its EBP_CT_* state; *refused is set when the packet would have
 * started a connection but the table is full.  @gc_last: the time of the last collection. */
static __always_inline int ebp_ct_track(EBP_CTX *ctx, const struct ebp_pkt *pkt, void *table,
					const struct ebp_ct_timeouts *to, __u64 *gc_last,
					void *counters, int *refused)
{
	struct ebp_ct_key k = {}, r;
	struct ebp_ct_entry *e, fresh = {};
	__u64 now = bpf_ktime_get_ns();
	__u8 tcp_flags = 0;
	int dir = 0, is_icmp = 0, request = 0;

	*refused = 0;
	if ((pkt->family != 4 && pkt->family != 6) || (pkt->flags & EBP_PKT_LATER_FRAG))
		return EBP_CT_UNTRACKED;
	k.family = pkt->family;
	k.proto = pkt->proto;
	__builtin_memcpy(k.src, pkt->src32, 16);
	__builtin_memcpy(k.dst, pkt->dst32, 16);
	if (pkt->proto == IPPROTO_TCP || pkt->proto == IPPROTO_UDP) {
		if (!(pkt->flags & EBP_PKT_L4))
			return EBP_CT_UNTRACKED;
		k.sport = pkt->sport;
		k.dport = pkt->dport;
		if (pkt->proto == IPPROTO_TCP &&
		    ebp_load_bytes(ctx, pkt->l4_off + 13, &tcp_flags, 1))
			return EBP_CT_INVALID;
	} else if (pkt->proto == (pkt->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6)) {
		__u8 icmp[8];
		__u32 off;

		if (pkt->family == 4) {
			__u8 vihl;

			if (ebp_load_bytes(ctx, pkt->l3_off, &vihl, 1))
				return EBP_CT_INVALID;
			off = pkt->l3_off + (vihl & 0x0f) * 4;
		} else {
			__u8 nh;

			/* the ICMPv6 header right after the IPv6 header only */
			if (ebp_load_bytes(ctx, pkt->l3_off + 6, &nh, 1) || nh != IPPROTO_ICMPV6)
				return EBP_CT_UNTRACKED;
			off = pkt->l3_off + 40;
		}
		if (ebp_load_bytes(ctx, off, icmp, sizeof(icmp)))
			return EBP_CT_INVALID;
		if (ebp_ct_icmp_error(pkt->family, icmp[0])) {
			if (ebp_ct_quoted_key(ctx, pkt->family, off + 8, &k))
				return EBP_CT_INVALID;
			if (bpf_map_lookup_elem(table, &k))
				return EBP_CT_RELATED;
			ebp_ct_reverse(&r, &k);
			return bpf_map_lookup_elem(table, &r) ? EBP_CT_RELATED : EBP_CT_INVALID;
		}
		if (!ebp_ct_icmp_echo(pkt->family, icmp[0], &request))
			return EBP_CT_UNTRACKED; /* neighbour discovery, router adverts, ... */
		is_icmp = 1;
		k.sport = k.dport = (__u16)icmp[4] << 8 | icmp[5];
	} else {
		return EBP_CT_UNTRACKED;
	}

	e = bpf_map_lookup_elem(table, &k);
	if (!e) {
		ebp_ct_reverse(&r, &k);
		e = bpf_map_lookup_elem(table, &r);
		dir = 1;
	}
	if (e && ebp_ct_expired(e, now)) {
		ebp_count(counters, EBP_CT_CNT_EXPIRED, pkt->len);
		bpf_map_delete_elem(table, dir ? (void *)&r : (void *)&k);
		e = NULL;
	}
	if (!e) {
		/* what may open a connection: a TCP SYN, any UDP datagram, an echo request */
		if (pkt->proto == IPPROTO_TCP) {
			if ((tcp_flags & (EBP_TCP_SYN | EBP_TCP_ACK | EBP_TCP_RST)) != EBP_TCP_SYN)
				return EBP_CT_INVALID;
			ebp_ct_set(&fresh, EBP_CTS_SYN_SENT, to);
		} else if (is_icmp) {
			if (!request)
				return EBP_CT_INVALID;
			ebp_ct_set(&fresh, EBP_CTS_ICMP, to);
		} else {
			ebp_ct_set(&fresh, EBP_CTS_UDP, to);
		}
		fresh.seen_ns = fresh.created_ns = now;
		fresh.packets[0] = 1;
		if (bpf_map_update_elem(table, &k, &fresh, BPF_NOEXIST) == -7 /* E2BIG: full */) {
			if (now - *gc_last > EBP_CT_GC_NS) {
				struct ebp_ct_gc g = { .now = now };

				*gc_last = now;
				struct ebp_count *c;

				bpf_for_each_map_elem(table, ebp_ct_gc_one, &g, 0);
				/* (no branch on g.deleted: the verifier would have to tell apart
				 * every count the callback can reach) */
				c = bpf_map_lookup_elem(counters, &(__u32){EBP_CT_CNT_COLLECTED});
				if (c)
					c->packets += g.deleted;
			}
			if (bpf_map_update_elem(table, &k, &fresh, BPF_NOEXIST) == -7) {
				*refused = 1;
				ebp_count(counters, EBP_CT_CNT_FULL, pkt->len);
			}
		}
		return EBP_CT_NEW;
	}

	if (pkt->proto == IPPROTO_TCP && dir && !(tcp_flags & EBP_TCP_RST)) {
		/* the answer to a SYN is a SYN-ACK; a SYN alone never comes back */
		if (e->state == EBP_CTS_SYN_SENT ?
		    (tcp_flags & (EBP_TCP_SYN | EBP_TCP_ACK)) != (EBP_TCP_SYN | EBP_TCP_ACK) :
		    (tcp_flags & (EBP_TCP_SYN | EBP_TCP_ACK)) == EBP_TCP_SYN)
			return EBP_CT_INVALID; /* (does not refresh the entry) */
	}
	e->seen_ns = now;
	e->packets[dir & 1]++;
	if (pkt->proto != IPPROTO_TCP) {
		if (dir) {
			if (!e->replied) {
				e->replied = 1;
				ebp_ct_set(e, e->state, to);
			}
			return EBP_CT_ESTABLISHED;
		}
		return e->replied ? EBP_CT_ESTABLISHED : EBP_CT_NEW;
	}

	if (tcp_flags & EBP_TCP_RST) {
		ebp_ct_set(e, EBP_CTS_CLOSE, to);
		return EBP_CT_ESTABLISHED;
	}
	if (dir == 0) {
		if ((tcp_flags & (EBP_TCP_SYN | EBP_TCP_ACK)) == EBP_TCP_SYN) {
			if (e->state >= EBP_CTS_FIN_WAIT) {
				/* the tuple is reused for a new connection */
				e->replied = 0;
				ebp_ct_set(e, EBP_CTS_SYN_SENT, to);
				e->fin = 0;
				e->created_ns = now;
			}
			if (!e->replied)
				return EBP_CT_NEW;
		}
		if (!e->replied)
			return EBP_CT_NEW;
		if (e->state == EBP_CTS_SYN_RECV && (tcp_flags & EBP_TCP_ACK))
			ebp_ct_set(e, EBP_CTS_ESTABLISHED, to);
	} else {
		if (e->state == EBP_CTS_SYN_SENT)
			ebp_ct_set(e, EBP_CTS_SYN_RECV, to);
		e->replied = 1;
	}
	if (tcp_flags & EBP_TCP_FIN) {
		e->fin |= 1 << (dir & 1);
		ebp_ct_set(e, e->fin == 3 ? EBP_CTS_CLOSE : EBP_CTS_FIN_WAIT, to);
	}
	return EBP_CT_ESTABLISHED;
}

#endif /* EBPLANE_CONNTRACK_H */
