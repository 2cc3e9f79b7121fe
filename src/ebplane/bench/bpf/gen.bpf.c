// SPDX-License-Identifier: GPL-2.0
/* The benchmark's traffic generator, run with BPF_PROG_TEST_RUN and
 * BPF_F_TEST_XDP_LIVE_FRAMES: every run writes the frame's first GEN_HDR bytes from the
 * template and returns the template's action.  XDP_TX sends the frame out of the device
 * named by ctx ingress_ifindex (to its veth peer); XDP_DROP measures the generator alone.
 * The headers are written on every packet because live-frame pages are recycled without
 * being copied again: a device under test that rewrites MACs and TTL in place (forwarding)
 * would otherwise be sent its own rewrites back. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define GEN_HDR 64

struct gen_config {
	__u8 frame[GEN_HDR];
	__u32 action; /* XDP_TX or XDP_DROP */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_sent SEC(".maps");

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct gen_config *cfg;
	__u32 zero = 0;
	__u64 *sent;

	cfg = bpf_map_lookup_elem(&gen_config, &zero);
	if (!cfg || data + GEN_HDR > end)
		return XDP_ABORTED;
	__builtin_memcpy(data, cfg->frame, GEN_HDR);
	sent = bpf_map_lookup_elem(&gen_sent, &zero);
	if (sent)
		(*sent)++;
	return cfg->action;
}

char LICENSE[] SEC("license") = "GPL";
