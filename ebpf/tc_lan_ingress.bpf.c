// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * lan_ingress_tc (TC ingress of each LAN interface): sets skb->mark (uplink and
 * class bits, layout in inferlane_structs.h) and skb->priority (the queue) from
 * the metadata lan_ingress (XDP) put in front of the frame, before the kernel
 * routes the packet. No metadata: the flow is unclassified or the box is in
 * observe mode, and the packet is left alone.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "inferlane_structs.h"

static __always_inline __u16 il_csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

struct il_pseudo6 {
	__u8 src[16];
	__u8 dst[16];
	__be32 len;
	__u8 zero[3];
	__u8 next;
};

struct il_pseudo4 {
	__be32 src;
	__be32 dst;
	__u8 zero;
	__u8 proto;
	__be16 len;
};

/*
 * Turn a TCP segment of a blocked flow into the RST the remote end would send
 * (MACs, addresses and ports swapped, options and payload cut, RST|ACK
 * acknowledging what the client sent; RFC 9293 3.10.7.1) and send it back out of
 * the interface it came in on. A global function, verified on its own. Returns
 * TC_ACT_REDIRECT, or TC_ACT_SHOT when the segment cannot be turned around.
 */
__noinline int il_tcp_reset(struct __sk_buff *skb, __u32 l3_off, __u32 is_v6)
{
	__u32 ip_len = is_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u32 l4_off, payload, seq, ack;
	void *data, *data_end;
	__u8 mac[ETH_ALEN];
	struct ethhdr *eth;
	struct tcphdr *th;
	__u64 sum;
	__u8 flags;

	if (!skb || l3_off > 22)
		return TC_ACT_SHOT;
	asm volatile("" : "+r"(l3_off));
	l3_off &= 0x1f;
	l4_off = l3_off + ip_len;
	if (bpf_skb_pull_data(skb, l4_off + sizeof(struct tcphdr)))
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	th = data + l4_off;
	if ((void *)(th + 1) > data_end)
		return TC_ACT_SHOT;
	if (is_v6) {
		struct ipv6hdr *ip6 = data + l3_off;

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_TCP)
			return TC_ACT_SHOT;
		payload = bpf_ntohs(ip6->payload_len);
	} else {
		struct iphdr *ip = data + l3_off;

		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP || ip->ihl != 5)
			return TC_ACT_SHOT;
		payload = bpf_ntohs(ip->tot_len) - sizeof(*ip);
	}
	if (payload < th->doff * 4u)
		return TC_ACT_SHOT;
	payload -= th->doff * 4u;
	flags = ((__u8 *)th)[13];
	seq = bpf_ntohl(th->seq);
	ack = bpf_ntohl(th->ack_seq);

	if (bpf_skb_change_tail(skb, l4_off + sizeof(struct tcphdr), 0))
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	th = data + l4_off;
	if ((void *)(eth + 1) > data_end || (void *)(th + 1) > data_end)
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	{
		__be16 p = th->source;

		th->source = th->dest;
		th->dest = p;
	}
	th->seq = (flags & 0x10) ? bpf_htonl(ack) : 0;
	th->ack_seq = bpf_htonl(seq + payload + ((flags & 0x02) ? 1 : 0) + ((flags & 0x01) ? 1 : 0));
	((__u8 *)th)[12] = 5 << 4;      /* data offset 5: no options */
	((__u8 *)th)[13] = 0x04 | 0x10; /* RST | ACK */
	th->window = 0;
	th->urg_ptr = 0;
	th->check = 0;
	if (is_v6) {
		struct ipv6hdr *ip6 = data + l3_off;
		struct il_pseudo6 ph = {};

		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_SHOT;
		__builtin_memcpy(ph.src, &ip6->daddr, 16);
		__builtin_memcpy(ph.dst, &ip6->saddr, 16);
		__builtin_memcpy(&ip6->daddr, &ip6->saddr, 16);
		__builtin_memcpy(&ip6->saddr, ph.src, 16);
		ip6->payload_len = bpf_htons(sizeof(struct tcphdr));
		ip6->hop_limit = 64;
		ph.len = bpf_htonl(sizeof(struct tcphdr));
		ph.next = IPPROTO_TCP;
		sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	} else {
		struct iphdr *ip = data + l3_off;
		struct il_pseudo4 ph = {};
		__be32 a;

		if ((void *)(ip + 1) > data_end)
			return TC_ACT_SHOT;
		a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(struct tcphdr));
		ip->ttl = 64;
		ip->frag_off = 0;
		ip->check = 0;
		ip->check = il_csum_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
		ph.src = ip->saddr;
		ph.dst = ip->daddr;
		ph.proto = IPPROTO_TCP;
		ph.len = bpf_htons(sizeof(struct tcphdr));
		sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	}
	th = data + l4_off;
	if ((void *)(th + 1) > data_end)
		return TC_ACT_SHOT;
	sum = bpf_csum_diff(0, 0, (__be32 *)th, sizeof(*th), sum);
	th->check = il_csum_fold(sum);
	return bpf_redirect(skb->ifindex, 0);
}

SEC("classifier")
int lan_ingress_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	struct il_meta *m = (void *)(long)skb->data_meta;

	if ((void *)(m + 1) > data || m->magic != IL_META_MAGIC)
		return TC_ACT_UNSPEC;
	if (m->flags & IL_META_F_RESET)
		return il_tcp_reset(skb, (m->flags >> 8) & 0xff, !!(m->flags & 0x10000));
	/* Only our bits: a firewall's own mark bits survive. */
	skb->mark = (skb->mark & ~IL_MARK_MASK) | (m->mark & IL_MARK_MASK);
	if (m->priority)
		skb->priority = m->priority;
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
