/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Forwarding building blocks for TC stages (tc-ingress, tc-egress): the skb keeps its
 * offloads (CHECKSUM_PARTIAL, GSO), its socket-side state and its qdiscs, unlike XDP.
 *
 * Which helper sends the packet on, and why:
 *   bpf_redirect_peer(ifindex)  tc-ingress only, and only towards a veth whose peer is in
 *                               another namespace (the control plane marks those in the
 *                               stage's port map, EBP_TC_PORT_PEER).  The skb re-enters the
 *                               receive path as if it had arrived on the peer (the
 *                               container's eth0) in the same softirq round: no veth xmit,
 *                               no per-CPU backlog queue, no second NAPI poll.  The
 *                               neighbour layer is skipped, so the program writes the MACs
 *                               (the FIB lookup's, or the bridge's untouched frame).
 *   bpf_redirect_neigh(ifindex, nh)  a route's other egresses, and every egress whose
 *                               neighbour is not resolved yet (BPF_FIB_LKUP_RET_NO_NEIGH):
 *                               the kernel's neighbour layer fills in the MACs (resolving,
 *                               queueing the skb while it does), so the program writes none.
 *   bpf_redirect(ifindex, 0)    redirect and bridge out of a port (its egress, qdisc
 *                               included), when the peer path does not apply.
 *   bpf_clone_redirect          a bridge's flooding: one copy per port.
 *   TC_ACT_OK                   whatever the kernel must handle (local delivery, ICMP errors,
 *                               fragmentation, blackholes): the packet goes on untouched.
 *
 * bpf_fib_lookup() gets the IP length, so that a route's MTU counts as at XDP, except for a
 * GSO skb (GRO, TSO): tot_len 0 makes the kernel check the skb against the egress device
 * (is_skb_forwardable), so a super-packet is forwarded whole and segmented on the way out.
 */
#ifndef EBPLANE_FORWARD_TC_H
#define EBPLANE_FORWARD_TC_H

#include "forward.h"

/* Generated into each TC program from ebplane/stages/forward/gen.py, their one definition
 * (besides what forward.h reads):
 *   EBP_TRT_<OUTCOME>      a route stage's counter slots at TC (OUTCOMES_TC["route"])
 *   EBP_BR_PEER, EBP_RD_PEER  bridge and redirect at TC: the XDP slots, then "peer" (known
 *                          unicast / the target, into the peer veth's namespace)
 *   EBP_TC_PORT_PEER       a port flag: a veth whose peer sits in another namespace
 *   EBP_TC_BRIDGE_PORTS_MAX  ports of a bridge (its flood array)
 *   struct ebp_tc_port     a TC port: its ifindex and flags (bridge flooding walks an array)
 *   struct ebp_tc_redirect a TC redirect stage's target (ifindex 0: not set yet), its flags
 *                          and the MACs to write */
#ifndef EBP_TRT_SLOTS
#error "forward_tc.h needs the #defines ebplane/stages/forward/gen.py generates"
#endif

#define EBP_PACKET_HOST 0	/* skb->pkt_type: addressed to this interface's MAC */

/* The generated stage passes, as constants for its hook: @here, the interface the packet is
 * seen on (tc-ingress: skb->ingress_ifindex, where it came in; tc-egress: skb->ifindex,
 * where it leaves), and @peer_ok, whether bpf_redirect_peer may be used (tc-ingress only:
 * the kernel drops a peer redirect that does not come from tc ingress). */

/* Whether the egress @ifindex is a peer target. */
static __always_inline int ebp_tc_is_peer(void *ports, __u32 ifindex, int peer_ok)
{
	struct ebp_tc_port *p;

	if (!peer_ok)
		return 0;
	p = bpf_map_lookup_elem(ports, &ifindex);
	return p && (p->flags & EBP_TC_PORT_PEER);
}

/* The next hop bpf_fib_lookup() left in @fib (gateway, or the destination itself). */
static __always_inline int ebp_tc_redirect_neigh(struct bpf_fib_lookup *fib)
{
	struct bpf_redir_neigh nh = {};

	nh.nh_family = fib->family;
	if (fib->family == AF_INET)
		nh.ipv4_nh = fib->ipv4_dst;
	else
		__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, 16);
	return bpf_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
}

/* The slot of a FIB result the kernel must handle (anything but success and no neighbour). */
static __always_inline __u32 ebp_tc_fib_slot(int rc, int may_fragment)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return EBP_TRT_LOCAL;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return EBP_TRT_BLACKHOLE;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return may_fragment ? EBP_TRT_FRAG : EBP_TRT_MTU;
	default:
		return EBP_TRT_OTHER;
	}
}

