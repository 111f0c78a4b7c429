/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Flow keys, fragments, static classification and DSCP rewriting, shared by the
 * LAN programs. Classification runs once per flow, at its first upload packet;
 * every later packet costs one hash lookup.
 */
#ifndef INFERLANE_FLOW_H
#define INFERLANE_FLOW_H

#include "inferlane_maps.h"
#include "pckt_parsing.h"

static __always_inline struct il_flow_stats *il_stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&flow_stats, &zero);
}

#define IL_STAT_INC(field)                                                     \
	do {                                                                   \
		struct il_flow_stats *__s = il_stats();                        \
		if (__s)                                                       \
			__s->field++;                                          \
	} while (0)

static __always_inline struct il_settings *il_settings(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&settings, &zero);
}

/*
 * Fragments: the first one carries the ports, later ones do not. Remember the
 * first fragment's ports by (src, dst, id, proto) so the rest of the datagram
 * lands in the same flow. A later fragment whose first was never seen (reordered
 * or lost) keeps ports 0 and is counted as an orphan.
 */
static __always_inline void il_frag_resolve(struct il_pkt *pkt)
{
	struct il_frag_key fk = {};

	if (pkt->frag == IL_FRAG_NONE)
		return;
	__builtin_memcpy(fk.src, pkt->src, 16);
	__builtin_memcpy(fk.dst, pkt->dst, 16);
	fk.id = pkt->frag_id;
	fk.proto = pkt->frag_proto;
	if (pkt->frag == IL_FRAG_FIRST) {
		struct il_frag_ports fp = {
			.sport = pkt->sport,
			.dport = pkt->dport,
			.proto = pkt->proto,
		};

		if (pkt->l4_ok) {
			bpf_map_update_elem(&frags, &fk, &fp, BPF_ANY);
			IL_STAT_INC(frag_first);
		}
		return;
	}
	struct il_frag_ports *fp = bpf_map_lookup_elem(&frags, &fk);

	if (fp) {
		pkt->sport = fp->sport;
		pkt->dport = fp->dport;
		pkt->proto = fp->proto;
		IL_STAT_INC(frag_nonfirst);
	} else {
		IL_STAT_INC(frag_orphan);
	}
	pkt->l4_ok = 1;
}

/* Key from the client's side: upload packets are (client -> remote). */
static __always_inline void il_key_upload(const struct il_pkt *pkt, struct il_flow_key *key)
{
	__builtin_memcpy(key->client, pkt->src, 16);
	__builtin_memcpy(key->remote, pkt->dst, 16);
	key->client_port = pkt->sport;
	key->remote_port = pkt->dport;
	key->proto = pkt->proto;
	key->family = pkt->kind == IL_L3_IPV4 ? 4 : 6;
	key->pad = 0;
}

/* Download packets are (remote -> client): the same key, reversed. */
static __always_inline void il_key_download(const struct il_pkt *pkt, struct il_flow_key *key)
{
	__builtin_memcpy(key->client, pkt->dst, 16);
	__builtin_memcpy(key->remote, pkt->src, 16);
	key->client_port = pkt->dport;
	key->remote_port = pkt->sport;
	/* ICMP echo: the identifier sits in the same place both ways. */
	if (pkt->proto == IPPROTO_ICMP || pkt->proto == IL_IPPROTO_ICMPV6) {
		key->client_port = pkt->sport;
		key->remote_port = 0;
	}
	key->proto = pkt->proto;
	key->family = pkt->kind == IL_L3_IPV4 ? 4 : 6;
	key->pad = 0;
}

static __always_inline int il_ports_match(const struct il_rule *rule, __u8 proto, __u16 port)
{
#pragma unroll
	for (int i = 0; i < IL_MAX_PORT_RANGES; i++) {
		if (i >= rule->n_ports)
			break;
		if (rule->ports[i].proto == proto && port >= rule->ports[i].first &&
		    port <= rule->ports[i].last)
			return 1;
	}
	return 0;
}

/* State of one classification, shared with the bpf_loop callback. */
struct il_cls_ctx {
	struct il_candidates *cand;
	__u8 client[16];
	__u32 found;     /* rule index that matched, or IL_NO_RULE */
	__u16 provider;
	__u16 port;      /* remote port, host order */
	__u8 proto;
	__u8 pad[3];
};

