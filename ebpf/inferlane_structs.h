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

/* ---- Interface counters ------------------------------------------------ */

/* Key of if_counters (the hash for ifindexes >= IL_IF_ARRAY_IFINDEXES): which
 * LAN interface, which direction. The daemon creates one entry per (ifindex,
 * direction) before attaching; ifindex 0 collects packets from an interface it
 * did not register, so nothing is counted silently. */
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

/* ---- Flow table ---------------------------------------------------------- */

/*
 * One entry per flow, keyed from the LAN client's side in both directions: upload
 * packets give (src, dst), download packets the reverse, so both meet here.
 * Addresses are IPv6; IPv4 is mapped (::ffff:a.b.c.d), so one key serves both.
 * Ports are in network byte order. ICMP echo uses the identifier as client_port;
 * other ICMP and non-TCP/UDP protocols have both ports 0.
 */
struct il_flow_key {
	__u8 client[16];
	__u8 remote[16];
	__u16 client_port;
	__u16 remote_port;
	__u8 proto;  /* IPPROTO_* (ICMPv6 for IPv6 ICMP) */
	__u8 family; /* 4 or 6 */
	__u16 pad;   /* always 0 */
};

/* Where a flow's verdict came from (detection cascade of DESIGN.md). */
#define IL_SRC_NONE   0
#define IL_SRC_STATIC 1 /* a static rule: client/destination prefix, port */
#define IL_SRC_DNS    2
#define IL_SRC_SNI    3
#define IL_SRC_QUIC   4
#define IL_SRC_HTTP   5

#define IL_VERDICT_PASS  0
#define IL_VERDICT_BLOCK 1

/* dscp value meaning "leave the packet's DSCP as it is". */
#define IL_DSCP_KEEP 0xff

/* il_flow.flags */
#define IL_FLOW_F_FRAGMENTS 0x01 /* carried IP fragments */
#define IL_FLOW_F_PENDING   0x02 /* waiting for a userspace verdict (SNI, QUIC) */
#define IL_FLOW_F_ECH       0x04 /* the ClientHello carried encrypted_client_hello */
#define IL_FLOW_F_NO_UPLINK 0x08 /* its class may use no uplink that is up now: held */
#define IL_FLOW_F_DEMOTED   0x10 /* moved to its class's demotion target (bulk) */

/* First packets of a pending flow copied to userspace, at most: 12 segments of a
 * 1460-byte MSS carry a 16 KiB ClientHello (tls::MAX_SEGMENTS matches). */
#define IL_MAX_FLOW_PUNTS 12
/* A flow still pending after this many upload packets stops waiting, unless
 * it punted packets to userspace: then it waits for their verdict up to
 * IL_PENDING_MAX_NS after its start. */
#define IL_PENDING_PACKETS 16
#define IL_PENDING_MAX_NS 2000000000ull

struct il_flow {
	__u64 first_ns;     /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the first packet */
	__u64 last_ns;      /* of the latest packet, either direction: the coarse clock
			     * (bpf_ktime_get_coarse_ns, one tick = 1/HZ), because the
			     * precise one costs ~55 ns a call on VMs, more than the
			     * rest of the per-packet work */
	__u64 up_packets;
	__u64 up_bytes;     /* IP bytes (IP header included, L2 excluded), as NetFlow counts */
	__u64 down_packets;
	__u64 down_bytes;
	/* The verdict: written when the flow is created, later only by userspace
	 * classifiers. Treatment is copied from the class so that a rule reload never
	 * changes what an existing flow gets. */
	__u32 rule_id;      /* index + 1 of the matching config rule; 0 none */
	__u32 mark;         /* skb->mark bits (IL_MARK_*), 0 when unclassified */
	__u32 priority;     /* skb->priority (TC_H_MAKE(IL_QDISC_MAJOR, queue)), 0 none */
	__u16 provider_id;  /* 0 unknown */
	__u8 class_id;      /* index + 1 of the config class; 0 unclassified */
	__u8 verdict;       /* IL_VERDICT_* */
	__u8 dscp;          /* DSCP to write on this flow's packets, or IL_DSCP_KEEP */
	__u8 source;        /* IL_SRC_* */
	__u8 dscp_seen;     /* DSCP of the first upload packet as the client sent it */
	__u8 tcp_flags_up;  /* OR of TCP flags, each direction */
	__u8 tcp_flags_down;
	__u8 flags;         /* IL_FLOW_F_* */
	__u8 uplink;        /* uplink index + 1; 0 main table */
	__u8 punts;         /* packets of this flow copied to userspace */
	__u32 ifindex;      /* LAN interface of the first packet */
	/* Rate demotion window (see il_demote_check): its start, in units of
	 * 2^20 ns of the coarse clock (0: not started), and the flow's total
	 * bytes at that start, in KiB. */
	__u32 rate_win_start;
	__u32 rate_win_kib;
	__u8 dscp_down;     /* DSCP of the latest download packet (forwarded as it came) */
	__u8 pad1[3];
	/* Timing (precise clock, each written once per flow): the client's SYN,
	 * the server's SYN-ACK on its way to the client, the client's ACK of it
	 * (LAN round trip), the first byte each way. Userspace derives the
	 * provider-side handshake RTT (synack - syn), the LAN RTT (lan_ack -
	 * synack) and time to first byte (first_down_payload - first_up_payload). */
	__u64 syn_ns;
	__u64 synack_ns;
	__u64 lan_ack_ns;
	__u64 first_up_payload_ns;
	__u64 first_down_payload_ns;
};

