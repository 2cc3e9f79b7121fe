/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Mirroring: a copy of selected packets to another interface while the original goes on.
 *
 * TC: bpf_clone_redirect() sends a clone out of the mirror port (its egress) and the
 * original continues with the next stage, unchanged (the skb keeps its checksum state).
 * XDP: a program cannot clone a frame and go on with it.  The original must leave by a
 * known port (out:); a DEVMAP_HASH holds that port and the mirror port, and one
 * bpf_redirect_map(..., BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS) sends the frame to both
 * (the kernel copies it per target).  Frames that are not mirrored are redirected to out:.
 *
 */
#ifndef EBPLANE_MIRROR_H
#define EBPLANE_MIRROR_H

#include "ebplane.h"

/* Counter slots, defined once in ebplane/stages/mirror/gen.py (OUTCOMES) and written into
 * each program ahead of this header as EBP_MR_<OUTCOME>: MIRRORED (a copy went out),
 * NOT_SELECTED, NOT_SAMPLED (selected, not in the 1-in-N sample), NO_PORT (the mirror, or at
 * XDP the out, port is not set up: no copy), FAILED (TC: bpf_clone_redirect refused),
 * MULTI_BUFFER (XDP: selected but in several buffers, which a devmap broadcast cannot copy:
 * the original goes to out alone); EBP_MR_NSLOTS in all.
 */
#ifndef EBP_MR_NSLOTS
#error "mirror.h needs the #defines and struct ebplane/stages/mirror/gen.py generates"
#endif

/* struct ebp_mirror_cfg (the config map's value: the mirror port and, at XDP, the original's
 * port) is generated into each program from its one definition in
 * ebplane/stages/mirror/gen.py (a Layout). */

#ifndef EBP_XDP_MULTI_BUFFER
#define EBP_XDP_MULTI_BUFFER
/* Whether the frame spans several buffers (only an xdp.frags program sees such frames). */
static __always_inline int ebp_xdp_multi_buffer(struct xdp_md *ctx)
{
	return bpf_xdp_get_buff_len(ctx) > (__u64)(ctx->data_end - ctx->data);
}
#endif

static __always_inline int ebp_mirror_sampled(__u32 sample)
{
	return sample <= 1 || bpf_get_prandom_u32() % sample == 0;
}

static __always_inline int ebp_mirror_tc(struct __sk_buff *ctx, int selected, __u32 sample,
					 void *cfg, __u32 *slot)
{
	__u32 zero = 0;
	struct ebp_mirror_cfg *c;

	if (!selected) {
		*slot = EBP_MR_NOT_SELECTED;
		return EBP_NEXT;
	}
	if (!ebp_mirror_sampled(sample)) {
		*slot = EBP_MR_NOT_SAMPLED;
		return EBP_NEXT;
	}
	c = bpf_map_lookup_elem(cfg, &zero);
	if (!c || !c->to) {
		*slot = EBP_MR_NO_PORT;
		return EBP_NEXT;
	}
	*slot = bpf_clone_redirect(ctx, c->to, 0) ? EBP_MR_FAILED : EBP_MR_MIRRORED;
	return EBP_NEXT;
}
static __always_inline int ebp_mirror_xdp(struct xdp_md *ctx, int selected, __u32 sample,
					  void *ports, void *cfg, __u32 *slot)
{
	__u32 zero = 0;
	struct ebp_mirror_cfg *c = bpf_map_lookup_elem(cfg, &zero);
	int act;

	if (!c || !c->to || !c->out) {
		*slot = EBP_MR_NO_PORT;
		return XDP_PASS;
	}
	if (selected && ebp_mirror_sampled(sample)) {
		if (!ebp_xdp_multi_buffer(ctx)) {
			*slot = EBP_MR_MIRRORED;
			return bpf_redirect_map(ports, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
		}
		*slot = EBP_MR_MULTI_BUFFER;
	} else {
		*slot = selected ? EBP_MR_NOT_SAMPLED : EBP_MR_NOT_SELECTED;
	}
	act = bpf_redirect_map(ports, c->out, XDP_PASS);
	if (act != XDP_REDIRECT)
		*slot = EBP_MR_NO_PORT;	/* counted as no_port: the original went to the kernel */
	return act;
}

#endif
