/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The filter stage's classifier, shared with its control plane (ebplane.stages.filter).
 *
 * A packet is a point in ten dimensions (EBP_D_*); a rule is a box, one range
 * per dimension, plus an optional condition on the user area (match: fields).  A value a
 * packet cannot carry stands for an absent field (EBP_FLT_*_NONE), so presence is part of
 * the box.  The first rule (lowest prio) whose box holds the packet wins.
 *
 * Two compiled forms; the control plane picks one per table from the rules it holds:
 * - inline: the rules are constant branches in the generated stage (no table reads);
 * - tree:   a decision tree over the boxes in three arrays, split by one dimension and a
 *           threshold per inner node (HyperSplit); a leaf lists at most EBP_FLT_MAX_LEAF
 *           boxes in priority order.  Cost: at most EBP_FLT_MAX_DEPTH inlined array reads
 *           plus one leaf scan, whatever the number of rules.
 *
 * Atomic rule-set changes (tree): each array has two halves, one per generation.  The
 * control plane writes the new tree into the inactive half (indices are absolute), then
 * writes the root of the new tree into the config entry: one aligned 32-bit store, read
 * once per packet, so a packet walks the old tree or the new one, never a mix.  After an
 * RCU grace period the old half is free for the next change.
 */
#ifndef EBPLANE_FILTER_H
#define EBPLANE_FILTER_H

#include "ebplane.h"

/* What the control plane shares with this header is defined once, in Python, and written
 * into each program ahead of it by ebplane/stages/filter/gen.py (header()):
 * - #defines: the dimensions EBP_D_FAMILY .. EBP_D_CT_STATE and their number EBP_FLT_DIMS
 *   (model.DIMS: family, proto, vlan, sport, dport, src_hi, src_lo, dst_hi, dst_lo,
 *   ct_state), the values of absent fields EBP_FLT_{PROTO,VLAN,PORT}_NONE, the limits
 *   EBP_FLT_MAX_DEPTH, EBP_FLT_MAX_LEAF, EBP_FLT_MAX_TREES, the node kinds EBP_FLT_LEAF and
 *   EBP_FLT_TREE (ebp_flt_node.dim), EBP_FLT_EMPTY (root of an empty rule set), and the
 *   rule actions EBP_ACT_PASS, EBP_ACT_DROP, EBP_ACT_KIND (the low byte: pass or drop) with
 *   the flags above it, EBP_ACT_MARK and EBP_ACT_CLASS (what a passing rule sets on the
 *   packet: skb mark, skb priority; at TC directly, at XDP through the metadata area, read
 *   by the TC program ebplane attaches next to the XDP program);
 * - structs (codegen.layout.Layout): ebp_flt_rule (what a classification returns),
 *   ebp_flt_box (a rule's box: lo[]/hi[] per dimension, the user-area condition, the rule)
 *   and ebp_flt_node (a tree node), the values of the tree's maps. */
#ifndef EBP_FLT_DIMS
#error "filter.h needs the #defines and structs ebplane/stages/filter/gen.py generates"
#endif

/* The key of a packet: one value per dimension. */
static __always_inline void ebp_flt_key(__u64 *key, const struct ebp_pkt *pkt)
{
	int ip = pkt->family != 0;

	key[EBP_D_FAMILY] = pkt->family;
	key[EBP_D_PROTO] = ip ? pkt->proto : EBP_FLT_PROTO_NONE;
	key[EBP_D_VLAN] = pkt->n_vlan ? pkt->vlan : EBP_FLT_VLAN_NONE;
	key[EBP_D_SPORT] = pkt->flags & EBP_PKT_L4 ? pkt->sport : EBP_FLT_PORT_NONE;
	key[EBP_D_DPORT] = pkt->flags & EBP_PKT_L4 ? pkt->dport : EBP_FLT_PORT_NONE;
	key[EBP_D_SRC_HI] = __builtin_bswap64(*(const __u64 *)&pkt->src32[0]);
	key[EBP_D_SRC_LO] = __builtin_bswap64(*(const __u64 *)&pkt->src32[2]);
	key[EBP_D_DST_HI] = __builtin_bswap64(*(const __u64 *)&pkt->dst32[0]);
	key[EBP_D_DST_LO] = __builtin_bswap64(*(const __u64 *)&pkt->dst32[2]);
	key[EBP_D_CT_STATE] = pkt->ct_state;
}

/* inline form: record the winning rule */
static __always_inline int ebp_flt_hit(struct ebp_flt_rule *r, __u32 prio, __u32 rule_id,
				       __u32 action, __u32 mark, __u32 klass)
{
	r->prio = prio;
	r->rule_id = rule_id;
	r->action = action;
	r->mark = mark;
	r->klass = klass;
	return 1;
}

/* -- marks from XDP ------------------------------------------------------------------------
 * An XDP program has no skb to mark: it leaves the mark and class in the metadata area in
 * front of the packet, and the TC ingress program generated next to it (ebp_tc_marks) sets
 * them on the skb.  The magic word is xor'ed with the frame length, so a TC program trusts
 * only a record written for the frame it sees. */
