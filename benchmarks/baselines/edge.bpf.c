// SPDX-License-Identifier: GPL-2.0
/* Hand-written baseline of benchmarks/pipelines/edge.yaml (the edge firewall example):
 *   rule 0: IPv4 from 198.18.0.0/24, UDP to port 53      -> drop
 *   rule 1: IPv6 to 2001:db8::/32, TCP to ports 22-23    -> drop
 *   rule 2: VLAN 100                                     -> pass
 *   otherwise: count (all / IPv4 / IPv6 / other) and pass; truncated headers: drop.
 * The rules are compiled in.  One shortcut a hand-writer takes: IPv6 extension headers are
 * not walked (the generated parser walks up to six), so this baseline only gets cheaper.
 * Counter slots: 0-2 the rules, 3 the default, 4 malformed. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "counters.h"

#define NET_198_18_0 0xc6120000 /* 198.18.0.0/24 */

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

BENCH_COUNTER_MAP(verdicts, 8);
BENCH_COUNTER_MAP(rules, 5);
BENCH_COUNTER_MAP(families, 4);

SEC("xdp")
int edge(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 len = end - data, slot = 3, off = sizeof(struct ethhdr), vlan = 0, family = 3;
	int verdict = XDP_PASS, tagged = 0;
	struct ethhdr *eth = data;
	__be16 proto;

	if ((void *)(eth + 1) > end)
		goto malformed;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct vlan_hdr *vh = data + off;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > end)
			goto malformed;
		if (!tagged)
			vlan = bpf_ntohs(vh->tci) & 0x0fff;
		tagged = 1;
		proto = vh->proto;
		off += sizeof(*vh);
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		__u32 ihl;

		family = 1;
		if ((void *)(ip + 1) > end)
			goto malformed;
		ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip) || (void *)ip + ihl > end)
			goto malformed;
		if (ip->protocol == IPPROTO_UDP && !(ip->frag_off & bpf_htons(0x1fff))) {
			struct udphdr *udp = (void *)ip + ihl;

			if ((void *)(udp + 1) > end)
				goto malformed;
			if ((ip->saddr & bpf_htonl(0xffffff00)) == bpf_htonl(NET_198_18_0) &&
			    udp->dest == bpf_htons(53)) {
				slot = 0;
				verdict = XDP_DROP;
				goto out;
			}
		}
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;

		family = 2;
		if ((void *)(ip6 + 1) > end)
			goto malformed;
		if (ip6->nexthdr == IPPROTO_TCP) {
			struct udphdr *ports = (void *)(ip6 + 1); /* TCP ports sit where UDP's do */

			if ((void *)(ip6 + 1) + 20 > end)
				goto malformed;
			if (ip6->daddr.in6_u.u6_addr32[0] == bpf_htonl(0x20010db8) &&
			    (ports->dest == bpf_htons(22) || ports->dest == bpf_htons(23))) {
				slot = 1;
				verdict = XDP_DROP;
				goto out;
			}
		}
	}
	if (tagged && vlan == 100) {
		slot = 2;
		goto out;
	}
	/* default: next stage, the count stage */
	bench_count(&families, 0, len);
	bench_count(&families, family, len);
	goto out;
malformed:
	slot = 4;
	verdict = XDP_DROP;
out:
	bench_count(&rules, slot, len);
	bench_count(&verdicts, verdict, len);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
