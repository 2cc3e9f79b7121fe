/* A TC classifier on __sk_buff: mark = mark + 1, priority = 7, cb[0] = packet length,
 * and the first byte of the destination MAC set to 0x02; the verdict is TC_ACT_SHOT. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int tc_mark(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	unsigned char *p = data;

	skb->mark = skb->mark + 1;
	skb->priority = 7;
	skb->cb[0] = skb->len;
	if ((void *)(p + 1) > data_end)
		return TC_ACT_OK;
	p[0] = 0x02;
	return TC_ACT_SHOT;
}

SEC("tc")
int tc_ok(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