#define EBP_MARK_MAGIC 0xeb9a4b51

struct ebp_mark_meta {
	__u32 magic;	/* EBP_MARK_MAGIC ^ frame length */
	__u32 flags;	/* EBP_ACT_MARK | EBP_ACT_CLASS */
	__u32 mark;
	__u32 klass;
};

/* Leave the rule's mark/class for the TC program; invalidates packet pointers. */
static __always_inline void ebp_xdp_leave_marks(struct xdp_md *ctx, const struct ebp_flt_rule *r)
{
	struct ebp_mark_meta *m;
	__u32 len = bpf_xdp_get_buff_len(ctx);

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*m)))
		return;	/* the driver leaves no room for metadata */
	m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data)
		return;
	m->magic = EBP_MARK_MAGIC ^ len;
	m->flags = r->action & (EBP_ACT_MARK | EBP_ACT_CLASS);
	m->mark = r->mark;
	m->klass = r->klass;
}

#define EBP_FLT_IN(b, s, d) ((s)->key[d] >= (b)->lo[d] && (s)->key[d] <= (b)->hi[d])

/* What the walk and the leaf scan read: the packet's key and user area, the leaf found. */
struct ebp_flt_scan {
	__u64 key[EBP_FLT_DIMS];
	__u32 user32[4];
	__u32 user_valid;
	__u32 pad;
};

static __always_inline int ebp_flt_user_holds(const struct ebp_flt_box *b,
					      const struct ebp_flt_scan *s)
{
	return (s->user_valid & b->user_need) == b->user_need &&
	       (s->user32[0] & b->user_mask[0]) == b->user_value[0] &&
	       (s->user32[1] & b->user_mask[1]) == b->user_value[1] &&
	       (s->user32[2] & b->user_mask[2]) == b->user_value[2] &&
	       (s->user32[3] & b->user_mask[3]) == b->user_value[3];
}

/* Define NAME_classify(pkt, &rule) for a table in the tree form: 1 and the winning rule, or
 * 0.  A table is a forest: the rules are partitioned by which fields they leave wide
 * (addresses, destination port), so that one tree's splits do not copy the wide rules of
 * another into every leaf; the config entry names the first tree header
 * (dim == EBP_FLT_TREE: left = the tree's root, right = the next header, thresh = the best
 * priority the tree holds; headers in that order, so the walk stops once no later tree can
 * win).  HOLDS(box, scan) is the table's generated box test: it compares only the dimensions
 * the table's rules use.  Both functions are global, so the verifier checks each once,
 * whatever the parser paths that lead to them (checked inline, the leaf loop was verified
 * again for every distinct parser state and exceeded the verifier's budget). */
#define EBP_FLT_TREE_DEFINE(NAME, CFG, NODES, LEAF, BOXES, HOLDS)			\
__attribute__((noinline)) int NAME##_tree(const struct ebp_flt_scan *s, __u32 root,	\
					  struct ebp_flt_rule *rule)			\
{											\
	const struct ebp_flt_node *n;							\
	const struct ebp_flt_box *b;							\
	__u32 idx = root, *bi, i, first, count;						\
											\
	if (!s || !rule)								\
		return 0;								\
	for (i = 0; i < EBP_FLT_MAX_DEPTH; i++) {					\
		n = bpf_map_lookup_elem(&NODES, &idx);					\
		if (!n)									\
			return 0;							\
		if (n->dim == EBP_FLT_LEAF)						\
			break;								\
		if (n->dim >= EBP_FLT_DIMS)						\
			return 0;							\
		idx = s->key[n->dim] <= n->thresh ? n->left : n->right;			\
	}										\
	if (i == EBP_FLT_MAX_DEPTH)							\
		return 0;								\
	first = n->left;								\
	count = n->right;								\
	for (i = 0; i < EBP_FLT_MAX_LEAF && i < count; i++) {				\
		idx = first + i;							\
		bi = bpf_map_lookup_elem(&LEAF, &idx);					\
		if (!bi)								\
			return 0;							\
		b = bpf_map_lookup_elem(&BOXES, bi);					\
		if (!b)									\
			return 0;							\
		if (HOLDS(b, s)) {							\
			*rule = b->rule;						\
			return 1;							\
		}									\
	}										\
	return 0;									\
}											\
__attribute__((noinline)) int NAME##_classify(const struct ebp_pkt *pkt,		\
					      struct ebp_flt_rule *rule)		\
{											\
	const struct ebp_flt_node *h;							\
	struct ebp_flt_scan s = {};							\
	struct ebp_flt_rule r;								\
	__u32 zero = 0, *root, idx, t;							\
	int found = 0;									\
											\
	if (!pkt || !rule)								\
		return 0;								\
	root = bpf_map_lookup_elem(&CFG, &zero);					\
	if (!root)									\
		return 0;								\
	idx = *(volatile __u32 *)root;	/* read once: one forest */			\
	/* the key once for every tree */						\
	ebp_flt_key(s.key, pkt);							\
	s.user32[0] = pkt->user32[0];							\
	s.user32[1] = pkt->user32[1];							\
	s.user32[2] = pkt->user32[2];							\
	s.user32[3] = pkt->user32[3];							\
	s.user_valid = pkt->user_valid;							\
	for (t = 0; t < EBP_FLT_MAX_TREES && idx != EBP_FLT_EMPTY; t++) {		\
		h = bpf_map_lookup_elem(&NODES, &idx);					\
		if (!h || h->dim != EBP_FLT_TREE)					\
			break;								\
		if (found && h->thresh > rule->prio)					\
			break;	/* no rule of this tree or a later one can win */	\
		idx = h->right;								\
		if (NAME##_tree(&s, h->left, &r) && (!found || r.prio < rule->prio)) {	\
			*rule = r;							\
			found = 1;							\
		}									\
	}										\
	return found;									\
}

