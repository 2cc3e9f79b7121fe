/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The common part of every generated ebplane program: what the parser hands the stages
 * (struct ebp_pkt), and the parser itself, specialised with #defines so that only the
 * protocols a pipeline needs are compiled in:
 *
 *   EBP_PARSE_VLAN   skip one or two 802.1Q / 802.1ad tags, remember the outer VLAN id
 *   EBP_PARSE_IPV4   read the IPv4 header (options skipped by IHL, fragments noted)
 *   EBP_PARSE_IPV6   read the IPv6 header and walk its extension headers (bounded)
 *   EBP_PARSE_TCP    read TCP ports   (requires an IP family)
 *   EBP_PARSE_UDP    read UDP ports
 *
 * A header the parser must read that is cut short, or IPv4 with IHL < 5, makes the packet
 * malformed (ebp_parse returns EBP_MALFORMED); what each stage does then is its own policy.
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
#define EBP_MAX_IPV6_EXT 6   /* extension headers walked before giving up on L4 */

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

#if defined(EBP_PARSE_TCP) || defined(EBP_PARSE_UDP)
/* Read the ports of TCP / UDP at @off; other protocols have none. */
static __always_inline int ebp_parse_l4(void *data, void *data_end, __u32 off, struct ebp_pkt *pkt)
{
	__u32 need;

	if (pkt->flags & EBP_PKT_LATER_FRAG)
		return 0;
#ifdef EBP_PARSE_TCP
	if (pkt->proto == IPPROTO_TCP)
		need = 20;
	else
#endif
#ifdef EBP_PARSE_UDP
	if (pkt->proto == IPPROTO_UDP)
		need = 8;
	else
#endif
		return 0;
	off &= 0xffff;
	if (data + off + need > data_end)
		return EBP_MALFORMED;
	struct ebp_ports *p = data + off;
	pkt->l4_off = off;
	pkt->sport = bpf_ntohs(p->source);
	pkt->dport = bpf_ntohs(p->dest);
	pkt->flags |= EBP_PKT_L4;
	return 0;
}
#endif

#ifdef EBP_PARSE_IPV4
static __always_inline int ebp_parse_ipv4(void *data, void *data_end, __u32 off, struct ebp_pkt *pkt)
{
	struct ebp_ipv4_hdr *ip = data + off;
	__u32 ihl;

	if ((void *)(ip + 1) > data_end)
		return EBP_MALFORMED;
	ihl = (ip->ver_ihl & 0x0f) * 4;
	if (ihl < sizeof(*ip) || data + off + ihl > data_end)
		return EBP_MALFORMED;
	pkt->family = 4;
	pkt->proto = ip->protocol;
	pkt->src32[0] = ip->saddr;
	pkt->dst32[0] = ip->daddr;
	if (ip->frag_off & bpf_htons(0x3fff)) {           /* MF set or offset != 0 */
		pkt->flags |= EBP_PKT_FRAG;
		if (ip->frag_off & bpf_htons(0x1fff))
			pkt->flags |= EBP_PKT_LATER_FRAG;
	}
#if defined(EBP_PARSE_TCP) || defined(EBP_PARSE_UDP)
	return ebp_parse_l4(data, data_end, off + ihl, pkt);
#else
	return 0;
#endif
}
#endif

#ifdef EBP_PARSE_IPV6
static __always_inline int ebp_parse_ipv6(void *data, void *data_end, __u32 off, struct ebp_pkt *pkt)
{
	struct ebp_ipv6_hdr *ip6 = data + off;
	__u8 nh;

	if ((void *)(ip6 + 1) > data_end)
		return EBP_MALFORMED;
	pkt->family = 6;
	__builtin_memcpy(pkt->src, ip6->saddr, 16);
	__builtin_memcpy(pkt->dst, ip6->daddr, 16);
	nh = ip6->nexthdr;
	off += sizeof(*ip6);

	for (int i = 0; i < EBP_MAX_IPV6_EXT; i++) {
		if (nh == EBP_IPPROTO_FRAGMENT) {
			struct ebp_ipv6_frag_hdr *fh = data + (off & 0xffff);
			if ((void *)(fh + 1) > data_end)
				return EBP_MALFORMED;
			pkt->flags |= EBP_PKT_FRAG;
			if (fh->frag_off & bpf_htons(0xfff8))
				pkt->flags |= EBP_PKT_LATER_FRAG;
			nh = fh->nexthdr;
			off += sizeof(*fh);
		} else if (nh == EBP_IPPROTO_HOPOPTS || nh == EBP_IPPROTO_ROUTING ||
			   nh == EBP_IPPROTO_DSTOPTS) {
			struct ebp_ipv6_opt_hdr *oh = data + (off & 0xffff);
			if ((void *)(oh + 1) > data_end)
				return EBP_MALFORMED;
			nh = oh->nexthdr;
			off += (oh->hdrlen + 1) * 8;
		} else {
			break;
		}
		if (pkt->flags & EBP_PKT_LATER_FRAG)
			break;
	}
	pkt->proto = nh;
#if defined(EBP_PARSE_TCP) || defined(EBP_PARSE_UDP)
	return ebp_parse_l4(data, data_end, off, pkt);
#else
	return 0;
#endif
}
#endif

/* Parse the headers the pipeline needs into @pkt (zeroed by the caller). */
static __always_inline int ebp_parse(void *data, void *data_end, struct ebp_pkt *pkt)
{
	struct ethhdr *eth = data;
	__be16 proto;
	__u32 off = sizeof(*eth);

	pkt->len = data_end - data;
	if ((void *)(eth + 1) > data_end)
		return EBP_MALFORMED;
	proto = eth->h_proto;
#ifdef EBP_PARSE_VLAN
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct ebp_vlan_hdr *vh = data + off;
		if ((void *)(vh + 1) > data_end)
			return EBP_MALFORMED;
		if (i == 0)
			pkt->vlan = bpf_ntohs(vh->tci) & 0x0fff;
		pkt->n_vlan++;
		proto = vh->proto;
		off += sizeof(*vh);
	}
#endif
	pkt->eth_proto = bpf_ntohs(proto);
	pkt->l3_off = off;
#ifdef EBP_PARSE_IPV4
	if (proto == bpf_htons(ETH_P_IP))
		return ebp_parse_ipv4(data, data_end, off, pkt);
#endif
#ifdef EBP_PARSE_IPV6
	if (proto == bpf_htons(ETH_P_IPV6))
		return ebp_parse_ipv6(data, data_end, off, pkt);
#endif
	return 0;
}

/* per-CPU packet/byte counter */
struct ebp_count {
	__u64 packets;
	__u64 bytes;
};

static __always_inline void ebp_count(void *map, __u32 idx, __u32 len)
{
	struct ebp_count *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

#endif /* EBPLANE_H */
