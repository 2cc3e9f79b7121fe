// SPDX-License-Identifier: GPL-2.0
/* Hand-written baseline of an L4 load balancer in XDP, the job of ebplane's balancer stage
 * reduced to what one IPv4 VIP needs: parse Ethernet/IPv4/TCP-or-UDP, look the VIP up, look
 * the flow up in an LRU connection table or else take its backend from the VIP's Maglev
 * table (hash mod M, the same murmur3 mixing), encapsulate in IPIP with the outer checksum,
 * look the backend up in the kernel's FIB and send it (XDP_TX or redirect).  No fragments,
 * no IPv6, no too-big handling, no table halves: the balancer's floor for this work.
 * Maps are filled by the benchmark (ebplane.bench.balancer). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "counters.h"

#define AF_INET 2
#define MAGLEV_M 65537

struct vip_key { __u32 addr; __u16 port; __u8 proto; __u8 pad; };
struct flow { __u32 src, dst; __u16 sport, dport; __u8 proto; __u8 pad[3]; };
struct backend { __u32 addr; __u32 pad; };

struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 64);
	 __type(key, struct vip_key); __type(value, __u32); } vips SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, MAGLEV_M);
	 __type(key, __u32); __type(value, __u32); } ring SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 256);
	 __type(key, __u32); __type(value, struct backend); } reals SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 65536);
	 __type(key, struct flow); __type(value, __u32); } conns SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
	 __type(key, __u32); __type(value, __u32); } source SEC(".maps");
BENCH_COUNTER_MAP(verdicts, 8);

static __always_inline __u32 mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 flow_hash(const struct flow *f)
{
	__u32 h = 0x5eed1b1b;

	h = mix(h, f->src);
	h = mix(h, 0);
	h = mix(h, 0);
	h = mix(h, 0);
	h = mix(h, (__u32)f->sport << 16 | f->dport);
	h = mix(h, f->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	return h ^ (h >> 16);
}

SEC("xdp")
int maglev_encap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 len = end - data, zero = 0, *id, *src, b, slot, csum = 0;
	int verdict = XDP_PASS;
	struct ethhdr *eth = data, old;
	struct iphdr *ip = (void *)(eth + 1), *outer;
	__u16 *ports = (void *)(ip + 1), tot, *w;
	struct vip_key vk = {};
	struct flow f = {};
	struct backend *be;
	struct bpf_fib_lookup fib = {};

	if ((void *)(ports + 2) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    (ip->frag_off & bpf_htons(0x3fff)) ||
	    (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP))
		goto out;
	vk.addr = ip->daddr;
	vk.port = bpf_ntohs(ports[1]);
	vk.proto = ip->protocol;
	id = bpf_map_lookup_elem(&vips, &vk);
	if (!id)
		goto out;
	f.src = ip->saddr;
	f.dst = ip->daddr;
	f.sport = bpf_ntohs(ports[0]);
	f.dport = vk.port;
	f.proto = ip->protocol;
	id = bpf_map_lookup_elem(&conns, &f);
	if (id) {
		b = *id;
	} else {
		slot = flow_hash(&f) % MAGLEV_M;
		id = bpf_map_lookup_elem(&ring, &slot);
		if (!id) {
			verdict = XDP_DROP;
			goto out;
		}
		b = *id;
		bpf_map_update_elem(&conns, &f, &b, BPF_ANY);
	}
	be = bpf_map_lookup_elem(&reals, &b);
	src = bpf_map_lookup_elem(&source, &zero);
	if (!be || !src) {
		verdict = XDP_DROP;
		goto out;
	}
	tot = bpf_ntohs(ip->tot_len) + sizeof(struct iphdr);
	__builtin_memcpy(&old, eth, sizeof(old));
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr))) {
		verdict = XDP_DROP;
		goto out;
	}
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > end) {
		verdict = XDP_DROP;
		goto out;
	}
	__builtin_memcpy(eth, &old, sizeof(old));
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = 0;
	outer->tot_len = bpf_htons(tot);
	outer->id = 0;
	outer->frag_off = bpf_htons(0x4000);
	outer->ttl = 64;
	outer->protocol = IPPROTO_IPIP;
	outer->check = 0;
	outer->saddr = *src;
	outer->daddr = be->addr;
	w = (void *)outer;
#pragma unroll
	for (int i = 0; i < 10; i++)
		csum += w[i];
	csum = (csum & 0xffff) + (csum >> 16);
	outer->check = ~(csum + (csum >> 16));
	fib.family = AF_INET;
	fib.tot_len = tot;
	fib.ipv4_src = *src;
	fib.ipv4_dst = be->addr;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		goto out;	/* XDP_PASS: the stack resolves the neighbour */
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	verdict = fib.ifindex == ctx->ingress_ifindex ? XDP_TX : bpf_redirect(fib.ifindex, 0);
out:
	bench_count(&verdicts, verdict, len);
	return verdict;
}

char LICENSE[] SEC("license") = "GPL";
