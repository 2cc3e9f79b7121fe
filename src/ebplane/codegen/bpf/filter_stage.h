/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The filter stage: tuple space search over the shapes of the active rule generation
 * (layout and the atomic-update protocol: filter.h). */
#ifndef EBPLANE_FILTER_STAGE_H
#define EBPLANE_FILTER_STAGE_H

#include "ebplane.h"
#include "filter.h"

/* Build the lookup key of @pkt for shape @s; 0 when the packet cannot match the shape. */
static __always_inline int ebp_flt_key(struct ebp_flt_key *key, const struct ebp_flt_shape *s,
				       const struct ebp_pkt *pkt, __u32 shape_id)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->shape = shape_id;
	if (s->family) {
		if (s->family != pkt->family)
			return 0;
		key->family = s->family;
	}
	if (s->fields & EBP_F_PROTO) {
		if (!pkt->family)
			return 0;
		key->proto = pkt->proto;
	}
	if (s->fields & EBP_F_VLAN) {
		if (!pkt->n_vlan)
			return 0;
		key->vlan = pkt->vlan & s->vlan_mask;
	}
	if (s->fields & (EBP_F_SPORT | EBP_F_DPORT)) {
		if (!(pkt->flags & EBP_PKT_L4))
			return 0;
		key->sport = pkt->sport & s->sport_mask;
		key->dport = pkt->dport & s->dport_mask;
	}
	if (s->fields & EBP_F_SRC) {
		__u32 *k = (__u32 *)key->src;
		k[0] = pkt->src32[0] & s->src_mask[0];
		k[1] = pkt->src32[1] & s->src_mask[1];
		k[2] = pkt->src32[2] & s->src_mask[2];
		k[3] = pkt->src32[3] & s->src_mask[3];
	}
	if (s->fields & EBP_F_DST) {
		__u32 *k = (__u32 *)key->dst;
		k[0] = pkt->dst32[0] & s->dst_mask[0];
		k[1] = pkt->dst32[1] & s->dst_mask[1];
		k[2] = pkt->dst32[2] & s->dst_mask[2];
		k[3] = pkt->dst32[3] & s->dst_mask[3];
	}
	if (s->fields & EBP_F_USER) {
		__u32 *k = (__u32 *)key->user;
		if ((pkt->user_valid & s->user_need) != s->user_need)
			return 0;
		k[0] = pkt->user32[0] & s->user_mask[0];
		k[1] = pkt->user32[1] & s->user_mask[1];
		k[2] = pkt->user32[2] & s->user_mask[2];
		k[3] = pkt->user32[3] & s->user_mask[3];
	}
	return 1;
}

/* State of one classification, shared with the per-shape probe (a bpf_loop callback: the
 * verifier checks the probe once instead of once per shape). */
struct ebp_flt_loop {
	const struct ebp_pkt *pkt;
	__u32 gen;
	__u32 nshapes;
	__u32 found;
	struct ebp_flt_rule best;
};

/* Probe shape @i of the active generation; returns 1 to stop the loop. */
static __always_inline int ebp_flt_probe(void *shapes_map, void *rules_map, __u32 i,
					 struct ebp_flt_loop *l)
{
	struct ebp_flt_shape *s;
	struct ebp_flt_rule *r;
	struct ebp_flt_key key;
	__u32 idx;

	if (i >= l->nshapes)
		return 1;
	idx = l->gen * EBP_FLT_MAX_SHAPES + i;
	s = bpf_map_lookup_elem(shapes_map, &idx);
	if (!s)
		return 1;
	/* shapes are sorted by their best rule: none after this one can win */
	if (l->found && s->min_prio > l->best.prio)
		return 1;
	if (!ebp_flt_key(&key, s, l->pkt, i | (l->gen << 31)))
		return 0;
	r = bpf_map_lookup_elem(rules_map, &key);
	if (r && (!l->found || r->prio < l->best.prio)) {
		l->best = *r;
		l->found = 1;
	}
	return 0;
}

/* Define the classifier of one filter table: NAME_classify(pkt, &rule) returns 1 and fills
 * @rule with the best-priority matching rule of the active generation, or returns 0. */
#define EBP_FLT_DEFINE(NAME, CFG, SHAPES, RULES)					\
static int NAME##_probe(__u32 i, void *ctx)						\
{											\
	return ebp_flt_probe(&SHAPES, &RULES, i, ctx);					\
}											\
static __always_inline int NAME##_classify(const struct ebp_pkt *pkt,			\
					   struct ebp_flt_rule *rule)			\
{											\
	struct ebp_flt_loop l = { .pkt = pkt };						\
	struct ebp_flt_config *cfg;							\
	__u32 zero = 0;									\
											\
	cfg = bpf_map_lookup_elem(&CFG, &zero);						\
	if (!cfg)									\
		return 0;								\
	l.gen = cfg->gen & 1; /* read once: one lookup, one generation */		\
	l.nshapes = cfg->nshapes[l.gen];						\
	if (!l.nshapes)									\
		return 0;								\
	if (l.nshapes == 1)	/* the common case: a direct call, no loop helper */	\
		NAME##_probe(0, &l);							\
	else										\
		bpf_loop(l.nshapes < EBP_FLT_MAX_SHAPES ? l.nshapes : EBP_FLT_MAX_SHAPES,	\
			 NAME##_probe, &l, 0);						\
	*rule = l.best;									\
	return l.found;									\
}

#endif
