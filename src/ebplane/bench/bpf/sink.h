/* SPDX-License-Identifier: GPL-2.0 */
/* What every benchmark sink does (sink.bpf.c at XDP, tc_sink.bpf.c at tc ingress): count
 * each frame that arrives in sink_received, which the benchmarks read; the caller drops it. */
#ifndef EBPLANE_BENCH_SINK_H
#define EBPLANE_BENCH_SINK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_received SEC(".maps");

static __always_inline void sink_count(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&sink_received, &zero);

	if (n)
		(*n)++;
}

#endif /* EBPLANE_BENCH_SINK_H */
