/* A backend's decapsulation for the balancer lab, at TC ingress: IPIP and GUE variant 1
 * (UDP to port 6080, the inner IP packet right after the UDP header) lose their outer
 * headers and go up the stack as the inner packet.  Outer and inner of the same family
 * only (IPv4 in IPv4, IPv6 in IPv6): the Ethernet type stays right.
 * (The kernel of the test machine has no ipip, ip6tnl or fou: CONFIG_NET_IPIP,
 * CONFIG_IPV6_TUNNEL and CONFIG_NET_FOU are not set, and modules are off.) */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* (kernel 6.3; the installed UAPI headers are older) */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

static __always_inline int gue(struct udphdr *udp, void *data_end)
{
	return (void *)(udp + 1) <= data_end && udp->dest == bpf_htons(6080);
}

SEC("tc")
int lb_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	int strip = 0;
	__u64 flags = 0;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->ihl != 5)
			return TC_ACT_OK;
		if (ip->protocol == IPPROTO_IPIP)
			strip = 20;
		else if (ip->protocol == IPPROTO_UDP && gue((void *)(ip + 1), data_end))
			strip = 28;
		flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
		if (ip6->nexthdr == IPPROTO_IPV6)
			strip = 40;
		else if (ip6->nexthdr == IPPROTO_UDP && gue((void *)(ip6 + 1), data_end))
			strip = 48;
		flags = BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
	}
	if (!strip)
		return TC_ACT_OK;
	if (bpf_skb_adjust_room(skb, -strip, BPF_ADJ_ROOM_MAC, flags))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
