/* Emits one ring-buffer record per packet: a sequence number, the packet length and its
 * first 8 bytes. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct event {
	__u64 seq;
	__u32 len;
	__u32 pad;
	__u8 head[8];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seq SEC(".maps");

SEC("xdp")
int emit(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	unsigned char *data_end = (void *)(long)ctx->data_end;
	struct event ev = {};
	__u32 zero = 0;
	__u64 *s = bpf_map_lookup_elem(&seq, &zero);

	if (!s || data + 8 > data_end)
		return XDP_ABORTED;
	ev.seq = __sync_fetch_and_add(s, 1);
	ev.len = data_end - data;
	__builtin_memcpy(ev.head, data, 8);
	bpf_ringbuf_output(&events, &ev, sizeof(ev), 0);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
