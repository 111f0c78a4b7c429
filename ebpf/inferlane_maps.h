/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Maps shared by every program. Each program source includes this header; the
 * definitions are __weak so that build.rs can link all objects into one with
 * `bpftool gen object`, which merges same-named weak maps into a single map.
 * Sizes here are defaults; the daemon sets the flow table's from the config.
 */
#ifndef INFERLANE_MAPS_H
#define INFERLANE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "inferlane_structs.h"

/* Room for 127 LAN interfaces in both directions plus the "unregistered" slots. */
#define IL_MAX_IF_COUNTERS 256
#define IL_DEFAULT_FLOWS 262144
#define IL_MAX_RULES 16384
#define IL_MAX_DEST_PREFIXES 131072
#define IL_MAX_CLIENT_PREFIXES 65536
#define IL_MAX_FRAGS 8192

/* Interface counters, two levels: interfaces with ifindex below
 * IL_IF_ARRAY_IFINDEXES count into a per-CPU array slot (ifindex * 2 + direction),
 * one array access and no hashing, which is most of a router's interfaces; larger
 * ifindexes (hosts that churn veths) fall back to the hash below. */
#define IL_IF_ARRAY_IFINDEXES 1024

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IL_IF_ARRAY_IFINDEXES * 2);
	__type(key, __u32);
	__type(value, struct il_counters);
} if_counters_array SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, IL_MAX_IF_COUNTERS);
	__type(key, struct il_if_key);
	__type(value, struct il_counters);
} if_counters SEC(".maps") __weak;

/* The flow table. LRU: under pressure the least recently used flow makes room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, IL_DEFAULT_FLOWS);
	__type(key, struct il_flow_key);
	__type(value, struct il_flow);
} flows SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct il_flow_stats);
} flow_stats SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, IL_MAX_FRAGS);
	__type(key, struct il_frag_key);
	__type(value, struct il_frag_ports);
} frags SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct il_settings);
} settings SEC(".maps") __weak;

/* Rule maps, two copies: userspace fills the idle copy, then flips
 * settings.rule_set, so a packet sees either the old rules or the new, never a mix. */
#define IL_RULE_MAPS(N)                                                        \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_ARRAY);                              \
		__uint(max_entries, IL_MAX_RULES);                             \
		__type(key, __u32);                                            \
		__type(value, struct il_rule);                                 \
	} rules_##N SEC(".maps") __weak;                                       \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                           \
		__uint(max_entries, IL_MAX_DEST_PREFIXES);                     \
		__uint(map_flags, BPF_F_NO_PREALLOC);                          \
		__type(key, struct il_lpm_key);                                \
		__type(value, struct il_candidates);                           \
	} dests_##N SEC(".maps") __weak;                                       \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                           \
		__uint(max_entries, IL_MAX_CLIENT_PREFIXES);                   \
		__uint(map_flags, BPF_F_NO_PREALLOC);                          \
		__type(key, struct il_client_key);                             \
		__type(value, __u8);                                           \
	} clients_##N SEC(".maps") __weak;

/* Per rule set too: which providers each rule names, and what a flow to a known
 * provider gets when no rule matches (the class named like the catalog's default
 * class for it, if the config has one). */
#define IL_PROVIDER_MAPS(N)                                                    \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_HASH);                               \
		__uint(max_entries, 65536);                                    \
		__uint(map_flags, BPF_F_NO_PREALLOC);                          \
		__type(key, struct il_rule_provider_key);                      \
		__type(value, __u8);                                           \
	} rule_providers_##N SEC(".maps") __weak;                              \
	struct {                                                               \
		__uint(type, BPF_MAP_TYPE_ARRAY);                              \
		__uint(max_entries, IL_MAX_PROVIDERS);                         \
		__type(key, __u32);                                            \
		__type(value, struct il_rule);                                 \
	} provider_defaults_##N SEC(".maps") __weak;

IL_RULE_MAPS(0)
IL_RULE_MAPS(1)
IL_PROVIDER_MAPS(0)
IL_PROVIDER_MAPS(1)

/* Learned addresses (IPv4 mapped), written by the daemon from DNS answers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u8[16]);
	__type(value, struct il_addr_info);
} addr_providers SEC(".maps") __weak;

/* Provider names recognised in DNS answers by lan_egress (see il_dns_name). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct il_dns_name);
} dns_names SEC(".maps") __weak;

/* A DNS answer and its question name while lan_egress reads them. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct il_dns_scratch);
} dns_scratch SEC(".maps") __weak;

/* Scratch space for building a flow entry: the BPF stack is 512 bytes for the
 * whole call chain, and an il_flow is 112. Per CPU, used within one packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct il_flow);
} flow_scratch SEC(".maps") __weak;

/* Userspace verdicts for pending flows (SNI, QUIC), picked up by lan_ingress. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct il_flow_key);
	__type(value, struct il_verdict);
} flow_verdicts SEC(".maps") __weak;

/* Uplink steering: per class, per uplink state, per uplink counters. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct il_steer);
} class_uplinks SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IL_MAX_UPLINKS + 1);
	__type(key, __u32);
	__type(value, struct il_uplink_state);
} uplink_state SEC(".maps") __weak;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IL_MAX_UPLINKS + 1);
	__type(key, __u32);
	__type(value, struct il_uplink_counters);
} uplink_counters SEC(".maps") __weak;

/* Bulk demotion thresholds and targets, per class id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct il_demote);
} class_demote SEC(".maps") __weak;

/* The layout version of every map, written by the daemon when it creates the
 * maps: a hash of inferlane_structs.h. A restart adopts pinned maps only when it
 * matches (sizes alone miss a reordered struct). No program reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} abi_version SEC(".maps") __weak;

/* Packets for userspace: DNS answers now, first segments of unknown flows later. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} punts SEC(".maps") __weak;

#endif
