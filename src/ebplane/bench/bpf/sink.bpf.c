// SPDX-License-Identifier: GPL-2.0
/* The sink at the far end of a forwarding benchmark: count what arrives, drop it.  Having an
 * XDP program also makes the sink's veth peer a valid XDP redirect target. */
#include "sink.h"

SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	sink_count();
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