/* Send a routed packet on: into the peer's namespace (MACs of the FIB result written
 * first), else through the neighbour layer, which also resolves a missing neighbour. */
static __always_inline int ebp_tc_route_send(struct bpf_fib_lookup *fib, int rc, int peer,
					     __u32 *slot)
{
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		*slot = EBP_TRT_NEIGH;
		return ebp_tc_redirect_neigh(fib);
	}
	if (peer) {
		*slot = EBP_TRT_PEER;
		return bpf_redirect_peer(fib->ifindex, 0);
	}
	*slot = EBP_TRT_FORWARDED;
	return ebp_tc_redirect_neigh(fib);
}

/* Route by the kernel's FIB.  @ports: HASH ifindex -> struct ebp_tc_port of the interfaces
 * a packet may be handed to with bpf_redirect_peer. */
static __always_inline int ebp_tc_route(struct __sk_buff *skb, struct ebp_pkt *pkt,
					int malformed, void *ports, __u32 here, int peer_ok,
					__u32 *slot)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_fib_lookup fib = {};
	/* a GSO skb (GRO, TSO) is larger than the MTU it will be cut to: tot_len 0 lets the
	 * kernel check the skb itself against the egress device (is_skb_forwardable) */
	int gso = skb->gso_size != 0;
	int rc, peer;

	if (malformed) {
		*slot = EBP_TRT_MALFORMED;
		return TC_ACT_OK;
	}
	if (pkt->family != 4 && pkt->family != 6) {
		*slot = EBP_TRT_NOT_IP;
		return EBP_NEXT;
	}
	if (pkt->n_vlan || (pkt->eth_proto != ETH_P_IP && pkt->eth_proto != ETH_P_IPV6)) {
		*slot = EBP_TRT_OTHER;
		return TC_ACT_OK;
	}
	/* a router routes only frames addressed to it: at ingress, one for another MAC (a
	 * promiscuous port, a macvlan's lower device) or a broadcast is the kernel's */
	if (peer_ok && skb->pkt_type != EBP_PACKET_HOST) {
		*slot = EBP_TRT_OTHER;
		return TC_ACT_OK;
	}
	fib.ifindex = here;
#ifdef EBP_PARSE_IPV4
	if (pkt->family == 4) {
		struct ebp_ipv4_hdr *ip = data + sizeof(*eth);

		if ((void *)(ip + 1) > data_end) {
			*slot = EBP_TRT_MALFORMED;
			return TC_ACT_OK;
		}
		if (ip->ttl <= 1) {
			*slot = EBP_TRT_TTL_EXCEEDED;
			return TC_ACT_OK;
		}
		fib.family = AF_INET;
		fib.tos = ip->tos;
		fib.l4_protocol = ip->protocol;
		if (!gso)
			fib.tot_len = bpf_ntohs(ip->tot_len);
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
			*slot = ebp_tc_fib_slot(rc, !(ip->frag_off & bpf_htons(EBP_IP_DF)));
			return TC_ACT_OK;
		}
		peer = rc == BPF_FIB_LKUP_RET_SUCCESS && ebp_tc_is_peer(ports, fib.ifindex, peer_ok);
		/* TTL and checksum change together: the header's sum stays, so does skb->csum */
		ebp_ipv4_dec_ttl(ip);
		if (peer)
			ebp_set_macs(eth, fib.dmac, fib.smac);
		return ebp_tc_route_send(&fib, rc, peer, slot);
	}
#endif
#ifdef EBP_PARSE_IPV6
	if (pkt->family == 6) {
		struct ebp_ipv6_hdr *ip6 = data + sizeof(*eth);
		__u8 hlim;

		if ((void *)(ip6 + 1) > data_end) {
			*slot = EBP_TRT_MALFORMED;
			return TC_ACT_OK;
		}
		if (ip6->daddr[0] == 0xff ||
		    (ip6->daddr[0] == 0xfe && (ip6->daddr[1] & 0xc0) == 0x80) ||
		    (ip6->saddr[0] == 0xfe && (ip6->saddr[1] & 0xc0) == 0x80)) {
			*slot = EBP_TRT_LOCAL;
			return TC_ACT_OK;
		}
		if (ip6->hop_limit <= 1) {
			*slot = EBP_TRT_TTL_EXCEEDED;
			return TC_ACT_OK;
		}
		fib.family = AF_INET6;
		fib.flowinfo = ip6->ver_tc_flow & bpf_htonl(0x0fffffff);
		fib.l4_protocol = ip6->nexthdr;
		if (!gso)
			fib.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		__builtin_memcpy(fib.ipv6_src, ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, ip6->daddr, 16);
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
			*slot = ebp_tc_fib_slot(rc, 0);	/* IPv6 routers never fragment */
			return TC_ACT_OK;
		}
		peer = rc == BPF_FIB_LKUP_RET_SUCCESS && ebp_tc_is_peer(ports, fib.ifindex, peer_ok);
		hlim = ip6->hop_limit - 1;
		if (peer)
			ebp_set_macs(eth, fib.dmac, fib.smac);
		/* no header checksum in IPv6, but a CHECKSUM_COMPLETE skb->csum covers the byte:
		 * the helper keeps it right (packet pointers are invalid afterwards) */
		if (bpf_skb_store_bytes(skb, sizeof(*eth) + offsetof(struct ebp_ipv6_hdr, hop_limit),
					&hlim, 1, BPF_F_RECOMPUTE_CSUM)) {
			*slot = EBP_TRT_OTHER;
			return TC_ACT_SHOT;	/* the MACs may be written already */
		}
		return ebp_tc_route_send(&fib, rc, peer, slot);
	}
