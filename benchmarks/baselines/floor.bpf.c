// SPDX-License-Identifier: GPL-2.0
/* The floor: an XDP program that does nothing but drop.  Its cost is what running any XDP
 * program costs (in BPF_PROG_TEST_RUN: the harness; on a veth: the delivery). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_floor(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
