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
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* IEEE 802.1Q / 802.1ad tag; linux/if_vlan.h is kernel-internal, so it is spelt out. */
struct il_vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* QinQ is the deepest stacking seen on access networks; more is treated as non-IP. */
#define IL_MAX_VLAN_DEPTH 2
/* IPv6 extension headers walked before giving up on finding the transport. */
#define IL_MAX_IPV6_EXT 6

#define IL_IPPROTO_HOPOPTS 0
#define IL_IPPROTO_ROUTING 43
#define IL_IPPROTO_FRAGMENT 44
#define IL_IPPROTO_ICMPV6 58
#define IL_IPPROTO_DSTOPTS 60
#define IL_IPPROTO_AH 51

enum il_l3_kind {
	IL_L3_OTHER = 0,
	IL_L3_IPV4 = 1,
	IL_L3_IPV6 = 2,
};

/* Fragment position of an IP packet. */
enum il_frag {
	IL_FRAG_NONE = 0,
	IL_FRAG_FIRST = 1,   /* offset 0, more fragments follow: carries the ports */
	IL_FRAG_LATER = 2,   /* offset > 0: no transport header, ports from the first */
};

struct il_pkt {
	void *l3;           /* start of the IP header, when kind is IPv4 or IPv6 */
	void *l4;           /* start of the transport header (0 if absent) */
	__u32 vlan_depth;
	enum il_l3_kind kind;
	__u8 src[16];       /* IPv6, or IPv4 mapped ::ffff:a.b.c.d */
	__u8 dst[16];
	__u32 frag_id;
	__u16 sport;        /* network byte order; 0 when unknown */
	__u16 dport;
	__u16 l3_off;       /* bytes before the IP header (Ethernet and VLAN tags) */
	__u16 l3_hdr_len;   /* IP header bytes, IPv6 extension headers included */
	__u16 l4_hdr_len;   /* transport header bytes (TCP data offset, 8 for UDP) */
	__u8 proto;         /* transport protocol after extension headers */
	__u8 tos;           /* IPv4 TOS / IPv6 traffic class: DSCP << 2 | ECN */
	__u8 tcp_flags;
	__u8 frag;          /* enum il_frag */
	__u8 l4_ok;         /* ports and flags were read */
	__u8 frag_proto;    /* IPv4 protocol / next header of the IPv6 Fragment header */
};

static __always_inline void il_map_v4(__u8 *out, __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr, 4);
}

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
	pkt->l4 = 0;
	pkt->vlan_depth = 0;
	pkt->kind = IL_L3_OTHER;
	pkt->l3_off = 0;

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
		pkt->l3_off = sizeof(*eth) + pkt->vlan_depth * sizeof(struct il_vlan_hdr);
		pkt->kind = IL_L3_IPV4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = cur;

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		if (ip6h->version != 6)
			return -1;
		pkt->l3 = ip6h;
		pkt->l3_off = sizeof(*eth) + pkt->vlan_depth * sizeof(struct il_vlan_hdr);
		pkt->kind = IL_L3_IPV6;
	}
	return 0;
}

/* Transport ports and flags at pkt->l4. Returns 0, or -1 when truncated. */
static __always_inline int il_parse_l4(void *data_end, struct il_pkt *pkt)
{
	void *l4 = pkt->l4;

	if (pkt->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		if (th->doff < 5)
			return -1;
		pkt->sport = th->source;
		pkt->dport = th->dest;
		/* The flags byte: CWR ECE URG ACK PSH RST SYN FIN. */
		pkt->tcp_flags = ((__u8 *)th)[13];
		pkt->l4_hdr_len = th->doff * 4;
	} else if (pkt->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		pkt->sport = uh->source;
		pkt->dport = uh->dest;
		pkt->l4_hdr_len = 8;
	} else if (pkt->proto == IPPROTO_ICMP || pkt->proto == IL_IPPROTO_ICMPV6) {
		__u8 *icmp = l4;

		/* type, code, checksum, identifier */
		if ((void *)(icmp + 6) > data_end)
			return -1;
		/* Echo request/reply (v4 8/0, v6 128/129): the identifier ties the
		 * two directions together, as a port would. */
		if (icmp[0] == 8 || icmp[0] == 0 || icmp[0] == 128 || icmp[0] == 129)
			pkt->sport = *(__u16 *)(icmp + 4);
		pkt->dport = 0;
		pkt->l4_hdr_len = 8;
	}
	pkt->l4_ok = 1;
	return 0;
}

