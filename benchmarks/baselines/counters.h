/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* Counters shared by the hand-written baselines.  They keep what the generated programs keep
 * (packets and bytes per verdict and per rule slot, per CPU), so that a ratio to a baseline
 * measures the cost of ebplane's table-driven classifier, not the cost of counting. */
#ifndef BENCH_COUNTERS_H
#define BENCH_COUNTERS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bench_count {
	__u64 packets;
	__u64 bytes;
};

#define BENCH_COUNTER_MAP(NAME, N)					\
struct {								\
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);			\
	__uint(max_entries, N);						\
	__type(key, __u32);						\
	__type(value, struct bench_count);				\
} NAME SEC(".maps")

static __always_inline void bench_count(void *map, __u32 slot, __u32 len)
{
	struct bench_count *c = bpf_map_lookup_elem(map, &slot);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

#endif
