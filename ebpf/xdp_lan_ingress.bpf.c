// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * lan_ingress (XDP): every frame a LAN client sends to the router. Parses L2-L4,
 * counts the interface, finds or creates the flow (classifying it once, at its
 * first packet), counts the upload, and in enforce mode drops blocked flows,
 * rewrites DSCP and hands mark/priority to lan_ingress_tc in XDP metadata.
 * Anything it cannot parse is counted as malformed and passed (fail open).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "inferlane_count.h"
#include "inferlane_flow.h"

static __always_inline struct il_flow *il_flow_get_or_create(const struct il_flow_key *key,
							     const struct il_pkt *pkt,
							     __u32 ifindex, __u64 now)
{
	struct il_flow *flow = bpf_map_lookup_elem(&flows, key);

	if (flow)
		return flow;

	/* The flow's start is worth the precise clock, once. */
	struct il_flow nf = {
		.first_ns = bpf_ktime_get_ns(),
		.last_ns = now,
		.ifindex = ifindex,
		.dscp_seen = pkt->tos >> 2,
	};

	il_classify(key, &nf);
	/* NOEXIST: if another CPU created it meanwhile, theirs stands. */
	if (!bpf_map_update_elem(&flows, key, &nf, BPF_NOEXIST))
		IL_STAT_INC(created);
	flow = bpf_map_lookup_elem(&flows, key);
	if (!flow)
		IL_STAT_INC(create_failed);
	return flow;
}

/* xdp.frags: the program copes with multi-buffer frames (jumbo, GRO on veth), so
 * attaching it never forces the kernel to linearise or to drop big frames. */
SEC("xdp.frags")
int lan_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = bpf_xdp_get_buff_len(ctx);
	struct il_flow_key key;
	struct il_settings *s;
	struct il_flow *flow;
	struct il_pkt pkt;
	__u64 now;
	int err;

	err = il_parse_l2_l3(data, data_end, &pkt);
	if (!err && pkt.kind != IL_L3_OTHER)
		err = il_parse_ip(data_end, &pkt);
	/* The whole frame, fragments included, to match the interface's rx_bytes. */
	il_count(ctx->ingress_ifindex, IL_DIR_UPLOAD, len, &pkt, err);
	if (err || pkt.kind == IL_L3_OTHER)
		return XDP_PASS;

	il_frag_resolve(&pkt);
	il_key_upload(&pkt, &key);
	now = bpf_ktime_get_coarse_ns();
	flow = il_flow_get_or_create(&key, &pkt, ctx->ingress_ifindex, now);
	if (!flow)
		return XDP_PASS;

	__sync_fetch_and_add(&flow->up_packets, 1);
	__sync_fetch_and_add(&flow->up_bytes, len - pkt.l3_off);
	flow->last_ns = now;
	flow->tcp_flags_up |= pkt.tcp_flags;
	if (pkt.frag != IL_FRAG_NONE)
		flow->flags |= IL_FLOW_F_FRAGMENTS;

	s = il_settings();
	if (!s || !s->enforce)
		return XDP_PASS;
	if (flow->verdict == IL_VERDICT_BLOCK) {
		IL_STAT_INC(blocked);
		return XDP_DROP;
	}
	if (flow->dscp != IL_DSCP_KEEP && il_set_dscp(&pkt, data_end, flow->dscp))
		IL_STAT_INC(dscp_rewritten);
	if (flow->mark | flow->priority) {
		__u32 mark = flow->mark, priority = flow->priority;
		struct il_meta *m;

		/* Metadata sits in front of the frame; drivers without room refuse. */
		if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct il_meta)))
			return XDP_PASS;
		m = (void *)(long)ctx->data_meta;
		if ((void *)(m + 1) > (void *)(long)ctx->data)
			return XDP_PASS;
		m->magic = IL_META_MAGIC;
		m->mark = mark;
		m->priority = priority;
		m->pad = 0;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
