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
#include <bpf/bpf_helpers.h>
#include "inferlane_structs.h"

SEC("classifier")
int lan_ingress_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	struct il_meta *m = (void *)(long)skb->data_meta;

	if ((void *)(m + 1) > data || m->magic != IL_META_MAGIC)
		return TC_ACT_UNSPEC;
	/* Only our bits: a firewall's own mark bits survive. */
	skb->mark = (skb->mark & ~IL_MARK_MASK) | (m->mark & IL_MARK_MASK);
	if (m->priority)
		skb->priority = m->priority;
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
