/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Header parsers shared by the XDP and TC programs. Every read is preceded by a
 * `ptr + 1 > data_end` check: the verifier demands it, and a truncated frame must
 * end up counted as malformed, never read past its end.
 */
#ifndef INFERLANE_PCKT_PARSING_H
#define INFERLANE_PCKT_PARSING_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* IEEE 802.1Q / 802.1ad tag; linux/if_vlan.h is kernel-internal, so it is spelt out. */
struct il_vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* QinQ is the deepest stacking seen on access networks; more is treated as non-IP. */
#define IL_MAX_VLAN_DEPTH 2

enum il_l3_kind {
	IL_L3_OTHER = 0,
	IL_L3_IPV4 = 1,
	IL_L3_IPV6 = 2,
};

struct il_pkt {
	void *l3;           /* start of the IP header, when kind is IPv4 or IPv6 */
	__u32 vlan_depth;
	enum il_l3_kind kind;
};

/*
 * Parse Ethernet, up to two VLAN tags and the fixed IPv4/IPv6 header.
 * Returns 0 when parsed (kind says what was found), -1 when the frame is
 * truncated or its IP header is inconsistent.
 */
static __always_inline int il_parse_l2_l3(void *data, void *data_end, struct il_pkt *pkt)
{
	struct ethhdr *eth = data;
	void *cur;
	__be16 proto;

	pkt->l3 = 0;
	pkt->vlan_depth = 0;
	pkt->kind = IL_L3_OTHER;

	if ((void *)(eth + 1) > data_end)
		return -1;
	proto = eth->h_proto;
	cur = eth + 1;

#pragma unroll
	for (int i = 0; i < IL_MAX_VLAN_DEPTH; i++) {
		struct il_vlan_hdr *vh = cur;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return -1;
		proto = vh->encapsulated_proto;
		cur = vh + 1;
		pkt->vlan_depth++;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = cur;

		if ((void *)(iph + 1) > data_end)
			return -1;
		if (iph->version != 4 || iph->ihl < 5)
			return -1;
		if (cur + iph->ihl * 4 > data_end)
			return -1;
		pkt->l3 = iph;
		pkt->kind = IL_L3_IPV4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = cur;

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		if (ip6h->version != 6)
			return -1;
		pkt->l3 = ip6h;
		pkt->kind = IL_L3_IPV6;
	}
	return 0;
}

#endif
