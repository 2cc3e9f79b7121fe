// SPDX-License-Identifier: GPL-2.0
/* The sink of the containers benchmark, at tc ingress of the destination container's eth0:
 * count what arrives and drop it.  tc ingress runs on both paths measured (the kernel's
 * veth transmit and backlog, and bpf_redirect_peer's second receive round), so the sink costs
 * the same on both. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_received SEC(".maps");

SEC("tc")
int tc_sink(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&sink_received, &zero);

	if (n)
		(*n)++;
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
