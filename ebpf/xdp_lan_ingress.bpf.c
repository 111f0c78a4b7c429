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

/*
 * Classification as a global function: the verifier checks it once, on its own,
 * instead of once per call site and per path leading there, which would exceed
 * its budget (the rules walk is the largest piece of the program).
 */
__noinline int il_classify_global(const struct il_flow_key *key, struct il_flow *flow, __u32 provider,
				  __u32 source)
{
	if (!key || !flow)
		return 0;
	il_classify_with(key, flow, provider, source);
	return 0;
}

IL_DEFINE_APPLY_VERDICT(il_classify_global)

static __always_inline struct il_flow *il_flow_get_or_create(const struct il_flow_key *key,
							     const struct il_pkt *pkt,
							     __u32 ifindex, __u64 now)
{
	struct il_flow *flow = bpf_map_lookup_elem(&flows, key);

	if (flow)
		return flow;

	__u32 zero = 0;
	struct il_flow *nf = bpf_map_lookup_elem(&flow_scratch, &zero);

	if (!nf)
		return 0;
	__builtin_memset(nf, 0, sizeof(*nf));
	/* The flow's start is worth the precise clock, once. */
	nf->first_ns = bpf_ktime_get_ns();
	nf->last_ns = now;
	nf->ifindex = ifindex;
	nf->dscp_seen = pkt->tos >> 2;
	/* TCP flags byte: SYN 0x02, ACK 0x10. */
	if (key->proto == IPPROTO_TCP && (pkt->tcp_flags & 0x12) == 0x02)
		nf->syn_ns = nf->first_ns;
	il_classify_global(key, nf, 0, IL_SRC_NONE);
	il_steer(nf, 0);
	/* Not settled by a static rule: TLS (TCP) and QUIC (UDP/443) flows wait for
	 * what their first packets say (SNI), which also confirms a DNS-learned
	 * provider on a shared CDN address. */
	if (nf->source != IL_SRC_STATIC && nf->verdict == IL_VERDICT_PASS &&
	    (key->proto == IPPROTO_TCP || (key->proto == IPPROTO_UDP && key->remote_port == bpf_htons(443))))
		nf->flags |= IL_FLOW_F_PENDING;
	/* NOEXIST: if another CPU created it meanwhile, theirs stands. */
	if (!bpf_map_update_elem(&flows, key, nf, BPF_NOEXIST))
		IL_STAT_INC(created);
	flow = bpf_map_lookup_elem(&flows, key);
	if (!flow)
		IL_STAT_INC(create_failed);
	return flow;
}

/* Copy the frame to userspace (the first IL_PUNT_MAX_DATA bytes). */
static __always_inline int il_punt_xdp(struct xdp_md *ctx, __u32 kind, __u64 frame_len)
{
	struct il_punt *p;
	/* 64-bit: see il_punt_skb. */
	__u64 len = frame_len;

	if (len > IL_PUNT_MAX_DATA)
		len = IL_PUNT_MAX_DATA;
	if (len < 1)
		return -1;
	p = bpf_ringbuf_reserve(&punts, sizeof(*p), 0);
	if (!p) {
		IL_STAT_INC(punt_failed);
		return -1;
	}
	p->kind = kind;
	p->ifindex = ctx->ingress_ifindex;
	p->len = len;
	p->orig_len = frame_len;
	if (bpf_xdp_load_bytes(ctx, 0, p->data, len)) {
		bpf_ringbuf_discard(p, 0);
		IL_STAT_INC(punt_failed);
		return -1;
	}
	bpf_ringbuf_submit(p, 0);
	IL_STAT_INC(punted);
	return 0;
}

/*
 * A flow waiting for userspace: take its verdict if one arrived, otherwise copy
 * the first payload packets (a TLS handshake, QUIC long-header packets) to
 * userspace, and stop waiting once it is clearly neither. A global function,
 * verified once on its own: inlined, the paths of the parser before it would
 * multiply its own. `payload_off` is where the transport payload starts in the
 * frame (0: none).
 */
