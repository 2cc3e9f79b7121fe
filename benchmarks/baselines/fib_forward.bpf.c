// SPDX-License-Identifier: GPL-2.0
/* Hand-written baseline of IPv4 forwarding in XDP: look the destination up in the kernel's
 * FIB (routes and neighbours), rewrite the MACs, decrement the TTL (checksum updated
 * incrementally) and redirect to the egress device.  What the lookup cannot resolve (no
 * route, no neighbour entry, TTL about to expire, not IPv4) goes to the kernel stack. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "counters.h"

#define AF_INET 2

BENCH_COUNTER_MAP(verdicts, 8);

SEC("xdp")
int fib_forward(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 len = end - data, csum;
	int verdict = XDP_PASS;
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ttl <= 1)
		goto out;
	fib.family = AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		goto out;
	/* TTL - 1: the checksum field grows by 0x0100 (RFC 1624), end-around carry */
	csum = ip->check + bpf_htons(0x0100);
	ip->check = (__u16)(csum + (csum >> 16));
	ip->ttl--;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	verdict = bpf_redirect(fib.ifindex, 0);
out:
	bench_count(&verdicts, verdict, len);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
