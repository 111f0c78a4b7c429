// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * lan_egress (TC, egress of each LAN interface): every frame the router sends to
 * a LAN client. Counts the interface, and matches replies to their flow by the
 * reversed tuple to count the download in the same entry. In enforce mode it
 * sets skb->priority from the flow, which picks the download queue (the HTB
 * class) of the LAN interface's qdisc (src/qos), the way wan_egress does for the
 * upload. DNS answers naming a provider put its addresses in addr_providers on
 * their way through (see il_dns_learn). A flow still waiting for a userspace verdict (SNI, QUIC, HTTP) takes
 * it here too: a short connection's last client packet may pass before the
 * verdict arrives, but a reply always follows. In enforce mode it drops the
 * replies of blocked flows (a verdict may block a flow on the way down);
 * otherwise TC_ACT_UNSPEC lets the next program or the qdisc decide.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "inferlane_count.h"
#include "inferlane_flow.h"
#include "inferlane_dns.h"

/*
 * lan_egress's own copy of the classification (the same code as lan_ingress's
 * il_classify_global, from inferlane_flow.h): a global function, verified once
 * on its own, for the verdicts applied here.
 */
__noinline int il_classify_egress(const struct il_flow_key *key, struct il_flow *flow, __u32 provider,
				  __u32 source)
{
	if (!key || !flow)
		return 0;
	il_classify_with(key, flow, provider, source);
	return 0;
}

IL_DEFINE_APPLY_VERDICT(il_classify_egress)

/*
 * A DNS answer over UDP on its way to a client, its message at `off`: when its
 * question names a provider (dns_names), install its A/AAAA records in
 * addr_providers now, before the client has them, so that a connection made
 * right after the lookup is classified at its first packet. A global function,
 * verified once on its own. Returns the addresses installed.
 */
__noinline int il_dns_learn(struct __sk_buff *skb, __u32 off)
{
	struct il_dns_ctx c = {};
	__u32 zero = 0;
	__u64 len;

	if (!skb)
		return 0;
	c.s = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!c.s)
		return 0;
	/* 64-bit throughout: see il_punt_skb. */
	len = skb->len;
	if (len <= off)
		return 0;
	len -= off;
	if (len < 12)
		return 0;
	if (len > IL_DNS_MSG)
		len = IL_DNS_MSG;
	if (bpf_skb_load_bytes(skb, off, c.s->msg, len))
		return 0;
	c.len = len;
	/* A response without error, one question, some answers. */
	if (!(c.s->msg[2] & 0x80) || (c.s->msg[3] & 0x0f) || c.s->msg[4] || c.s->msg[5] != 1)
		return 0;
	c.answers = (__u32)c.s->msg[6] << 8 | c.s->msg[7];
	if (!c.answers)
		return 0;
	if (c.answers > IL_DNS_MAX_ANSWERS)
		c.answers = IL_DNS_MAX_ANSWERS;
	c.pos = 12;
	bpf_loop(IL_DNS_NAME, il_dns_name_byte, &c, 0);
	if (!c.ok || !c.n)
		return 0;
	c.hash = IL_FNV_OFFSET;
	bpf_loop(IL_DNS_NAME, il_dns_suffix, &c, 0);
	if (!c.provider)
		return 0;
	c.pos += 4; /* QTYPE, QCLASS */
	bpf_loop(IL_DNS_MAX_ANSWERS, il_dns_answer, &c, 0);
	return c.installed;
}

/* Enough for Ethernet, two VLAN tags, IPv6 with a few extension headers and TCP. */
#define IL_PARSE_LEN 160

