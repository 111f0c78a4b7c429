/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Reading DNS answers in lan_egress: the question name is matched against the
 * provider names of dns_names, and the A/AAAA records of a matching answer go
 * into addr_providers before the answer continues to the client. Every read is
 * masked into the scratch buffers and checked against the message length; the
 * loops run in bpf_loop callbacks, each verified once.
 */
#ifndef INFERLANE_DNS_H
#define INFERLANE_DNS_H

#include "inferlane_maps.h"

struct il_dns_ctx {
	struct il_dns_scratch *s;
	__u64 hash;
	__u32 len;      /* message bytes in s->msg */
	__u32 pos;      /* read position in s->msg */
	__u32 n;        /* bytes of the dotted name in s->name */
	__u32 left;     /* bytes left in the current label */
	__u32 ok;       /* the name ended properly */
	__u32 answers;  /* answer records to read */
	__u32 installed;
	__u16 provider;
	__u16 pad;
};

/* Byte `p` of the message. The index is hidden from clang before the mask, or it
 * folds the mask into neighbouring arithmetic and the verifier sees an
 * unbounded offset. */
static __always_inline __u8 il_dns_byte(const struct il_dns_ctx *c, __u32 p)
{
	asm volatile("" : "+r"(p));
	p &= IL_DNS_MSG - 1;
	return c->s->msg[p];
}

/* 16 bytes from `p` (masked): within the scratch value, since the name buffer
 * follows the message; the caller checked them against the message length. */
static __always_inline const __u8 *il_dns_msg_at(const struct il_dns_ctx *c, __u32 p)
{
	asm volatile("" : "+r"(p));
	p &= IL_DNS_MSG - 1;
	return &c->s->msg[p];
}

static __always_inline __u8 *il_dns_name_at(const struct il_dns_ctx *c, __u32 p)
{
	asm volatile("" : "+r"(p));
	p &= IL_DNS_NAME - 1;
	return &c->s->name[p];
}

#define IL_DNS_AT(c, p) il_dns_byte((c), (p))

/* One byte of the question name: length bytes become dots, letters lowercase. */
static long il_dns_name_byte(__u32 i, void *data)
{
	struct il_dns_ctx *c = data;
	__u32 pos = c->pos;
	__u8 b;

	if (pos >= c->len || pos >= IL_DNS_MSG)
		return 1;
	b = IL_DNS_AT(c, pos);
	c->pos = pos + 1;
	if (!c->left) {
		if (!b) {
			c->ok = 1;
			return 1;
		}
		if (b & 0xc0)
			return 1; /* a pointer in the question: not ours to follow */
		c->left = b;
		if (c->n) {
			if (c->n >= IL_DNS_NAME)
				return 1;
			*il_dns_name_at(c, c->n) = '.';
			c->n++;
		}
		return 0;
	}
	if (c->n >= IL_DNS_NAME)
		return 1;
	if (b >= 'A' && b <= 'Z')
		b += 'a' - 'A';
	*il_dns_name_at(c, c->n) = b;
	c->n++;
	c->left--;
	return 0;
}

/* One character of the name, from its end: the hash covers the suffix read so
 * far; at a label start, look that suffix up. Later (longer) matches win. */
static long il_dns_suffix(__u32 i, void *data)
{
	struct il_dns_ctx *c = data;
	struct il_dns_name *m;
	__u32 at;

	if (i >= c->n || i >= IL_DNS_NAME)
		return 1;
	at = c->n - 1 - i;
	c->hash = (c->hash ^ *il_dns_name_at(c, at)) * IL_FNV_PRIME;
	if (at && *il_dns_name_at(c, at - 1) != '.')
		return 0;
	m = bpf_map_lookup_elem(&dns_names, &c->hash);
	if (!m)
		return 0;
	if (!at && m->exact)
		c->provider = m->exact;
	else if (at && m->wildcard)
		c->provider = m->wildcard;
	return 0;
}

/* One answer record: its owner name (a pointer or labels) is skipped, A and AAAA
 * records are installed. */
static long il_dns_answer(__u32 i, void *data)
{
	struct il_dns_ctx *c = data;
	struct il_addr_info info = { .provider_id = c->provider };
	__u8 addr[16] = {};
	__u32 pos = c->pos, type, rdlen;

	if (i >= c->answers)
		return 1;
	/* The owner name: a compression pointer ends it, as does the root label. */
	for (int k = 0; k < 32; k++) {
		__u8 b;

		if (pos >= c->len || pos >= IL_DNS_MSG)
			return 1;
		b = IL_DNS_AT(c, pos);
		if ((b & 0xc0) == 0xc0) {
			pos += 2;
			break;
		}
		if (b & 0xc0)
			return 1;
		pos += 1 + b;
		if (!b)
			break;
		if (k == 31)
			return 1;
	}
	if (pos + 10 > c->len || pos >= IL_DNS_MSG)
		return 1;
	type = (__u32)IL_DNS_AT(c, pos) << 8 | IL_DNS_AT(c, pos + 1);
	rdlen = (__u32)IL_DNS_AT(c, pos + 8) << 8 | IL_DNS_AT(c, pos + 9);
	pos += 10;
	if (pos + rdlen > c->len)
		return 1;
	if (type == 1 && rdlen == 4) {
		addr[10] = 0xff;
		addr[11] = 0xff;
		__builtin_memcpy(&addr[12], il_dns_msg_at(c, pos), 4);
	} else if (type == 28 && rdlen == 16) {
		__builtin_memcpy(addr, il_dns_msg_at(c, pos), 16);
	} else {
		c->pos = pos + rdlen;
		return 0;
	}
	if (!bpf_map_update_elem(&addr_providers, addr, &info, BPF_ANY))
		c->installed++;
	c->pos = pos + rdlen;
	return 0;
}

#endif
