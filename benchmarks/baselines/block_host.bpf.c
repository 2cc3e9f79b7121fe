// SPDX-License-Identifier: GPL-2.0
/* Hand-written baseline of benchmarks/pipelines/block-host.yaml: drop IPv4 packets from
 * 198.18.0.1, pass the rest; a truncated IPv4 header is dropped.  The address is compiled in.
 * Counter slots: 0 the rule, 1 the default, 2 malformed. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "counters.h"

#define BLOCKED 0xc6120001 /* 198.18.0.1 */

BENCH_COUNTER_MAP(verdicts, 8);
BENCH_COUNTER_MAP(rules, 3);

SEC("xdp")
int block_host(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 len = end - data, slot = 1;
	int verdict = XDP_PASS;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > end)
		goto malformed;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		goto out;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5 || (void *)ip + ip->ihl * 4 > end)
		goto malformed;
	if (ip->saddr == bpf_htonl(BLOCKED)) {
		slot = 0;
		verdict = XDP_DROP;
	}
	goto out;
malformed:
	slot = 2;
	verdict = XDP_DROP;
out:
	bench_count(&rules, slot, len);
	bench_count(&verdicts, verdict, len);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
