/* Deliberately wrong after a long walk: the verifier follows every iteration of the loop
 * (a few thousand lines of log) before it meets the unchecked packet read at the end. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int long_log(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	__u64 sum = 0;

#pragma clang loop unroll(disable)
	for (int i = 0; i < 3000; i++)
		sum += bpf_ktime_get_ns();
	return data[sum & 7] == 0x45 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