/* Flow-table statistics (per-CPU array, one entry). Evictions by the LRU are not
 * reported by the kernel; userspace derives them: created - deleted - live. */
struct il_flow_stats {
	__u64 created;        /* new entries inserted by lan_ingress */
	__u64 create_failed;  /* insert failed: the flow is passed uncounted */
	__u64 frag_first;     /* first fragments remembered for their ports */
	__u64 frag_nonfirst;  /* later fragments matched to their first */
	__u64 frag_orphan;    /* later fragments whose first was never seen: ports 0 */
	__u64 blocked;        /* packets dropped for IL_VERDICT_BLOCK flows */
	__u64 dscp_rewritten; /* packets whose DSCP was changed */
	__u64 download_unmatched; /* download packets with no flow (not from a client flow) */
	__u64 punted;         /* packets copied to userspace (DNS answers, ...) */
	__u64 punt_failed;    /* the ring buffer was full: the packet still passed */
	__u64 would_block;    /* observe mode: packets a block verdict would have dropped */
	__u64 no_uplink;      /* packets dropped: none of their class's uplinks is up */
	__u64 moved;          /* flows steered off an uplink that went down */
	__u64 demoted;        /* flows moved to a lower class past their class's byte threshold */
};

/* IP fragments: the first fragment's ports, for the fragments after it. */
struct il_frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;    /* IPv4 identification (16 bits) or IPv6 fragment id */
	__u8 proto;  /* IPv4 protocol, or the Fragment header's next header (what
		      * every fragment of the datagram carries alike) */
	__u8 pad[3];
};

struct il_frag_ports {
	__u16 sport;
	__u16 dport;
	__u8 proto;  /* the transport protocol found in the first fragment */
	__u8 pad[3];
};

/* ---- skb->mark and skb->priority ------------------------------------------ */

/*
 * skb->mark layout, the one place it is defined (policy routing and qdisc code
 * read the same bits). Only IL_MARK_MASK is ours; the other bits of an existing
 * mark are preserved, so firewall marks keep working.
 *   bit  28     set on every packet of a classified flow ("inferlane marked")
 *   bits 29-30  queue: 1 high, 2 normal, 3 low             -> skb->priority at WAN egress
 *   bits 24-27  uplink index + 1 (0: main table)           -> fwmark rules select the table
 *   bits 16-23  class index + 1 (0: unclassified)
 * The queue rides in the mark because IPv4 forwarding resets skb->priority
 * (ip_forward: skb->priority = rt_tos2priority(tos)); the mark survives, and
 * wan_egress turns it back into the priority right before the uplink's qdisc.
 */
#define IL_MARK_MASK          0x7fff0000u
#define IL_MARK_CLASSIFIED    0x10000000u
#define IL_MARK_QUEUE_SHIFT   29
#define IL_MARK_QUEUE_MASK    0x60000000u
#define IL_MARK_UPLINK_SHIFT  24
#define IL_MARK_UPLINK_MASK   0x0f000000u
#define IL_MARK_CLASS_SHIFT   16
#define IL_MARK_CLASS_MASK    0x00ff0000u

/* skb->priority selects the HTB class directly: major = the qdisc handle
 * inferlane gives its uplink root qdiscs, minor = the queue (code << 4). */
#define IL_QDISC_MAJOR 0x1a1
#define IL_QUEUE_HIGH   0x10
#define IL_QUEUE_NORMAL 0x20
#define IL_QUEUE_LOW    0x30

/* ---- Rules (compiled by userspace from the config) ---------------------------- */

#define IL_MAX_PORT_RANGES 8  /* per rule; validate() refuses more */
#define IL_MAX_CANDIDATES 16  /* rules that can apply to one destination (power of two) */