__noinline int il_pending(struct xdp_md *ctx, const struct il_flow_key *key, struct il_flow *flow,
			  __u32 payload_off, __u64 len)
{
	void *data, *data_end;
	__u8 *payload;
	__u8 first;

	if (!ctx || !key || !flow)
		return 0;
	if (il_take_verdict(key, flow))
		return 0;
	if (flow->up_packets > IL_PENDING_PACKETS) {
		/* Its first packets went to userspace: the verdict comes within
		 * milliseconds, later on a loaded box, while a download's ACKs pass
		 * 16 packets fast. Keep looking for it (one hash lookup a packet)
		 * for a while rather than lose it. */
		if (!flow->punts || bpf_ktime_get_coarse_ns() - flow->first_ns > IL_PENDING_MAX_NS)
			flow->flags &= ~IL_FLOW_F_PENDING;
		return 0;
	}
	if (!payload_off || payload_off > 1024)
		return 0; /* no payload yet (SYN, ACK) */
	/* Keep the bound where the verifier can see it (clang checks a copy). */
	asm volatile("" : "+r"(payload_off));
	payload_off &= 0x7ff;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	payload = data + payload_off;
	if ((void *)(payload + 1) > data_end)
		return 0;
	first = *payload;
	if (key->proto == IPPROTO_TCP) {
		/* A TLS handshake record starts the stream, or it is not TLS. */
		if (!flow->punts && first != 0x16) {
			/* Plaintext that starts like a request line (GET, POST, ...) or
			 * the HTTP/2 preface (PRI): one packet for userspace, which
			 * knows the inference ports and the servers' paths. */
			if (first >= 'A' && first <= 'Z' &&
			    !il_punt_xdp(ctx, IL_PUNT_HTTP, len)) {
				flow->punts = IL_MAX_FLOW_PUNTS;
				return 0;
			}
			flow->flags &= ~IL_FLOW_F_PENDING;
			return 0;
		}
	} else if (!(first & 0x80)) {
		/* A QUIC short header: the handshake is over, nothing more to punt.
		 * If its Initials went to userspace, their verdict may still be on
		 * its way (a handshake in the lab takes 5 ms; a loaded daemon can
		 * take longer): keep looking for it, bounded as above. */
		if (!flow->punts)
			flow->flags &= ~IL_FLOW_F_PENDING;
		return 0;
	}
	if (flow->punts >= IL_MAX_FLOW_PUNTS)
		return 0;
	if (!il_punt_xdp(ctx, key->proto == IPPROTO_TCP ? IL_PUNT_TLS : IL_PUNT_QUIC, len))
		flow->punts++;
	return 0;
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
	/* Timing: the precise clock only for these once-per-flow events. */
	if (flow->synack_ns && !flow->lan_ack_ns && (pkt.tcp_flags & 0x10))
		flow->lan_ack_ns = bpf_ktime_get_ns();
	if (!flow->first_up_payload_ns && pkt.l4_ok && pkt.frag != IL_FRAG_LATER &&
	    len > (__u64)pkt.l3_off + pkt.l3_hdr_len + pkt.l4_hdr_len)
		flow->first_up_payload_ns = bpf_ktime_get_ns();
	if (flow->flags & IL_FLOW_F_PENDING) {
		__u32 payload_off = 0;

		if (pkt.l4_ok && pkt.frag != IL_FRAG_LATER)
			payload_off = (__u32)pkt.l3_off + pkt.l3_hdr_len + pkt.l4_hdr_len;
		il_pending(ctx, &key, flow, payload_off, len);
	}

	if (il_needs_steer(flow))
		il_steer(flow, !(flow->flags & IL_FLOW_F_NO_UPLINK));
	if (flow->uplink) {
		__u32 up = flow->uplink;
		struct il_uplink_counters *uc = bpf_map_lookup_elem(&uplink_counters, &up);

		if (uc) {
			uc->up_packets++;
			uc->up_bytes += len - pkt.l3_off;
		}
	}

	s = il_settings();
	if (!s || !s->enforce) {
		/* Observe mode: count what a block verdict would have dropped. */
		if (flow->verdict == IL_VERDICT_BLOCK || (flow->flags & IL_FLOW_F_NO_UPLINK))
			IL_STAT_INC(would_block);
		return XDP_PASS;
	}
	if (flow->verdict == IL_VERDICT_BLOCK || (flow->flags & IL_FLOW_F_NO_UPLINK)) {
		if (flow->verdict == IL_VERDICT_BLOCK)
			IL_STAT_INC(blocked);
		else
			IL_STAT_INC(no_uplink);
		/* TCP (not a RST itself): lan_ingress_tc answers with a RST, so the
		 * application fails now instead of retrying SYNs for a minute. */
		if (key.proto == IPPROTO_TCP && pkt.frag == IL_FRAG_NONE && !(pkt.tcp_flags & 0x04) &&
		    !bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct il_meta))) {
			struct il_meta *m = (void *)(long)ctx->data_meta;

			if ((void *)(m + 1) > (void *)(long)ctx->data)
				return XDP_DROP;
			m->magic = IL_META_MAGIC;
			m->mark = 0;
			m->priority = 0;
			m->flags = IL_META_F_RESET | ((__u32)pkt.l3_off << 8) |
				   (pkt.kind == IL_L3_IPV6 ? 0x10000 : 0);
			return XDP_PASS;
		}
		return XDP_DROP;
	}
	/* A bulk upload crosses its class's threshold here (downloads in
	 * lan_egress): this packet already gets the lower class's DSCP and queue. */
	il_demote_check(flow);
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
		m->flags = 0;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
