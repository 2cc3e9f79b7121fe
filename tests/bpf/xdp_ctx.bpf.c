/* Reads the XDP context (ingress_ifindex, rx_queue_index) into `ctxinfo` and trims the
 * last 4 bytes of the frame, so both ctx_in and ctx_out of BPF_PROG_TEST_RUN are visible. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct ctxinfo {
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 len;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ctxinfo);
} ctxinfo SEC(".maps");

SEC("xdp")
int xdp_ctx(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct ctxinfo *ci = bpf_map_lookup_elem(&ctxinfo, &zero);

	if (!ci)
		return XDP_ABORTED;
	ci->ingress_ifindex = ctx->ingress_ifindex;
	ci->rx_queue_index = ctx->rx_queue_index;
	ci->len = ctx->data_end - ctx->data;
	if (bpf_xdp_adjust_tail(ctx, -4))
		return XDP_ABORTED;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
