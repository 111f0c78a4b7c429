/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The ABI between the eBPF programs and the daemon. Every struct here is mirrored
 * in src/bpf/abi.rs as #[repr(C)] with a compile-time size check: change both
 * together. Only fixed-width types, padding written out, no bool.
 */
#ifndef INFERLANE_STRUCTS_H
#define INFERLANE_STRUCTS_H

#include <linux/types.h>

/* Direction, seen from the LAN side of the box. */
#define IL_DIR_UPLOAD   0 /* LAN client -> router (lan_ingress) */
#define IL_DIR_DOWNLOAD 1 /* router -> LAN client (lan_egress) */

/* Key of if_counters: which LAN interface, which direction. The daemon creates
 * one entry per (ifindex, direction) before attaching; ifindex 0 collects packets
 * from an interface it did not register, so nothing is counted silently. */
struct il_if_key {
	__u32 ifindex;
	__u32 direction;
};

/* Per-CPU packet counters for one interface and direction. */
struct il_counters {
	__u64 packets;   /* every frame the hook saw */
	__u64 bytes;     /* whole frame length, Ethernet header included */
	__u64 ipv4;      /* frames carrying IPv4 */
	__u64 ipv6;      /* frames carrying IPv6 */
	__u64 other;     /* ARP, LLDP, anything not IP */
	__u64 vlan;      /* frames with one or two 802.1Q/802.1ad tags */
	__u64 malformed; /* truncated or inconsistent headers (passed anyway) */
};

#endif
