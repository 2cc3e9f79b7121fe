// SPDX-License-Identifier: GPL-2.0
/* Hand-written baseline of benchmarks/pipelines/drop-dns.yaml: drop IPv4 UDP to port 53,
 * pass everything else; a truncated IPv4 or UDP header is dropped (the pipeline's
 * `malformed: drop`).  The rule is compiled in: the fastest program for this one rule set.
 * Counter slots: 0 the rule, 1 the default, 2 malformed. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "counters.h"

BENCH_COUNTER_MAP(verdicts, 8);
BENCH_COUNTER_MAP(rules, 3);

SEC("xdp")
int drop_dns(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 len = end - data, slot = 1, ihl;
	int verdict = XDP_PASS;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;

	if ((void *)(eth + 1) > end)
		goto malformed;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		goto out;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		goto malformed;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip) || (void *)ip + ihl > end)
		goto malformed;
	if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x1fff)))
		goto out;
	udp = (void *)ip + ihl;
	if ((void *)(udp + 1) > end)
		goto malformed;
	if (udp->dest == bpf_htons(53)) {
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
