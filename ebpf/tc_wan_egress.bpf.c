// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * wan_egress (TC egress of each uplink interface): restores skb->priority from
 * the queue bits of the mark lan_ingress_tc set, right before the uplink's qdisc.
 * IPv4 forwarding overwrites skb->priority from the TOS byte; the mark survives.
 * Stateless, no map lookup: a few instructions per packet.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "inferlane_structs.h"

SEC("classifier")
int wan_egress(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	__u32 queue;

	if (!(mark & IL_MARK_CLASSIFIED))
		return TC_ACT_UNSPEC;
	queue = (mark & IL_MARK_QUEUE_MASK) >> IL_MARK_QUEUE_SHIFT;
	if (queue)
		skb->priority = (IL_QDISC_MAJOR << 16) | (queue << 4);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
