/* Counts frames by EtherType (host order) at XDP and at TC, and lets them all pass:
 * real traffic on a veth shows up in `xdp_counts` / `tc_counts`. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} xdp_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} tc_counts SEC(".maps");

static __always_inline void count(void *map, void *data, void *data_end)
{
	struct ethhdr *eth = data;
	__u64 one = 1, *n;
	__u32 key;

	if ((void *)(eth + 1) > data_end)
		return;
	key = bpf_ntohs(eth->h_proto);
	n = bpf_map_lookup_elem(map, &key);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(map, &key, &one, BPF_NOEXIST);
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	count(&xdp_counts, (void *)(long)ctx->data, (void *)(long)ctx->data_end);
	return XDP_PASS;
}

SEC("tc")
int tc_count(struct __sk_buff *skb)
{
	count(&tc_counts, (void *)(long)skb->data, (void *)(long)skb->data_end);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
