/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The common part of every generated ebplane program: what the parser hands the stages
 * (struct ebp_pkt).  The parser itself, ebp_parse(data, data_end, pkt), is generated from the
 * pipeline's protocols (ebplane.codegen.p4c) and defines EBP_NHDR and EBP_HDR_* before this
 * header is included.
 *
 * A header the parser must read that is cut short, or any other P4 reject (IPv4 with IHL < 5,
 * a header stack overflowing, ...), makes the packet malformed (ebp_parse returns
 * EBP_MALFORMED); what each stage does then is its own policy.
 */
#ifndef EBPLANE_H
#define EBPLANE_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#define EBP_MALFORMED (-1)

#ifndef EBP_NHDR
#define EBP_NHDR 1  /* header slots of ebp_pkt.hdr_off: set by the generated parser */
#endif
#ifndef EBP_USER_BYTES
#error "EBP_USER_BYTES comes with the generated parser's #defines (ebplane.codegen.p4c.USER_BYTES)"
#endif

/* ebp_pkt.flags */
#define EBP_PKT_L4         0x01 /* sport/dport are valid (TCP or UDP header present) */
#define EBP_PKT_FRAG       0x02 /* an IP fragment (first or later) */
#define EBP_PKT_LATER_FRAG 0x04 /* a non-first fragment: no L4 header */

/* A stage returns the hook's action (XDP_* / TC_ACT_*: the generated program defines
 * EBP_V_PASS and EBP_V_DROP for its hook, and EBP_CTX as its context type) when it decides
 * the packet's fate, or EBP_NEXT to hand it to the next stage. */
#define EBP_NEXT (-1)

struct ebp_pkt {
	__u32 len;       /* frame length in bytes */
	__u16 l3_off;    /* offset of the network header */
	__u16 l4_off;    /* offset of the transport header (0: none) */
	__u16 eth_proto; /* EtherType after VLAN tags, host order */
	__u16 vlan;      /* outer VLAN id, host order (valid when n_vlan > 0) */
	__u8  n_vlan;
	__u8  family;    /* 0 (not IP, or IP not parsed), 4 or 6 */
	__u8  proto;     /* IPv4 protocol / last IPv6 next header */
	__u8  flags;     /* EBP_PKT_* */
	__u16 sport;     /* host order */
	__u16 dport;
	union { __u8 src[16]; __u32 src32[4]; };
	union { __u8 dst[16]; __u32 dst32[4]; };
	/* fields of `match:` rules, big-endian, at offsets fixed by the code generator */
	union { __u8 user[EBP_USER_BYTES]; __u32 user32[EBP_USER_BYTES / 4]; };
	__u16 user_valid;          /* bit i: the header of user field i is present */
	__u16 hdr_off[EBP_NHDR];   /* offset of each header (EBP_HDR_*), 0xffff when absent */
	__u8  ct_state;  /* connection state a conntrack stage set (EBP_CT_*, 0: untracked) */
};

struct ebp_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct ebp_ipv4_hdr {
	__u8   ver_ihl;
	__u8   tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8   ttl;
	__u8   protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ebp_ipv6_hdr {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8   nexthdr;
	__u8   hop_limit;
	__u8   saddr[16];
	__u8   daddr[16];
};

struct ebp_ipv6_opt_hdr { /* hop-by-hop, routing, destination options */
	__u8 nexthdr;
	__u8 hdrlen;    /* in 8-byte units, not counting the first 8 */
};

struct ebp_ipv6_frag_hdr {
	__u8   nexthdr;
	__u8   reserved;
	__be16 frag_off; /* offset << 3 | M */
	__be32 id;
};

struct ebp_ports { /* the first four bytes of TCP and UDP */
	__be16 source;
	__be16 dest;
};

#define EBP_IPPROTO_HOPOPTS  0
#define EBP_IPPROTO_ROUTING  43
#define EBP_IPPROTO_FRAGMENT 44
#define EBP_IPPROTO_DSTOPTS  60

/* Count a packet of len bytes in slot idx of a per-CPU counters map.  The slot, struct
 * ebp_count (packets, bytes), is generated into each program from its one definition
 * (ebplane.codegen.layout.COUNT) after this header and ahead of the stage headers; a macro,
 * so that it is needed only where a counter is bumped. */
#define ebp_count(map, idx, len) do {						\
		__u32 ebp_cidx_ = (idx);					\
		struct ebp_count *ebp_c_ = bpf_map_lookup_elem((map), &ebp_cidx_);	\
		if (ebp_c_) {							\
			ebp_c_->packets++;					\
			ebp_c_->bytes += (len);					\
		}								\
	} while (0)

#endif /* EBPLANE_H */
