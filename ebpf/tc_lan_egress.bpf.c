// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * lan_egress (TC, egress of each LAN interface): every frame the router sends to
 * a LAN client. Today it parses L2/L3 and counts the download direction. It never
 * changes the verdict: TC_ACT_UNSPEC lets the next program or the qdisc decide.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "inferlane_count.h"

/* Ethernet + two VLAN tags + IPv6 fixed header: all the parser reads. */
#define IL_PARSE_LEN (14 + 2 * 4 + 40)

SEC("classifier")
int lan_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct il_pkt pkt;
	int err;

	/* Headers usually sit in the linear part; pull only when they do not. */
	if (data + IL_PARSE_LEN > data_end && skb->len > data_end - data) {
		bpf_skb_pull_data(skb, skb->len < IL_PARSE_LEN ? skb->len : IL_PARSE_LEN);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	err = il_parse_l2_l3(data, data_end, &pkt);
	il_count(skb->ifindex, IL_DIR_DOWNLOAD, skb->len, &pkt, err);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
