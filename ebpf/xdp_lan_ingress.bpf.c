// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * lan_ingress (XDP): every frame a LAN client sends to the router. Today it parses
 * L2/L3 and counts the upload direction; it always passes the frame, so a parse
 * failure can never cut a client off (fail open).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "inferlane_count.h"

/* xdp.frags: the program copes with multi-buffer frames (jumbo, GRO on veth), so
 * attaching it never forces the kernel to linearise or to drop big frames. */
SEC("xdp.frags")
int lan_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct il_pkt pkt;
	int err;

	err = il_parse_l2_l3(data, data_end, &pkt);
	/* The whole frame, fragments included, to match the interface's rx_bytes. */
	il_count(ctx->ingress_ifindex, IL_DIR_UPLOAD, bpf_xdp_get_buff_len(ctx), &pkt, err);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