struct il_port_range {
	__u16 first; /* host byte order */
	__u16 last;
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad[3];
};

#define IL_RULE_F_CLIENTS   0x1 /* match the client against client_prefixes */
#define IL_RULE_F_PORTS     0x2 /* match (proto, remote port) against ports[] */
#define IL_RULE_F_PROVIDERS 0x4 /* match the flow's provider against rule_providers */
#define IL_RULE_F_ANY_PROVIDER 0x8 /* providers = ["*"]: any known provider */

#define IL_ACTION_CLASSIFY 0
#define IL_ACTION_BLOCK    1

struct il_rule {
	__u32 flags;    /* IL_RULE_F_* */
	__u32 mark;     /* copied into the flow (class and uplink bits) */
	__u32 priority; /* copied into the flow */
	__u8 action;    /* IL_ACTION_* */
	__u8 class_id;  /* class index + 1 (0 for block) */
	__u8 dscp;      /* DSCP of the class, or IL_DSCP_KEEP */
	__u8 uplink;    /* uplink index + 1, 0 main table */
	__u8 n_ports;
	__u8 pad[3];
	struct il_port_range ports[IL_MAX_PORT_RANGES];
};

/* LPM key for destination prefixes (IPv4 mapped, prefixlen counted in the
 * 128-bit address: an IPv4 /24 is 96 + 24). */
struct il_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Value of the destination trie: the rules that can apply to addresses whose
 * longest matching prefix is this one, in config order. Userspace puts there
 * every rule with a prefix on this prefix's chain (prefixes containing an address
 * are nested, so longest match + ancestors is all of them) and every rule without
 * destinations. ::/0 holds the destination-less rules for everything else. */
struct il_candidates {
	__u32 n;
	__u32 rule[IL_MAX_CANDIDATES]; /* indexes into the rules array */
};

/* LPM key for client prefixes: the rule index (big endian, so the trie matches it
 * first) then the address; prefixlen = 32 + 96/0 + prefix length. */
struct il_client_key {
	__u32 prefixlen;
	__u32 rule_be;
	__u8 addr[16];
};

/* Key of rule_providers: (rule index, provider id) present = the rule names it. */
struct il_rule_provider_key {
	__u32 rule;
	__u16 provider;
	__u16 pad;
};

/* The most provider ids a rule set describes (catalog plus config additions). */
#define IL_MAX_PROVIDERS 1024

/* ---- Learning (DNS answers -> addresses) ------------------------------------ */

/* Value of addr_providers: an address some client resolved from a provider's
 * name. Userspace adds and expires entries (TTL + grace, kept while flows use it);
 * the datapath only reads them, at a flow's first packet. */
struct il_addr_info {
	__u16 provider_id;
	__u16 pad;
	__u32 pad2;
};

/*
 * Provider names the datapath itself recognises in DNS answers (value of
 * dns_names), so that the addresses are in addr_providers before the answer
 * reaches the client: a client connecting right after its lookup would outrun
 * the daemon. The key is a 64-bit FNV-1a hash of the lowercase dotted name read
 * from its last character to its first; at each label start the hash covers
 * that suffix. `exact`: the provider of that very name; `wildcard`: of names
 * strictly below it. The longest match wins, an exact one over a suffix. The
 * daemon still reads every answer (CNAME chains, TTLs, region wildcards) and
 * owns the entries' expiry.
 */
struct il_dns_name {
	__u16 exact;
	__u16 wildcard;
	__u32 pad;
};
#define IL_FNV_OFFSET 0xcbf29ce484222325ull
#define IL_FNV_PRIME 0x100000001b3ull
#define IL_DNS_MSG 512   /* DNS message bytes read (power of two) */
#define IL_DNS_NAME 256  /* dotted name bytes (power of two) */
#define IL_DNS_MAX_ANSWERS 16

struct il_dns_scratch {
	__u8 msg[IL_DNS_MSG];
	__u8 name[IL_DNS_NAME];
};

#define IL_PUNT_DNS  1 /* a DNS answer on its way to a LAN client (lan_egress) */
#define IL_PUNT_TLS  2 /* a client segment of a pending TCP flow (lan_ingress) */
#define IL_PUNT_QUIC 3 /* a client long-header datagram of a pending UDP/443 flow */
#define IL_PUNT_HTTP 4 /* the first plaintext request of a pending TCP flow */

/* A verdict from userspace for a pending flow (value of flow_verdicts): the
 * datapath applies it at the flow's next packet (upload in lan_ingress, or a
 * reply in lan_egress), re-running the rules with this provider, and deletes the
 * entry. */