/* -- IP fragments ------------------------------------------------------------------------
 * A later fragment has no transport header, so a rule on ports cannot hold for it.  The
 * first fragment's decision is recorded under (family, protocol, stage, IP id, source,
 * destination) and the later fragments of that datagram take it (the approach Cilium takes
 * for its policy).  The table is one per pipeline (ebp_frags): the stage byte keeps the
 * decisions of several stages apart, so other stage kinds can record theirs in it too. */
struct ebp_frag_key {
	__u8  family;
	__u8  proto;
	__u8  stage;	/* index of the deciding stage in the pipeline */
	__u8  pad;
	__u32 id;	/* IPv4: the 16-bit identification; IPv6: the fragment header's id */
	__u32 src[4];
	__u32 dst[4];
};

struct ebp_frag_val {
	__s32 verdict;	/* what the stage returned for the first fragment (EBP_NEXT too) */
	__u32 slot;	/* the counter slot that decided it: a rule id, the default slot */
	__u64 seen_ns;
};

#define EBP_FRAG_TABLE_SIZE 16384

#ifdef EBP_CTX	/* the helpers below need the program's context type */

/* the hook's load-bytes helper: reads across a multi-buffer frame's fragments as well */
#define ebp_load_bytes(ctx, off, to, len)						\
	_Generic((ctx), struct xdp_md *: bpf_xdp_load_bytes,				\
		 default: bpf_skb_load_bytes)((ctx), (off), (to), (len))

/* The key of an IP fragment, its offset in bytes and whether more fragments follow;
 * -1 when the headers cannot be read. */
static __always_inline int ebp_frag_read(EBP_CTX *ctx, const struct ebp_pkt *pkt, __u8 stage,
					 struct ebp_frag_key *k, __u32 *offset, int *more)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->family = pkt->family;
	k->proto = pkt->proto;
	k->stage = stage;
	if (pkt->family == 4) {
		struct ebp_ipv4_hdr ip;
		__u16 fo;

		if (ebp_load_bytes(ctx, pkt->l3_off, &ip, sizeof(ip)))
			return -1;
		fo = bpf_ntohs(ip.frag_off);
		k->id = bpf_ntohs(ip.id);
		k->src[0] = ip.saddr;
		k->dst[0] = ip.daddr;
		*offset = (__u32)(fo & 0x1fff) * 8;
		*more = !!(fo & 0x2000);
		return 0;
	}
#ifdef EBP_HDR_IPV6_FRAG
	if (pkt->family == 6) {
		struct ebp_ipv6_hdr ip6;
		struct ebp_ipv6_frag_hdr fh;
		__u16 at = pkt->hdr_off[EBP_HDR_IPV6_FRAG];

		if (at == 0xffff || ebp_load_bytes(ctx, pkt->l3_off, &ip6, sizeof(ip6)) ||
		    ebp_load_bytes(ctx, at, &fh, sizeof(fh)))
			return -1;
		k->id = bpf_ntohl(fh.id);
		__builtin_memcpy(k->src, ip6.saddr, 16);
		__builtin_memcpy(k->dst, ip6.daddr, 16);
		*offset = bpf_ntohs(fh.frag_off) & 0xfff8;
		*more = bpf_ntohs(fh.frag_off) & 1;
		return 0;
	}
#endif
	return -1;
}

/* Record the first fragment's decision.  A repeated first fragment (offset 0 again, its
 * transport header perhaps rewritten) is classified on its own and its decision replaces
 * the recorded one: what passes is only ever a first fragment the rules let through, and
 * the receiver discards overlapping fragments anyway (RFC 5722; Linux for IPv4 too). */
static __always_inline void ebp_frag_record(void *map, const struct ebp_frag_key *k,
					    int verdict, __u32 slot)
{
	struct ebp_frag_val v = {};

	v.verdict = verdict;
	v.slot = slot;
	v.seen_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(map, k, &v, BPF_ANY);
}

#endif /* EBP_CTX */

#endif