SEC("classifier")
int lan_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct il_settings *settings;
	struct il_flow_key key;
	struct il_flow *flow;
	struct il_pkt pkt;
	__u32 segs;
	__u64 bytes;
	int err;

	/* Headers usually sit in the linear part; pull only when they do not. */
	if (data + IL_PARSE_LEN > data_end && skb->len > data_end - data) {
		bpf_skb_pull_data(skb, skb->len < IL_PARSE_LEN ? skb->len : IL_PARSE_LEN);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	err = il_parse_l2_l3(data, data_end, &pkt);
	if (!err && pkt.kind != IL_L3_OTHER)
		err = il_parse_ip(data_end, &pkt);
	il_count(skb->ifindex, IL_DIR_DOWNLOAD, skb->len, &pkt, err);
	if (err || pkt.kind == IL_L3_OTHER)
		return TC_ACT_UNSPEC;

	il_frag_resolve(&pkt);
	/* DNS answers to clients, any resolver, UDP or TCP, both families. */
	if (pkt.l4_ok && pkt.sport == bpf_htons(53) && pkt.frag != IL_FRAG_LATER &&
	    (pkt.proto == IPPROTO_UDP ||
	     /* TCP: segments that carry data, not the handshake and ACKs */
	     (pkt.proto == IPPROTO_TCP &&
	      skb->len > (__u32)pkt.l3_off + pkt.l3_hdr_len + pkt.l4_hdr_len))) {
		/* Provider addresses in place before the answer goes on (UDP; the
		 * daemon reads every answer, TCP ones too, a moment later). */
		if (pkt.proto == IPPROTO_UDP && pkt.frag == IL_FRAG_NONE)
			il_dns_learn(skb, (__u32)pkt.l3_off + pkt.l3_hdr_len + 8);
		il_punt_skb(skb, IL_PUNT_DNS);
	}
	il_key_download(&pkt, &key);
	flow = bpf_map_lookup_elem(&flows, &key);
	if (!flow) {
		IL_STAT_INC(download_unmatched);
		return TC_ACT_UNSPEC;
	}
	/* Before the priority below, so this packet already gets the new queue. */
	if (flow->flags & IL_FLOW_F_PENDING)
		il_take_verdict(&key, flow);
	settings = il_settings();
	/* Enforce mode: a blocked flow passes nothing either way. Its verdict may have
	 * arrived with this very reply (above): a QUIC server's first flight must not
	 * complete the client's handshake. The RST lan_ingress_tc answers a blocked
	 * TCP segment with comes this way too, and passes. */
	if (flow->verdict == IL_VERDICT_BLOCK && settings && settings->enforce && !(pkt.tcp_flags & 0x04)) {
		IL_STAT_INC(blocked);
		return TC_ACT_SHOT;
	}
	/* A GSO packet stands for gso_segs packets on the wire, each with its own
	 * IP and transport headers: count what the client will receive. */
	segs = skb->gso_segs ? skb->gso_segs : 1;
	bytes = skb->len - pkt.l3_off + (__u64)(segs - 1) * (pkt.l3_hdr_len + pkt.l4_hdr_len);
	__sync_fetch_and_add(&flow->down_packets, segs);
	__sync_fetch_and_add(&flow->down_bytes, bytes);
	if (flow->uplink) {
		/* Per CPU: plain adds. Replies on an uplink are the health monitor's
		 * passive evidence that it works. */
		__u32 up = flow->uplink;
		struct il_uplink_counters *uc = bpf_map_lookup_elem(&uplink_counters, &up);

		if (uc) {
			uc->down_packets += segs;
			uc->down_bytes += bytes;
		}
	}
	flow->last_ns = bpf_ktime_get_coarse_ns();
	flow->tcp_flags_down |= pkt.tcp_flags;
	/* Downloads keep the DSCP they came with: flow export reports it. */
	flow->dscp_down = pkt.tos >> 2;
	/* Timing: the server's SYN-ACK and its first payload byte, once each. */
	if (!flow->synack_ns && (pkt.tcp_flags & 0x12) == 0x12)
		flow->synack_ns = bpf_ktime_get_ns();
	if (!flow->first_down_payload_ns && pkt.l4_ok && pkt.frag != IL_FRAG_LATER &&
	    skb->len > (__u32)pkt.l3_off + pkt.l3_hdr_len + pkt.l4_hdr_len)
		flow->first_down_payload_ns = bpf_ktime_get_ns();
	if (pkt.frag != IL_FRAG_NONE)
		flow->flags |= IL_FLOW_F_FRAGMENTS;
	/* Bulk shows in the download: demote before the priority below is set, so
	 * the packet that crosses the threshold already goes to the lower queue. */
	if (settings && settings->enforce)
		il_demote_check(flow);
	/* Download queue: TC egress runs before the device's qdisc, so the priority
	 * set here selects the class. Unclassified flows (priority 0) keep theirs
	 * and land in the default class. */
	if (flow->priority && settings && settings->enforce)
		skb->priority = flow->priority;
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