struct il_verdict {
	__u16 provider_id; /* 0: nothing recognised; the flow just stops waiting */
	__u8 source;       /* IL_SRC_SNI / IL_SRC_QUIC / IL_SRC_HTTP */
	__u8 flags;        /* IL_FLOW_F_ECH */
	__u32 pad;
};
#define IL_PUNT_MAX_DATA 1536

/* One ring buffer record: the packet from its Ethernet header, cut at
 * IL_PUNT_MAX_DATA. */
struct il_punt {
	__u32 kind;     /* IL_PUNT_* */
	__u32 ifindex;
	__u32 len;      /* bytes in data */
	__u32 orig_len; /* the packet's length */
	__u8 data[IL_PUNT_MAX_DATA];
};

/* Daemon-controlled knobs (array, one entry): rule changes are map writes and a
 * flip of rule_set, never a program reload. */
struct il_settings {
	__u32 rule_set; /* 0 or 1: which copy of the rule maps is live */
	__u32 enforce;  /* 1 enforce, 0 observe (classify and count, change nothing) */
	__u32 n_rules;  /* rules in the live set */
	__u32 block_ai_quic; /* 1: UDP/443 flows to a known provider are blocked */
};

/* ---- Uplink steering (written by the daemon's uplink module) ------------------ */

#define IL_MAX_UPLINKS 15      /* the mark carries index + 1 in 4 bits */
#define IL_STEER_SLOTS 16      /* new flows pick one slot at random: weights */

/* Per class (key: class id, 0 = unclassified flows, the default policy). `slot`
 * holds the uplinks (index + 1) new flows of the class go to now: the first
 * healthy uplink of the class's preference list, shared by weight with healthy
 * uplinks of equal priority; all IL_STEER_SLOTS filled when n > 0. */
struct il_steer {
	__u8 n;          /* 0: no uplink of the class is usable now */
	__u8 deny;       /* with n == 0: the class lists uplinks, none usable: refuse
			  * the flow (blocked) rather than leak it to the main table */
	__u16 allowed;   /* bit (index + 1): uplinks the class may use at all */
	__u8 slot[IL_STEER_SLOTS];
};

/* Per uplink (key: index + 1). A flow pinned to an uplink that is no longer
 * usable is steered again at its next packet; flows elsewhere are untouched. */
struct il_uplink_state {
	__u32 usable;    /* 1 healthy, 0 down */
	__u32 pad;
};

/* Per uplink, per CPU: what the LAN hooks saw of flows pinned to it. Download
 * packets are the datapath's passive evidence that the uplink works. */
struct il_uplink_counters {
	__u64 up_packets;
	__u64 up_bytes;
	__u64 down_packets;
	__u64 down_bytes;
	__u64 steered;      /* flows steered here (first packet or moved) */
	__u64 moved;        /* flows moved here off an uplink that went down */
};

/* ---- Bulk demotion (written by the daemon from classes' `demote`) ------------- */

/* Per class (key: class id). A flow of the class whose bytes, both directions,
 * reach after_bytes and that is at least min_age_ns old, or that moves at least
 * window_bytes within one window of window_units, takes the target class's
 * treatment once (IL_FLOW_F_DEMOTED); its uplink bits stay. after_bytes 0: no
 * byte threshold; window_units 0: no rate threshold; both 0: never demoted. */
struct il_demote {
	__u64 after_bytes;
	__u64 min_age_ns;
	__u32 mark;      /* target class and queue bits, IL_MARK_CLASSIFIED; no uplink bits */
	__u32 priority;  /* target skb->priority */
	__u8 class_id;   /* target class id */
	__u8 dscp;       /* target DSCP, or IL_DSCP_KEEP */
	__u8 pad[6];
	/* Rate threshold: the config's `for` in units of 2^20 ns (~1.05 ms), and
	 * the bytes a window that long must see (rate x `for`). */
	__u64 window_bytes;
	__u32 window_units;
	__u32 pad2;
};

/* XDP metadata handed from lan_ingress (XDP) to lan_ingress_tc in front of the
 * packet, so the TC hook sets mark and priority without a second flow lookup. */
#define IL_META_MAGIC 0x494c4d31u /* "ILM1" */
struct il_meta {
	__u32 magic;
	__u32 mark;
	__u32 priority;
	__u32 flags; /* IL_META_F_* | l3 offset << 8 | IPv6 << 16 */
};

/* A TCP segment of a blocked flow: lan_ingress_tc answers it with a RST (XDP
 * cannot send it back reliably on every device: veth delivers XDP_TX frames only
 * to a peer that runs NAPI). */
#define IL_META_F_RESET 0x1

#endif
