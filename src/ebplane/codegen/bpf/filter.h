/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Shared between the BPF filter stage and the control plane (ebplane.runtime.classifier):
 * the layout of the tuple-space-search classifier tables.
 *
 * Rules are grouped by shape: the set of fields they match and the prefix length / port mask
 * of each.  Each shape is one probe of one hash table: the packet's fields are masked with the
 * shape's masks and looked up.  The best (lowest) priority over all probed shapes wins.  Shapes
 * are sorted by the best priority they hold, so the probe loop stops as soon as no later shape
 * can beat the match already found.  Cost: O(number of shapes), independent of the number of rules.
 *
 * Atomic rule-set changes: every key carries a generation bit.  The control plane writes the new
 * rule set under the inactive generation, flips `gen` in the config entry with one write, waits
 * for an RCU grace period, then deletes the old generation.  A packet reads `gen` once, so it sees
 * the old or the new rule set, never a mix.
 */
#ifndef EBPLANE_FILTER_H
#define EBPLANE_FILTER_H

#define EBP_FLT_MAX_SHAPES 32

/* ebp_flt_shape.fields */
#define EBP_F_PROTO 0x01
#define EBP_F_SPORT 0x02
#define EBP_F_DPORT 0x04
#define EBP_F_VLAN  0x08
#define EBP_F_SRC   0x10
#define EBP_F_DST   0x20
#define EBP_F_USER  0x40 /* match: fields in the packet's user area (ebp_pkt.user) */

/* rule actions (ebp_flt_rule.action) */
#define EBP_ACT_PASS 0
#define EBP_ACT_DROP 1

/* key of the rules hash; all fields masked by the shape, unused bytes zero */
struct ebp_flt_key {
	__u32 shape;      /* shape index | (generation << 31) */
	__u8  family;     /* 0 = any, 4, 6 (from the shape) */
	__u8  proto;      /* IP protocol / IPv6 last next header */
	__u16 vlan;       /* outer VLAN id, host order */
	__u16 sport;      /* host order, masked */
	__u16 dport;      /* host order, masked */
	__u8  src[16];    /* IPv4 in the first 4 bytes, network order, masked */
	__u8  dst[16];
	__u8  user[16];   /* ebp_pkt.user & the shape's user_mask */
};

struct ebp_flt_rule {
	__u32 prio;       /* position in the rule list: lower wins */
	__u32 rule_id;    /* stable id: index of the rule's counters */
	__u32 action;     /* EBP_ACT_* */
};

/* entry gen * EBP_FLT_MAX_SHAPES + i of the shapes array */
struct ebp_flt_shape {
	__u8  family;     /* 0 = any, 4, 6 */
	__u8  fields;     /* EBP_F_* */
	__u16 vlan_mask;  /* host order (0x0fff when EBP_F_VLAN) */
	__u16 sport_mask; /* host order */
	__u16 dport_mask;
	__u32 min_prio;   /* best priority held by the shape */
	__u32 src_mask[4];/* network order; IPv4 uses src_mask[0] only */
	__u32 dst_mask[4];
	__u32 user_need;  /* ebp_pkt.user_valid bits the packet must have (EBP_F_USER) */
	__u32 user_mask[4];/* byte mask of ebp_pkt.user, as the bytes are laid out */
};

/* entry 0 of the config array */
struct ebp_flt_config {
	__u32 gen;        /* active generation: 0 or 1 */
	__u32 nshapes[2]; /* shapes in use per generation */
	__u32 pad;
};

/* per-rule counters (struct ebp_count, ebplane.h) are a per-CPU array indexed by rule_id;
 * the default verdict and malformed packets use the last two slots (capacity, capacity + 1) */

#endif
