/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Maps shared by every program. Each program source includes this header; the
 * definitions are __weak so that build.rs can link all objects into one with
 * `bpftool gen object`, which merges same-named weak maps into a single map.
 */
#ifndef INFERLANE_MAPS_H
#define INFERLANE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "inferlane_structs.h"

/* Room for 127 LAN interfaces in both directions plus the "unregistered" slots. */
#define IL_MAX_IF_COUNTERS 256

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, IL_MAX_IF_COUNTERS);
	__type(key, struct il_if_key);
	__type(value, struct il_counters);
} if_counters SEC(".maps") __weak;

#endif
