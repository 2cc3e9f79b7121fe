// SPDX-License-Identifier: GPL-2.0
/* Connection tracking two ways, per UDP packet at XDP (benchmarks/conntrack_kfunc.py):
 *
 *   kf_*   the kernel's conntrack through its kfuncs: bpf_xdp_ct_lookup, and on a miss
 *          bpf_xdp_ct_alloc + bpf_ct_set_timeout + bpf_ct_insert_entry (what a data plane
 *          that leaves the table to the kernel does for a new flow);
 *   own_*  ebplane's conntrack stage code (ebp_ct_track from stages/conntrack/conntrack.h)
 *          on its own hash table, as the stage makes it (BPF_F_NO_PREALLOC);
 *   pre_*  the same on a preallocated hash table.
 *
 * *_est sees the same packet every run (an established flow: a lookup hit); *_new rewrites
 * the packet's source port and address from a per-CPU counter first, so every run is a new
 * flow (a miss and an insert).  Both parse Ethernet/IPv4/UDP the same way by hand.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define EBP_CTX struct xdp_md
#include "ebplane.h"
#include "conntrack.h"

/* defined (not forward-declared) so that libbpf matches them to the kernel's structs */
struct nf_conn { int unused; };
struct nf_conn___init { int unused; };

struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple,
					 __u32 len_tuple, struct bpf_ct_opts *opts,
					 __u32 len_opts) __ksym;
extern struct nf_conn___init *bpf_xdp_ct_alloc(struct xdp_md *ctx, struct bpf_sock_tuple *tuple,
					       __u32 len_tuple, struct bpf_ct_opts *opts,
					       __u32 len_opts) __ksym;
extern struct nf_conn *bpf_ct_insert_entry(struct nf_conn___init *nfct) __ksym;
extern void bpf_ct_set_timeout(struct nf_conn___init *nfct, __u32 timeout) __ksym;
extern void bpf_ct_release(struct nf_conn *nfct) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seq SEC(".maps");

/* results: 0 hit, 1 inserted, 2 insert failed, 3 not parsed */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct ebp_count);
} results SEC(".maps");

/* ebplane's conntrack table as the stage makes it (BPF_F_NO_PREALLOC: memory as used) ... */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ebp_ct_key);
	__type(value, struct ebp_ct_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} own_tab SEC(".maps");

/* ... and preallocated (all entries allocated when the map is made) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ebp_ct_key);
	__type(value, struct ebp_ct_entry);
} own_pre SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} own_gc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EBP_CT_NCOUNTERS);
	__type(key, __u32);
	__type(value, struct ebp_count);
} own_cnt SEC(".maps");

struct hdrs {
	struct ethhdr eth;
	struct ebp_ipv4_hdr ip;
	__be16 sport, dport, len, check;
} __attribute__((packed));

static __always_inline struct hdrs *parse(struct xdp_md *ctx, int fresh)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct hdrs *h = data;

	if ((void *)(h + 1) > data_end || h->eth.h_proto != bpf_htons(ETH_P_IP) ||
	    h->ip.ver_ihl != 0x45 || h->ip.protocol != IPPROTO_UDP)
		return NULL;
	if (fresh) {
		__u64 *n = bpf_map_lookup_elem(&seq, &(__u32){0});

		if (!n)
			return NULL;
		*n += 1;
		h->sport = bpf_htons((__u16)*n);
		h->ip.saddr = bpf_htonl(0xc6120000 | (*n >> 16 & 0xffff));	/* 198.18.x.x */
	}
	return h;
}

static __always_inline int kfunc_track(struct xdp_md *ctx, int fresh)
{
	struct bpf_ct_opts opts = { .netns_id = -1, .l4proto = IPPROTO_UDP };
	struct bpf_sock_tuple t = {};
	struct nf_conn___init *init;
	struct nf_conn *ct;
	struct hdrs *h = parse(ctx, fresh);
	__u32 res;

	if (!h) {
		ebp_count(&results, 3, 0);
		return XDP_PASS;
	}
	t.ipv4.saddr = h->ip.saddr;
	t.ipv4.daddr = h->ip.daddr;
	t.ipv4.sport = h->sport;
	t.ipv4.dport = h->dport;
	ct = bpf_xdp_ct_lookup(ctx, &t, sizeof(t.ipv4), &opts, sizeof(opts));
	if (ct) {
		bpf_ct_release(ct);
		ebp_count(&results, 0, 0);
		return XDP_PASS;
	}
	opts.netns_id = -1;
	opts.l4proto = IPPROTO_UDP;
	init = bpf_xdp_ct_alloc(ctx, &t, sizeof(t.ipv4), &opts, sizeof(opts));
	if (!init) {
		ebp_count(&results, 2, 0);
		return XDP_PASS;
	}
	bpf_ct_set_timeout(init, 30000);
	ct = bpf_ct_insert_entry(init);
	res = ct ? 1 : 2;
	if (ct)
		bpf_ct_release(ct);
	ebp_count(&results, res, 0);
	return XDP_PASS;
}

static __always_inline int own_track(struct xdp_md *ctx, int fresh, void *table)
{
	const struct ebp_ct_timeouts to = { .syn = 60, .established = 3600, .fin = 120,
					    .close = 10, .udp = 30, .udp_replied = 120, .icmp = 30 };
	struct hdrs *h = parse(ctx, fresh);
	struct ebp_pkt pkt = {};
	__u64 *gc = bpf_map_lookup_elem(&own_gc, &(__u32){0});
	int refused, st;

	if (!h || !gc) {
		ebp_count(&results, 3, 0);
		return XDP_PASS;
	}
	pkt.family = 4;
	pkt.proto = IPPROTO_UDP;
	pkt.flags = EBP_PKT_L4;
	pkt.l3_off = sizeof(struct ethhdr);
	pkt.l4_off = sizeof(struct ethhdr) + 20;
	pkt.src32[0] = h->ip.saddr;
	pkt.dst32[0] = h->ip.daddr;
	pkt.sport = bpf_ntohs(h->sport);
	pkt.dport = bpf_ntohs(h->dport);
	st = ebp_ct_track(ctx, &pkt, table, &to, gc, &own_cnt, &refused);
	ebp_count(&results, refused ? 2 : st == EBP_CT_NEW && fresh ? 1 : 0, 0);
	return XDP_PASS;
}

SEC("xdp") int kf_est(struct xdp_md *ctx) { return kfunc_track(ctx, 0); }
SEC("xdp") int kf_new(struct xdp_md *ctx) { return kfunc_track(ctx, 1); }
SEC("xdp") int own_est(struct xdp_md *ctx) { return own_track(ctx, 0, &own_tab); }
SEC("xdp") int own_new(struct xdp_md *ctx) { return own_track(ctx, 1, &own_tab); }
SEC("xdp") int pre_est(struct xdp_md *ctx) { return own_track(ctx, 0, &own_pre); }
SEC("xdp") int pre_new(struct xdp_md *ctx) { return own_track(ctx, 1, &own_pre); }

char LICENSE[] SEC("license") = "GPL";