#endif
	*slot = EBP_TRT_NOT_IP;
	return EBP_NEXT;
}

/* Send the skb out of (or, peer targets at tc-ingress, into the peer of) @ifindex. */
static __always_inline int ebp_tc_send(void *ports, __u32 ifindex, int peer_ok, __u32 *slot,
				       __u32 out_slot, __u32 peer_slot)
{
	if (ebp_tc_is_peer(ports, ifindex, peer_ok)) {
		*slot = peer_slot;
		return bpf_redirect_peer(ifindex, 0);
	}
	*slot = out_slot;
	return bpf_redirect(ifindex, 0);
}

/* Flood to every port of @ports_by_index (ARRAY 0..@nports-1 of struct ebp_tc_port) but
 * @ingress: copies to all but the last, the skb itself to the last one. */
static __always_inline int ebp_tc_flood(struct __sk_buff *skb, void *ports_by_index,
					__u32 nports, __u32 ingress)
{
	__u32 last = 0;

	for (__u32 i = 0; i < nports && i < EBP_TC_BRIDGE_PORTS_MAX; i++) {
		struct ebp_tc_port *p = bpf_map_lookup_elem(ports_by_index, &i);

		if (!p || !p->ifindex || p->ifindex == ingress)
			continue;
		if (last)
			bpf_clone_redirect(skb, last, 0);
		last = p->ifindex;
	}
	return last ? bpf_redirect(last, 0) : TC_ACT_SHOT;
}

/* Bridge between the interfaces of @ports (HASH ifindex -> struct ebp_tc_port) by (MAC,
 * VLAN), learning source MACs.  Known unicast goes into its port's peer namespace
 * (tc-ingress, veth) or out of the port; the rest is flooded with clones. */
static __always_inline int ebp_tc_bridge(struct __sk_buff *skb, struct ebp_pkt *pkt,
					 void *ports, void *ports_by_index, __u32 nports,
					 void *fdb, void *counters, __u64 ageing_ns,
					 __u32 here, int peer_ok, __u32 *slot)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 ingress = here;
	__u16 vlan = pkt->n_vlan ? pkt->vlan : 0;
	struct ebp_fdb_key key = { .vlan = vlan };
	struct ebp_fdb_entry *e;
	__u64 now;

	if ((void *)(eth + 1) > data_end) {
		*slot = EBP_BR_RUNT;
		return TC_ACT_SHOT;
	}
	if (!bpf_map_lookup_elem(ports, &ingress)) {
		*slot = EBP_BR_NOT_PORT;
		return EBP_NEXT;
	}
	now = bpf_ktime_get_ns();
	ebp_bridge_learn(fdb, counters, eth, vlan, ingress, now, pkt->len);
	if (eth->h_dest[0] & 1) {
		*slot = EBP_BR_BROADCAST;
		return ebp_tc_flood(skb, ports_by_index, nports, ingress);
	}
	__builtin_memcpy(key.mac, eth->h_dest, EBP_ETH_ALEN);
	e = bpf_map_lookup_elem(fdb, &key);
	if (e && now - e->seen_ns <= ageing_ns) {
		__u32 out = e->ifindex;

		if (out == ingress) {
			*slot = EBP_BR_FILTERED;
			return TC_ACT_SHOT;
		}
		if (bpf_map_lookup_elem(ports, &out))
			return ebp_tc_send(ports, out, peer_ok, slot, EBP_BR_FORWARDED,
					   EBP_BR_PEER);
	}
	*slot = EBP_BR_FLOODED;
	return ebp_tc_flood(skb, ports_by_index, nports, ingress);
}

#endif
