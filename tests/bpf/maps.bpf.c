/* Maps of every kind the tests exercise, and a program that uses the map-in-map:
 * verdict = inner[outer[0]][key = first byte of the packet], or XDP_ABORTED when absent. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct flow {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct stats {
	__u64 packets;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow);
	__type(value, struct stats);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} slots SEC(".maps");

struct inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, struct inner);
} outer SEC(".maps");

SEC("xdp")
int use_inner(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	unsigned char *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0, key;
	__u32 *verdict;
	void *in;

	if (data + 1 > data_end)
		return XDP_ABORTED;
	key = data[0];
	in = bpf_map_lookup_elem(&outer, &zero);
	if (!in)
		return XDP_ABORTED;
	verdict = bpf_map_lookup_elem(in, &key);
	return verdict ? *verdict : XDP_ABORTED;
}

char LICENSE[] SEC("license") = "GPL";