#define IL_NO_RULE 0xffffffffu

/*
 * The rule maps of one copy, as a macro so each copy's maps are named directly
 * (the verifier wants a known map at every call site). The candidates are walked
 * with bpf_loop: its callback is verified once, where an unrolled loop of 16
 * candidates times their checks would exceed the verifier's budget.
 */
#define IL_CLASSIFY_IN(N)                                                      \
	static long il_try_rule_##N(__u32 i, void *data)                       \
	{                                                                      \
		struct il_cls_ctx *c = data;                                   \
		struct il_candidates *cand = c->cand;                          \
		struct il_rule *rule;                                          \
		__u32 idx;                                                     \
                                                                               \
		if (!cand || i >= IL_MAX_CANDIDATES || i >= cand->n)           \
			return 1;                                              \
		/* clang compares a copy of i and indexes with another       \
		 * register, which the verifier then sees unbounded: hide i  \
		 * from the optimiser and mask it. */                        \
		asm volatile("" : "+r"(i));                                    \
		idx = cand->rule[i & (IL_MAX_CANDIDATES - 1)];                 \
		rule = bpf_map_lookup_elem(&rules_##N, &idx);                  \
		if (!rule)                                                     \
			return 0;                                              \
		if (rule->flags & IL_RULE_F_PROVIDERS) {                       \
			struct il_rule_provider_key pk = {                     \
				.rule = idx, .provider = c->provider };        \
			if (!c->provider)                                      \
				return 0;                                      \
			if (!(rule->flags & IL_RULE_F_ANY_PROVIDER) &&         \
			    !bpf_map_lookup_elem(&rule_providers_##N, &pk))    \
				return 0;                                      \
		}                                                              \
		if ((rule->flags & IL_RULE_F_PORTS) &&                         \
		    !il_ports_match(rule, c->proto, c->port))                  \
			return 0;                                              \
		if (rule->flags & IL_RULE_F_CLIENTS) {                         \
			struct il_client_key ck = {                            \
				.prefixlen = 32 + 128,                         \
				.rule_be = bpf_htonl(idx),                     \
			};                                                     \
			__builtin_memcpy(ck.addr, c->client, 16);              \
			if (!bpf_map_lookup_elem(&clients_##N, &ck))           \
				return 0;                                      \
		}                                                              \
		c->found = idx;                                                \
		return 1;                                                      \
	}                                                                      \
                                                                               \
	static __always_inline struct il_rule *il_classify_##N(                \
		const struct il_flow_key *key, __u16 provider, __u32 *rule_idx) \
	{                                                                      \
		struct il_lpm_key dk = { .prefixlen = 128 };                   \
		struct il_cls_ctx c = {                                        \
			.found = IL_NO_RULE,                                   \
			.provider = provider,                                  \
			.port = bpf_ntohs(key->remote_port),                   \
			.proto = key->proto,                                   \
		};                                                             \
                                                                               \
		__builtin_memcpy(dk.addr, key->remote, 16);                    \
		__builtin_memcpy(c.client, key->client, 16);                   \
		c.cand = bpf_map_lookup_elem(&dests_##N, &dk);                 \
		if (!c.cand)                                                   \
			return 0;                                              \
		bpf_loop(IL_MAX_CANDIDATES, il_try_rule_##N, &c, 0);           \
		if (c.found == IL_NO_RULE)                                     \
			return 0;                                              \
		*rule_idx = c.found;                                           \
		return bpf_map_lookup_elem(&rules_##N, &c.found);              \
	}

IL_CLASSIFY_IN(0)
IL_CLASSIFY_IN(1)

static __always_inline void il_apply(struct il_flow *flow, const struct il_rule *rule)
{
	if (rule->action == IL_ACTION_BLOCK) {
		flow->verdict = IL_VERDICT_BLOCK;
		return;
	}
	flow->class_id = rule->class_id;
	flow->dscp = rule->dscp;
	flow->mark = rule->mark;
	flow->priority = rule->priority;
}

/* First match in config order over the live rule copy; fills the verdict. The
 * flow's provider takes part: rules may name providers, and a provider flow no
 * rule matched gets the provider's default class. `provider` 0 means: look the
 * remote address up among the DNS-learned ones. */
static __always_inline void il_classify_with(const struct il_flow_key *key, struct il_flow *flow,
					     __u16 provider, __u8 source)
{
	struct il_settings *s = il_settings();
	struct il_addr_info *learned;
	struct il_rule *rule;
	__u32 idx = 0;

	flow->dscp = IL_DSCP_KEEP;
	if (!provider) {
		learned = bpf_map_lookup_elem(&addr_providers, key->remote);
		if (learned && learned->provider_id) {
			provider = learned->provider_id;
			source = IL_SRC_DNS;
		}
	}
	if (provider) {
		flow->provider_id = provider;
		flow->source = source;
		/* QUIC to a provider, when the config says so: dropped, so the client
		 * falls back to TCP. */
		if (s && s->block_ai_quic && key->proto == IPPROTO_UDP &&
		    key->remote_port == bpf_htons(443)) {
			flow->verdict = IL_VERDICT_BLOCK;
			return;
		}
	}
	if (!s)
		return;
	/* No rules still leaves the providers' default classes. */
	rule = !s->n_rules ? 0
	       : s->rule_set ? il_classify_1(key, provider, &idx) : il_classify_0(key, provider, &idx);
	if (rule) {
		flow->rule_id = idx + 1;
		/* A rule naming providers matched through the learned provider. */
		if (!(rule->flags & IL_RULE_F_PROVIDERS))
			flow->source = IL_SRC_STATIC;
		il_apply(flow, rule);
		return;
	}
	if (provider) {
		__u32 pid = provider;
		struct il_rule *d = s->rule_set ? bpf_map_lookup_elem(&provider_defaults_1, &pid)
						: bpf_map_lookup_elem(&provider_defaults_0, &pid);

		if (d && (d->class_id || d->action == IL_ACTION_BLOCK))
			il_apply(flow, d);
	}
}

/*
 * Pick the uplink for a flow of its class (first packet, a class change, or its
 * uplink went down): a random slot of the class's steering entry, which the
 * daemon fills by preference, health and weight. Random is enough: the choice is
 * made once and the flow keeps it (sticky). A class whose uplinks are all down
 * holds its flows (IL_FLOW_F_NO_UPLINK) instead of leaking them to the main
 * table, which may route them over a link the class must not use.
 */
static __always_inline void il_steer(struct il_flow *flow, __u32 moving)
{
	__u32 cls = flow->class_id;
	struct il_steer *st = bpf_map_lookup_elem(&class_uplinks, &cls);
	__u32 up = 0;

	flow->flags &= ~IL_FLOW_F_NO_UPLINK;
	if (!st || flow->verdict == IL_VERDICT_BLOCK)
		return;
	if (st->n)
		up = st->slot[bpf_get_prandom_u32() & (IL_STEER_SLOTS - 1)];
	else if (st->deny)
		flow->flags |= IL_FLOW_F_NO_UPLINK;
	up &= 0xf;
	flow->uplink = up;
	flow->mark = (flow->mark & ~IL_MARK_UPLINK_MASK) | (up << IL_MARK_UPLINK_SHIFT);
	if (up) {
		struct il_uplink_counters *c = bpf_map_lookup_elem(&uplink_counters, &up);

		if (c) {
			c->steered++;
			if (moving)
				c->moved++;
		}
		if (moving)
			IL_STAT_INC(moved);
	}
}

/* Whether the flow must be steered again: it is held for want of an uplink, or
 * the uplink it is pinned to went down. One array lookup for pinned flows. */
static __always_inline int il_needs_steer(const struct il_flow *flow)
{
	__u32 up = flow->uplink;
	struct il_uplink_state *u;

	if (flow->flags & IL_FLOW_F_NO_UPLINK)
		return 1;
	if (!up)
		return 0;
	u = bpf_map_lookup_elem(&uplink_state, &up);
	return u && !u->usable;
}

/* After a class change (a userspace verdict): a flow on an uplink its new class
 * may not use moves; a class that lets the main table decide keeps it where it
 * is (moving would strand it behind another NAT for nothing). */
static __always_inline void il_steer_class_change(struct il_flow *flow)
{
	__u32 cls = flow->class_id;
	struct il_steer *st = bpf_map_lookup_elem(&class_uplinks, &cls);

	if (!st || !st->allowed)
		return;
	if (flow->uplink && (st->allowed & (1u << (flow->uplink & 0xf))))
		return;
	il_steer(flow, 0);
}

/*
 * Bulk demotion: once a flow of a class with a threshold has moved that many
 * bytes (both directions) and lasted long enough, or kept above the class's
 * rate for a whole window, it takes the target class's DSCP, queue (mark bits
 * and priority) and class id, once. Its uplink stays: moving it would strand
 * the connection behind another NAT. Flows below the thresholds (short
 * interactive exchanges) are never touched. One array lookup per packet of a
 * classified, not yet demoted flow; the precise clock is read only past the
 * byte threshold. Two CPUs crossing it at the same instant could both count
 * it; the treatment written is the same.
 */
static __always_inline void il_demote_take(struct il_flow *flow, const struct il_demote *d)
{
	flow->flags |= IL_FLOW_F_DEMOTED;
	flow->class_id = d->class_id;
	flow->dscp = d->dscp;
	flow->priority = d->priority;
	flow->mark = (d->mark & ~IL_MARK_UPLINK_MASK) | (flow->mark & IL_MARK_UPLINK_MASK);
	IL_STAT_INC(demoted);
}

static __always_inline void il_demote_check(struct il_flow *flow)
{
	__u32 cls = flow->class_id;
	struct il_demote *d;
	__u64 total;

	if (!cls || (flow->flags & IL_FLOW_F_DEMOTED) || flow->verdict == IL_VERDICT_BLOCK)
		return;
	d = bpf_map_lookup_elem(&class_demote, &cls);
	if (!d)
		return;
	total = flow->up_bytes + flow->down_bytes;
	if (d->after_bytes && total >= d->after_bytes &&
	    (!d->min_age_ns || bpf_ktime_get_ns() - flow->first_ns >= d->min_age_ns)) {
		il_demote_take(flow, d);
		return;
	}
	if (d->window_units) {
		/* Tumbling windows of `for` on the coarse clock the caller just
		 * stored in last_ns (no extra clock read): at the first packet past
		 * a window's end, the window is judged and the next one starts. A
		 * flow above the rate for two windows' length is always caught; a
		 * burst smaller than rate x `for` never is. Units of 2^20 ns
		 * keep both fields 32 bits (a 52-day clock wrap only restarts a
		 * window). */
		__u32 now = (__u32)(flow->last_ns >> 20) | 1;
		__u32 kib = (__u32)(total >> 10);

		if (!flow->rate_win_start) {
			flow->rate_win_start = now;
			flow->rate_win_kib = kib;
			return;
		}
		if (now - flow->rate_win_start < d->window_units)
			return;
		if ((__u64)(kib - flow->rate_win_kib) << 10 >= d->window_bytes) {
			il_demote_take(flow, d);
			return;
		}
		flow->rate_win_start = now;
		flow->rate_win_kib = kib;
	}
}

/*
 * Apply a userspace verdict to a live flow: the rules run again with the
 * provider userspace recognised. The flow keeps the uplink it started on
 * (changing it would strand the connection behind another NAT) unless its new
 * class may not use that uplink; class, DSCP, queue and block follow the new
 * verdict. Counters are untouched.
 *
 * Both lan_ingress (the flow's next upload packet) and lan_egress (its next
 * download packet: a server's reply always follows the ClientHello, so a short
 * connection whose last client packet passed before the verdict arrived still
 * gets it) apply verdicts. `classify` is the calling program's own global
 * classification function: each program carries its own copy, since aya 0.14
 * cannot relocate a call into another program's copy. As a macro, so each
 * program names its own.
 */
#define IL_DEFINE_APPLY_VERDICT(classify)                                      \
	int classify(const struct il_flow_key *key, struct il_flow *flow,      \
		     __u32 provider, __u32 source);                            \
	static __always_inline void il_apply_verdict(                          \
		const struct il_flow_key *key, struct il_flow *flow,           \
		const struct il_verdict *v)                                    \
	{                                                                      \
		__u32 zero = 0;                                                \
		struct il_flow *nf;                                            \
                                                                               \
		flow->flags &= ~IL_FLOW_F_PENDING;                             \
		flow->flags |= v->flags & IL_FLOW_F_ECH;                       \
		if (!v->provider_id)                                           \
			return;                                                \
		nf = bpf_map_lookup_elem(&flow_scratch, &zero);                \
		if (!nf)                                                       \
			return;                                                \
		__builtin_memset(nf, 0, sizeof(*nf));                          \
		classify(key, nf, v->provider_id, v->source);                  \
		flow->provider_id = nf->provider_id;                           \
		flow->source = nf->source;                                     \
		flow->rule_id = nf->rule_id;                                   \
		flow->class_id = nf->class_id;                                 \
		flow->verdict = nf->verdict;                                   \
		flow->dscp = nf->dscp;                                         \
		flow->priority = nf->priority;                                 \
		flow->mark = (nf->mark & ~IL_MARK_UPLINK_MASK) |               \
			     (flow->mark & IL_MARK_UPLINK_MASK);               \
		il_steer_class_change(flow);                                   \
	}                                                                      \
                                                                               \
	/* A verdict waiting for this flow: apply it and remove it. */        \
	static __always_inline int il_take_verdict(                            \
		const struct il_flow_key *key, struct il_flow *flow)           \
	{                                                                      \
		struct il_verdict *v =                                         \
			bpf_map_lookup_elem(&flow_verdicts, key);              \
                                                                               \
		if (!v)                                                        \
			return 0;                                              \
		il_apply_verdict(key, flow, v);                                \
		bpf_map_delete_elem(&flow_verdicts, key);                      \
		return 1;                                                      \
	}

/*
 * Hand a DNS answer on its way to a client to userspace, which learns the
 * addresses of provider names from it. Only the answer is copied; the packet
 * continues untouched whatever happens here.
 */
static __always_inline void il_punt_skb(struct __sk_buff *skb, __u32 kind)
{
	struct il_punt *p;
	/* 64-bit on purpose: with a u32, clang zero-extends a copy for the checks
	 * and passes the unchecked register to the helper, which the verifier
	 * refuses as a possibly zero-sized read. */
	__u64 len = skb->len;

	if (len > IL_PUNT_MAX_DATA)
		len = IL_PUNT_MAX_DATA;
	if (len < 1)
		return;
	p = bpf_ringbuf_reserve(&punts, sizeof(*p), 0);
	if (!p) {
		IL_STAT_INC(punt_failed);
		return;
	}
	p->kind = kind;
	p->ifindex = skb->ifindex;
	p->len = len;
	p->orig_len = skb->len;
	if (bpf_skb_load_bytes(skb, 0, p->data, len)) {
		bpf_ringbuf_discard(p, 0);
		IL_STAT_INC(punt_failed);
		return;
	}
	bpf_ringbuf_submit(p, 0);
	IL_STAT_INC(punted);
}

/* RFC 1624 incremental update of a 16-bit one's complement checksum. */
static __always_inline __u16 il_csum_replace16(__u16 check, __u16 old, __u16 new)
{
	__u32 sum = (~bpf_ntohs(check) & 0xffff) + (~bpf_ntohs(old) & 0xffff) + bpf_ntohs(new);

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return bpf_htons(~sum & 0xffff);
}

/* Write DSCP, keeping the ECN bits; IPv4 checksum fixed incrementally.
 * Returns 1 when the packet changed. */
static __always_inline int il_set_dscp(struct il_pkt *pkt, void *data_end, __u8 dscp)
{
	__u8 tos = (dscp << 2) | (pkt->tos & 0x3);

	if (tos == pkt->tos)
		return 0;
	if (pkt->kind == IL_L3_IPV4) {
		struct iphdr *iph = pkt->l3;
		__u16 old;

		if ((void *)(iph + 1) > data_end)
			return 0;
		old = *(__u16 *)iph;
		iph->tos = tos;
		iph->check = il_csum_replace16(iph->check, old, *(__u16 *)iph);
	} else {
		struct ipv6hdr *ip6h = pkt->l3;

		if ((void *)(ip6h + 1) > data_end)
			return 0;
		ip6h->priority = tos >> 4;
		ip6h->flow_lbl[0] = (ip6h->flow_lbl[0] & 0x0f) | ((tos & 0x0f) << 4);
	}
	pkt->tos = tos;
	return 1;
}

#endif
