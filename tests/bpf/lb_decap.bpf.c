/* A backend's decapsulation for the balancer lab, at TC ingress: IPIP (outer IPv4, protocol
 * 4) and GUE variant 1 (outer IPv4, UDP to port 6080, the inner IPv4 packet right after
 * the UDP header) lose their outer headers and go up the stack as the inner packet.
 * (The kernel of the test machine has no ipip or fou: CONFIG_NET_IPIP and CONFIG_NET_FOU
 * are not set, and modules are off.) */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4	/* (kernel 6.3; the installed UAPI headers are older) */
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif

SEC("tc")
int lb_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	int strip = 0;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return TC_ACT_OK;
	if (ip->protocol == IPPROTO_IPIP) {
		strip = 20;
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip + 1);

		if ((void *)(udp + 1) > data_end || udp->dest != bpf_htons(6080))
			return TC_ACT_OK;
		strip = 28;
	}
	if (!strip)
		return TC_ACT_OK;
	if (bpf_skb_adjust_room(skb, -strip, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