/*
 * IPv4/IPv6 addresses, transport protocol (after IPv6 extension headers),
 * fragment position, ports and TCP flags. Call after il_parse_l2_l3 found IP.
 * Returns 0, or -1 when a header is truncated or inconsistent.
 */
static __always_inline int il_parse_ip(void *data_end, struct il_pkt *pkt)
{
	pkt->sport = 0;
	pkt->dport = 0;
	pkt->tcp_flags = 0;
	pkt->frag = IL_FRAG_NONE;
	pkt->frag_id = 0;
	pkt->frag_proto = 0;
	pkt->l4_ok = 0;
	pkt->l4_hdr_len = 0;

	if (pkt->kind == IL_L3_IPV4) {
		struct iphdr *iph = pkt->l3;
		__u16 frag_off;

		if ((void *)(iph + 1) > data_end)
			return -1;
		il_map_v4(pkt->src, iph->saddr);
		il_map_v4(pkt->dst, iph->daddr);
		pkt->proto = iph->protocol;
		pkt->tos = iph->tos;
		pkt->l3_hdr_len = iph->ihl * 4;
		pkt->l4 = (void *)iph + iph->ihl * 4;
		frag_off = bpf_ntohs(iph->frag_off);
		if (frag_off & 0x1fff) {
			pkt->frag = IL_FRAG_LATER;
		} else if (frag_off & 0x2000) {
			pkt->frag = IL_FRAG_FIRST;
		}
		pkt->frag_id = bpf_ntohs(iph->id);
		pkt->frag_proto = iph->protocol;
	} else {
		struct ipv6hdr *ip6h = pkt->l3;
		void *cur;
		__u8 next;

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		__builtin_memcpy(pkt->src, &ip6h->saddr, 16);
		__builtin_memcpy(pkt->dst, &ip6h->daddr, 16);
		pkt->tos = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
		next = ip6h->nexthdr;
		cur = ip6h + 1;

#pragma unroll
		for (int i = 0; i < IL_MAX_IPV6_EXT; i++) {
			__u8 *ext = cur;

			if (next != IL_IPPROTO_HOPOPTS && next != IL_IPPROTO_ROUTING &&
			    next != IL_IPPROTO_DSTOPTS && next != IL_IPPROTO_FRAGMENT &&
			    next != IL_IPPROTO_AH)
				break;
			if ((void *)(ext + 8) > data_end)
				return -1;
			if (next == IL_IPPROTO_FRAGMENT) {
				__u16 off = bpf_ntohs(*(__u16 *)(ext + 2));

				if (off & 0xfff8)
					pkt->frag = IL_FRAG_LATER;
				else if (off & 1)
					pkt->frag = IL_FRAG_FIRST;
				pkt->frag_id = bpf_ntohl(*(__u32 *)(ext + 4));
				/* Headers after this one (destination options, AH) are part
				 * of the fragmented payload: only the first fragment shows
				 * them, so fragments are matched on this next header. */
				pkt->frag_proto = ext[0];
				next = ext[0];
				cur = ext + 8;
			} else if (next == IL_IPPROTO_AH) {
				next = ext[0];
				cur = ext + ((__u32)ext[1] + 2) * 4;
			} else {
				next = ext[0];
				cur = ext + ((__u32)ext[1] + 1) * 8;
			}
			/* A later fragment carries no transport header after this one. */
			if (pkt->frag == IL_FRAG_LATER)
				break;
		}
		pkt->proto = next;
		pkt->l3_hdr_len = cur - (void *)ip6h;
		pkt->l4 = cur;
	}

	if (pkt->frag == IL_FRAG_LATER)
		return 0;
	/* Protocols without ports (GRE, ESP, ...) are flows of their own with port 0. */
	if (pkt->proto != IPPROTO_TCP && pkt->proto != IPPROTO_UDP &&
	    pkt->proto != IPPROTO_ICMP && pkt->proto != IL_IPPROTO_ICMPV6) {
		pkt->l4_ok = 1;
		return 0;
	}
	return il_parse_l4(data_end, pkt);
}

#endif
