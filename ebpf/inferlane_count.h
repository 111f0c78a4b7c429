/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Interface counters, the same code for both hooks. */
#ifndef INFERLANE_COUNT_H
#define INFERLANE_COUNT_H

#include "inferlane_maps.h"
#include "pckt_parsing.h"

static __always_inline void il_count(__u32 ifindex, __u32 direction, __u64 len,
				     const struct il_pkt *pkt, int parse_err)
{
	struct il_if_key key = { .ifindex = ifindex, .direction = direction };
	struct il_counters *c;

	if (ifindex < IL_IF_ARRAY_IFINDEXES) {
		__u32 slot = ifindex * 2 + direction;

		c = bpf_map_lookup_elem(&if_counters_array, &slot);
	} else {
		c = bpf_map_lookup_elem(&if_counters, &key);
	}
	if (!c) {
		/* Not registered by the daemon: account it to the catch-all slot. */
		key.ifindex = 0;
		c = bpf_map_lookup_elem(&if_counters, &key);
		if (!c)
			return;
	}
	/* Per-CPU values: plain increments, no atomics needed. */
	c->packets++;
	c->bytes += len;
	if (pkt->vlan_depth)
		c->vlan++;
	if (parse_err)
		c->malformed++;
	else if (pkt->kind == IL_L3_IPV4)
		c->ipv4++;
	else if (pkt->kind == IL_L3_IPV6)
		c->ipv6++;
	else
		c->other++;
}

#endif
