/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Multicast and broadcast groups, at XDP and at tc-ingress.
 *
 * A group's members sit in one inner map, held in a slot of an ARRAY_OF_MAPS; a frame whose
 * destination selects the group is sent to every member but the port it came in on.  XDP:
 * the inner map is a DEVMAP_HASH (keyed by ifindex) and one bpf_redirect_map(...,
 * BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS) sends the copies.  TC: it is an ARRAY of
 * ifindexes, and bpf_clone_redirect sends them.  The control plane changes a group's
 * members by building a new inner map and swapping it into the slot: a frame sees the old
 * or the new member set, never a mix.
 *
 * Destinations select groups through one hash map keyed by struct ebp_mc_key: the IPv4 or
 * IPv6 multicast destination first (when the pipeline parses IP), then the destination MAC
 * (group bit set; ff:ff:ff:ff:ff:ff is broadcast).
 *
 */
#ifndef EBPLANE_MULTICAST_H
#define EBPLANE_MULTICAST_H

#include "ebplane.h"

/* Numbers defined once in ebplane/stages/multicast/gen.py (c_defines) and written into each
 * program ahead of this header:
 *   EBP_MC_<OUTCOME>    counter slots: SENT (to the members of its group), NO_GROUP (no group,
 *                       or an empty slot: next stage), RUNT (shorter than Ethernet: dropped),
 *                       MULTI_BUFFER (to a group but in several buffers: the kernel's devmap
 *                       broadcast copies single-buffer frames only, so it goes to the kernel);
 *                       EBP_MC_NSLOTS in all
 *   EBP_MC_KIND_<KIND>  struct ebp_mc_key.kind: MAC, IPV4, IPV6
 *   EBP_MC_SNOOP_BYTES  bytes of a frame a snooping stage copies
 *   EBP_MC_MEMBERS_MAX  ports per group
 */
#ifndef EBP_MC_NSLOTS
#error "multicast.h needs the #defines and structs ebplane/stages/multicast/gen.py generates"
#endif

/* struct ebp_mc_key (the addresses map's key), ebp_mc_name (the names map's value: control
 * plane only) and ebp_mc_snoop_rec (what a snooping stage copies of an IGMP or MLD frame into
 * its ring buffer) are generated into each program from their one definition in
 * ebplane/stages/multicast/gen.py (Layouts). */

static __always_inline void ebp_mc_snoop(struct xdp_md *ctx, struct ebp_pkt *pkt, void *ring)
{
	struct ebp_mc_snoop_rec *r;
	__u32 n = pkt->len;

	if (!((pkt->family == 4 && pkt->proto == 2) ||
	      (pkt->family == 6 && pkt->proto == 58 && pkt->dst[0] == 0xff)))
		return;
	if (n > EBP_MC_SNOOP_BYTES)
		n = EBP_MC_SNOOP_BYTES;
	if (n < 14)
		return;
	r = bpf_ringbuf_reserve(ring, sizeof(*r), 0);
	if (!r)
		return;	/* full: the snooper is behind; the frame still goes on */
	r->ifindex = ctx->ingress_ifindex;
	r->len = n;
	if (bpf_xdp_load_bytes(ctx, 0, r->data, n)) {
		bpf_ringbuf_discard(r, 0);
		return;
	}
	bpf_ringbuf_submit(r, 0);
}

#ifndef EBP_XDP_MULTI_BUFFER
#define EBP_XDP_MULTI_BUFFER
/* Whether the frame spans several buffers (only an xdp.frags program sees such frames). */
static __always_inline int ebp_xdp_multi_buffer(struct xdp_md *ctx)
{
	return bpf_xdp_get_buff_len(ctx) > (__u64)(ctx->data_end - ctx->data);
}
#endif

static __always_inline __u32 *ebp_mc_lookup(void *addrs, struct ebp_mc_key *key, __u8 kind,
					    const __u8 *addr, int len)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->kind = kind;
	for (int i = 0; i < 16; i++)
		if (i < len)
			key->addr[i] = addr[i];
	return bpf_map_lookup_elem(addrs, key);
}

/* The group slot @pkt's destination selects: the IP group first, then the MAC; NULL when
 * none.  @dmac is the frame's destination MAC (checked to be in the packet). */
static __always_inline __u32 *ebp_mc_find(struct ebp_pkt *pkt, const __u8 *dmac, void *addrs)
{
	struct ebp_mc_key key;
	__u32 *gid = 0;

#ifdef EBP_PARSE_IPV4
	if (pkt->family == 4 && (pkt->dst[0] & 0xf0) == 0xe0)
		gid = ebp_mc_lookup(addrs, &key, EBP_MC_KIND_IPV4, pkt->dst, 4);
#endif
#ifdef EBP_PARSE_IPV6
	if (!gid && pkt->family == 6 && pkt->dst[0] == 0xff)
		gid = ebp_mc_lookup(addrs, &key, EBP_MC_KIND_IPV6, pkt->dst, 16);
#endif
	if (!gid && (dmac[0] & 1))
		gid = ebp_mc_lookup(addrs, &key, EBP_MC_KIND_MAC, dmac, 6);
	return gid;
}

/* XDP: a group is a DEVMAP_HASH; one broadcast redirect sends a copy to each member but the
 * ingress port. */
static __always_inline int ebp_multicast(struct xdp_md *ctx, struct ebp_pkt *pkt, void *addrs,
					 void *groups, void *group_cnt, __u32 *slot)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 *gid;
	void *members;

	if ((void *)(eth + 1) > data_end) {
		*slot = EBP_MC_RUNT;
		return XDP_DROP;
	}
	gid = ebp_mc_find(pkt, eth->h_dest, addrs);
	members = gid ? bpf_map_lookup_elem(groups, gid) : 0;
	if (!members) {
		*slot = EBP_MC_NO_GROUP;
		return EBP_NEXT;
	}
	if (ebp_xdp_multi_buffer(ctx)) {
		*slot = EBP_MC_MULTI_BUFFER;
		return XDP_PASS;
	}
	ebp_count(group_cnt, *gid, pkt->len);
	*slot = EBP_MC_SENT;
	return bpf_redirect_map(members, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
}

/* TC: a group is an ARRAY of member ifindexes (0: the end); a clone goes to each member but
 * the ingress port (bpf_clone_redirect, any frame size), the skb itself to the last one. */
static __always_inline int ebp_multicast_tc(struct __sk_buff *skb, struct ebp_pkt *pkt,
					    void *addrs, void *groups, void *group_cnt,
					    __u32 *slot)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 ingress = skb->ingress_ifindex, last = 0, *gid, g;
	void *members;

	if ((void *)(eth + 1) > data_end) {
		*slot = EBP_MC_RUNT;
		return TC_ACT_SHOT;
	}
	gid = ebp_mc_find(pkt, eth->h_dest, addrs);
	members = gid ? bpf_map_lookup_elem(groups, gid) : 0;
	if (!members) {
		*slot = EBP_MC_NO_GROUP;
		return EBP_NEXT;
	}
	g = *gid;
	ebp_count(group_cnt, g, pkt->len);
	*slot = EBP_MC_SENT;
	for (__u32 i = 0; i < EBP_MC_MEMBERS_MAX; i++) {
		__u32 *ifx = bpf_map_lookup_elem(members, &i);

		if (!ifx || !*ifx)
			break;
		if (*ifx == ingress)
			continue;
		if (last)
			bpf_clone_redirect(skb, last, 0);
		last = *ifx;
	}
	return last ? bpf_redirect(last, 0) : TC_ACT_SHOT;
}

#endif
