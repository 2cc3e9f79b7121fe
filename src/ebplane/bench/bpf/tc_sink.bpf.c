// SPDX-License-Identifier: GPL-2.0
/* The sink of the containers benchmark, at tc ingress of the destination container's eth0:
 * count what arrives and drop it.  tc ingress runs on both paths measured (the kernel's
 * veth transmit and backlog, and bpf_redirect_peer's second receive round), so the sink costs
 * the same on both. */
#include <linux/pkt_cls.h>
#include "sink.h"

SEC("tc")
int tc_sink(struct __sk_buff *skb)
{
	sink_count();
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
