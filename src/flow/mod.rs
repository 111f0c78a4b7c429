//! The flow lifecycle: the daemon scans the flow table, decides which flows have
//! ended and why, reports them (flow export), and deletes them from the table,
//! in that order, so that no flow leaves the table unreported.
//!
//! Why flows are reported (IPFIX flowEndReason):
//! - TCP flows that saw FIN or RST, once quiet for a short linger (the last ACK
//!   and retransmissions still count): end detected, entry deleted;
//! - flows quiet for the inactive timeout: idle; the entry stays until the
//!   retention time (the flow keeps its class and, above all, its uplink if it
//!   resumes: a new entry could be steered elsewhere and strand its NAT);
//! - flows active longer than the active timeout: a record of what they did so
//!   far; the flow goes on;
//! - table pressure (fill above the high-water mark): the longest-idle flows are
//!   reported and deleted down to the low-water mark, before the kernel's LRU
//!   would evict anything silently (lack of resources); flows the kernel evicted
//!   anyway are reported from the last scan's figures and counted;
//! - stop: everything still unreported (forced end).
//!
//! Memory: a scan takes the table a batch at a time ([`Pass::chunk`]); the
//! caller exports and deletes each batch's outcome before reading the next, so
//! a scan holds one batch, not the table. What stays per live flow is one
//! [`FlowTracker`] entry: the key, the counters reported and last seen, two
//! times and the few attributes a record needs ([`FlowAttrs`]): 124 bytes a
//! slot with an IPv4 key and its hash (148 for IPv6), at most 80 % of slots in
//! use ([`table`]), instead of a copy of the kernel's entry in a
//! general-purpose map.
//!
//! Pure: times and the table's contents come in, decisions go out.

mod table;
pub mod would_block;

use std::collections::BinaryHeap;
use std::time::Duration;

use crate::bpf::abi::{self, Flow, FlowKey};
use table::{Hashed, Tracked};

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// Why a flow record ends: IPFIX flowEndReason (RFC 7011 IE 136), shared with
/// the encoders.
pub use crate::export::EndReason;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub active: Duration,
    pub inactive: Duration,
    /// After FIN or RST, how long a TCP flow stays before it is reported.
    pub tcp_linger: Duration,
    /// Quiet time after which an entry is deleted: TCP (not ended) and the rest.
    pub retention_tcp: Duration,
    pub retention_other: Duration,
    /// Table fill (fraction of its size) that starts pressure eviction, and
    /// where it stops.
    pub high_water: f64,
    pub low_water: f64,
}

/// The shortest wait between two scans of the flow table.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// A scan waits this many times its own length before the next: the scans
/// keep at most 1/SCAN_DUTY of a core busy.
const SCAN_DUTY: u32 = 50;

impl Timeouts {
    /// The delay before the next scan, after one that took `took`. A scan
    /// reads the whole table: in the kernel's batch lookup alone about 250 ns
    /// an entry on the lab VM (perf, bench_export), so at 100k flows a
    /// scan a second kept 4-5 % of a core busy whatever the traffic. Big
    /// tables are scanned less often: SCAN_DUTY times the last scan's length,
    /// at least [`SCAN_INTERVAL`], at most half the shortest timeout a scan
    /// enforces (so an end is reported at most that much late); and every
    /// [`SCAN_INTERVAL`] while the table is above its high-water mark
    /// (`pressed`), where pressure eviction must keep up with a flood of new
    /// flows.
    pub fn next_scan(&self, took: Duration, pressed: bool) -> Duration {
        if pressed {
            return SCAN_INTERVAL;
        }
        let cap = self.active.min(self.inactive).min(self.tcp_linger) / 2;
        (took * SCAN_DUTY).min(cap).max(SCAN_INTERVAL)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            active: Duration::from_secs(60),
            inactive: Duration::from_secs(15),
            tcp_linger: Duration::from_secs(5),
            // Conntrack's defaults: established TCP 5 days (we keep 2 h: a
            // resumed idle TCP flow is rare, its entry is not), UDP stream 120 s.
            retention_tcp: Duration::from_secs(2 * 3600),
            retention_other: Duration::from_secs(180),
            high_water: 0.90,
            low_water: 0.80,
        }
    }
}

/// Counters of one record (one period of one flow), both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub up_packets: u64,
    pub up_bytes: u64,
    pub down_packets: u64,
    pub down_bytes: u64,
}

impl Delta {
    fn of(f: &Flow) -> Delta {
        Delta { up_packets: f.up_packets, up_bytes: f.up_bytes, down_packets: f.down_packets, down_bytes: f.down_bytes }
    }

    fn minus(&self, base: &Delta) -> Option<Delta> {
        Some(Delta {
            up_packets: self.up_packets.checked_sub(base.up_packets)?,
            up_bytes: self.up_bytes.checked_sub(base.up_bytes)?,
            down_packets: self.down_packets.checked_sub(base.down_packets)?,
            down_bytes: self.down_bytes.checked_sub(base.down_bytes)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.up_packets == 0 && self.down_packets == 0
    }
}

/// What a flow record carries of the flow entry besides counters and times:
/// all the exporter reads, in 22 bytes instead of the entry's 128 (2-byte
/// aligned, so that the tracker's entry has no padding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct FlowAttrs {
    /// The LAN interface the client is behind.
    pub ifindex: u32,
    /// Provider-side handshake round trip and time to first byte, µs (0:
    /// unknown), capped at u32::MAX.
    pub handshake_rtt_us: u32,
    pub ttfb_us: u32,
    pub provider_id: u16,
    pub class_id: u8,
    /// bpf::abi::SRC_*.
    pub source: u8,
    /// The DSCP the upload was forwarded with: the one written, or the client's own.
    pub up_dscp: u8,
    /// The DSCP lan_egress last saw on the download (forwarded as it came).
    pub dscp_down: u8,
    /// Uplink index + 1 (0: main table).
    pub uplink: u8,
    pub tcp_flags_up: u8,
    pub tcp_flags_down: u8,
    pub streaming: bool,
}

impl FlowAttrs {
    pub fn of(f: &Flow) -> FlowAttrs {
        let us = |v: Option<u64>| v.map_or(0, |v| v.min(u64::from(u32::MAX)) as u32);
        FlowAttrs {
            ifindex: f.ifindex,
            handshake_rtt_us: us(crate::control::flows::span_us(f.syn_ns, f.synack_ns)),
            ttfb_us: us(crate::control::flows::span_us(f.first_up_payload_ns, f.first_down_payload_ns)),
            provider_id: f.provider_id,
            class_id: f.class_id,
            source: f.source,
            up_dscp: if f.dscp == abi::DSCP_KEEP { f.dscp_seen } else { f.dscp },
            dscp_down: f.dscp_down,
            uplink: f.uplink,
            tcp_flags_up: f.tcp_flags_up,
            tcp_flags_down: f.tcp_flags_down,
            streaming: crate::control::flows::is_streaming(f),
        }
    }
}

/// One flow record to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub key: FlowKey,
    /// What the record says of the flow besides counters (as last read).
    pub attrs: FlowAttrs,
    pub delta: Delta,
    /// CLOCK_MONOTONIC ns of the period's first and last packet (last_ns is the
    /// coarse clock: a few ms of precision).
    pub start_ns: u64,
    pub end_ns: u64,
    pub reason: EndReason,
}

/// What one scan decided (all of it at once: see [`FlowTracker::scan`]).
#[derive(Debug, Default)]
pub struct Scan {
    pub reports: Vec<Report>,
    /// Entries to delete from the table once the reports are out.
    pub delete: Vec<FlowKey>,
    /// Flows that vanished from the table without us (the kernel's LRU evicted
    /// them under pressure): reported from the previous scan's figures.
    pub vanished: u64,
}

/// What the tracker keeps of a live flow between scans: 104 bytes; with the
/// key and a 4-byte hash, 124 a slot for IPv4 flows, 148 for IPv6.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Counters already reported.
    base: Delta,
    /// Counters at the last scan that saw the flow.
    last: Delta,
    /// Start of the period not yet reported.
    start_ns: u64,
    /// The flow's last packet, as of that scan.
    last_ns: u64,
    attrs: FlowAttrs,
    /// The last scan that saw the flow (modulo 2^16): after a scan, entries
    /// marked otherwise were not in the table any more. (Every scan that
    /// completes removes those, so the number never comes round to them.)
    mark: u16,
}

/// What a handover carries per flow: the counters already reported and the
/// start of the period not yet reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub key: FlowKey,
    pub base: Delta,
    pub start_ns: u64,
}

const _: () = assert!(std::mem::size_of::<FlowAttrs>() == 22);
const _: () = assert!(std::mem::size_of::<Seen>() == 104);

impl Seen {
    fn report(&self, key: FlowKey, end_ns: u64, reason: EndReason) -> Option<Report> {
        let delta = self.last.minus(&self.base).filter(|d| !d.is_empty())?;
        Some(Report { key, attrs: self.attrs, delta, start_ns: self.start_ns, end_ns, reason })
    }
}

/// Scans whose tracker is at most an eighth full before its table is shrunk
/// (memory goes back after a burst of flows, not between two bursts).
const SHRINK_AFTER_SCANS: u32 = 300;

/// Remembers, per live flow, what was reported already.
#[derive(Default)]
pub struct FlowTracker {
    t: Timeouts,
    seen: Tracked<Seen>,
    /// Number of the current (or last) scan, modulo 2^16.
    epoch: u16,
    /// Scans in a row that found the map mostly empty.
    small_scans: u32,
    /// Totals since start, for status and metrics.
    pub reported: u64,
    pub deleted: u64,
    pub vanished: u64,
    pub pressure_evictions: u64,
}

/// Reports and deletions handed out at a time by [`Pass::finish`].
const BATCH: usize = 4096;
/// How many keys ahead of its lookup a scan prefetches a key's lines: enough
/// to cover a memory access (~100 ns here) with the work of the keys between.
const PREFETCH_AHEAD: usize = 8;

/// The pressure order: longest idle first, ties broken by the key (ports,
/// addresses, protocol; family and padding make it the whole key).
type Age = (u64, u16, u16, [u8; 16], [u8; 16], u8, u8, u16);

fn age(last_ns: u64, k: &FlowKey) -> Age {
    (last_ns, k.client_port, k.remote_port, k.client, k.remote, k.proto, k.family, k.pad)
}

fn key_of(a: &Age) -> FlowKey {
    let &(_, client_port, remote_port, client, remote, proto, family, pad) = a;
    FlowKey { client, remote, client_port, remote_port, proto, family, pad }
}

/// One scan in progress: feed it the table a batch at a time with
/// [`Pass::chunk`], take `reports` (export them) and then `delete` (delete them
/// from the table) after each, and end with [`Pass::finish`].
pub struct Pass<'a> {
    tracker: &'a mut FlowTracker,
    now_ns: u64,
    /// Records to export, then entries to delete, from the chunks so far.
    pub reports: Vec<Report>,
    pub delete: Vec<FlowKey>,
    /// Entries the scan saw, and of them, deleted.
    entries: usize,
    deleted: usize,
}

impl FlowTracker {
    pub fn new(t: Timeouts) -> FlowTracker {
        FlowTracker { t, ..FlowTracker::default() }
    }

    /// New timeouts (a reload); they apply from the next scan.
    pub fn set_timeouts(&mut self, t: Timeouts) {
        self.t = t;
    }

    pub fn timeouts(&self) -> Timeouts {
        self.t
    }

    /// Flows tracked now (seen by the last scan).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Starts a scan at `now_ns` (CLOCK_MONOTONIC).
    pub fn pass(&mut self, now_ns: u64) -> Pass<'_> {
        self.epoch = self.epoch.wrapping_add(1);
        Pass { tracker: self, now_ns, reports: Vec::new(), delete: Vec::new(), entries: 0, deleted: 0 }
    }

    /// One pass over the table's contents `flows` at `now_ns`, all at once (the
    /// daemon uses [`FlowTracker::pass`], a batch at a time).
    pub fn scan(&mut self, now_ns: u64, flows: &[(FlowKey, Flow)], table_size: u32) -> Scan {
        self.scan_in_chunks(now_ns, flows, table_size, flows.len().max(1))
    }

    /// As [`FlowTracker::scan`], feeding the pass `chunk` flows at a time and
    /// taking each batch's reports and deletions out before the next, as the
    /// daemon does.
    fn scan_in_chunks(&mut self, now_ns: u64, flows: &[(FlowKey, Flow)], table_size: u32, chunk: usize) -> Scan {
        let mut out = Scan::default();
        let mut pass = self.pass(now_ns);
        for c in flows.chunks(chunk) {
            let (keys, values): (Vec<FlowKey>, Vec<Flow>) = c.iter().copied().unzip();
            pass.chunk(&keys, &values);
            out.reports.append(&mut pass.reports);
            out.delete.append(&mut pass.delete);
        }
        out.vanished = pass.finish(table_size, |r, d| {
            out.reports.append(r);
            out.delete.append(d);
        });
        out
    }

    /// At stop: everything not yet reported, as forced ends (all at once).
    pub fn finish(&mut self, flows: &[(FlowKey, Flow)]) -> Vec<Report> {
        let mut out = Vec::new();
        for (key, f) in flows {
            self.finish_one(key, f, &mut out);
        }
        self.clear();
        out
    }

    /// At stop, one batch of the table: what is not yet reported, as forced
    /// ends, added to `out`. [`FlowTracker::clear`] after the last batch.
    pub fn finish_chunk(&mut self, keys: &[FlowKey], flows: &[Flow], out: &mut Vec<Report>) {
        for (key, f) in keys.iter().zip(flows) {
            self.finish_one(key, f, out);
        }
    }

    fn finish_one(&mut self, key: &FlowKey, f: &Flow, out: &mut Vec<Report>) {
        let seen = self.seen.get(key);
        let base = seen.map(|s| s.base).unwrap_or_default();
        let start_ns = seen.map_or(f.first_ns, |s| s.start_ns);
        let delta = Delta::of(f).minus(&base).unwrap_or_else(|| Delta::of(f));
        if !delta.is_empty() {
            out.push(Report { key: *key, attrs: FlowAttrs::of(f), delta, start_ns, end_ns: f.last_ns.max(start_ns), reason: EndReason::Forced });
            self.reported += 1;
        }
    }

    /// Forget every flow (after the stop's forced ends).
    pub fn clear(&mut self) {
        self.seen.clear();
    }

    /// Handover: what was reported of each live flow, for the successor.
    pub fn carry(&self) -> Vec<Carried> {
        self.seen.iter().map(|(key, s)| Carried { key, base: s.base, start_ns: s.start_ns }).collect()
    }

    /// Successor, one batch of the adopted table: takes over what the
    /// predecessor reported (`carried`, by key) for the flows in it, so that no
    /// period is reported twice. Carried flows no batch holds are dropped (their
    /// last period is lost: the kernel evicted them while no daemon scanned).
    /// Returns how many this batch took over.
    pub fn adopt_chunk(&mut self, carried: &std::collections::HashMap<FlowKey, Carried>, keys: &[FlowKey], flows: &[Flow]) -> usize {
        let epoch = self.epoch;
        let mut n = 0;
        for (key, f) in keys.iter().zip(flows) {
            let Some(c) = carried.get(key) else { continue };
            let last = Delta::of(f);
            *self.seen.get_or_insert_with(key, Seen::default) = Seen {
                base: c.base,
                last,
                start_ns: c.start_ns,
                last_ns: f.last_ns,
                attrs: FlowAttrs::of(f),
                mark: epoch,
            };
            n += 1;
        }
        n
    }

    /// [`FlowTracker::adopt_chunk`] over a whole table at once.
    pub fn adopt(&mut self, carried: Vec<Carried>, flows: &[(FlowKey, Flow)]) -> usize {
        let carried: std::collections::HashMap<FlowKey, Carried> = carried.into_iter().map(|c| (c.key, c)).collect();
        let (keys, values): (Vec<FlowKey>, Vec<Flow>) = flows.iter().copied().unzip();
        self.adopt_chunk(&carried, &keys, &values)
    }
}

impl Pass<'_> {
    /// One batch of the table (`keys[i]` holds `flows[i]`).
    pub fn chunk(&mut self, keys: &[FlowKey], flows: &[Flow]) {
        let t = self.tracker.t;
        let epoch = self.tracker.epoch;
        let now_ns = self.now_ns;
        let ns = |d: Duration| d.as_nanos() as u64;
        let reported_before = self.reports.len();
        // Hashes first, then lookups with the tracker's lines requested
        // PREFETCH_AHEAD keys early: the kernel hands the table in its own
        // order, so every lookup lands on a cold line (perf, bench_export at
        // 100k flows: lookups were 30 % of the daemon's CPU).
        let hashed: Vec<Hashed> = keys.iter().map(|k| self.tracker.seen.hashed(k)).collect();
        for h in hashed.iter().take(PREFETCH_AHEAD) {
            self.tracker.seen.prefetch(h);
        }
        for (i, (key, f)) in keys.iter().zip(flows).enumerate() {
            if let Some(ahead) = hashed.get(i + PREFETCH_AHEAD) {
                self.tracker.seen.prefetch(ahead);
            }
            self.entries += 1;
            let now_counters = Delta::of(f);
            let seen = self.tracker.seen.get_or_insert_hashed(key, &hashed[i], || Seen {
                base: Delta::default(),
                last: now_counters,
                start_ns: f.first_ns,
                last_ns: f.last_ns,
                attrs: FlowAttrs::default(),
                mark: epoch,
            });
            // Counters went backwards: the entry was deleted and made anew
            // between two scans. Start over.
            let delta = match now_counters.minus(&seen.base) {
                Some(d) => d,
                None => {
                    seen.base = Delta::default();
                    seen.start_ns = f.first_ns;
                    now_counters
                }
            };
            seen.last = now_counters;
            seen.last_ns = f.last_ns;
            seen.attrs = FlowAttrs::of(f);
            seen.mark = epoch;
            let idle = now_ns.saturating_sub(f.last_ns);
            let tcp = key.proto == libc::IPPROTO_TCP as u8;
            let ended_tcp = tcp && (f.tcp_flags_up | f.tcp_flags_down) & (TCP_FIN | TCP_RST) != 0;
            let retention = if tcp { t.retention_tcp } else { t.retention_other };
            let reports = &mut self.reports;
            let mut report = |reason: EndReason, seen: &mut Seen, delta: Delta| {
                if !delta.is_empty() {
                    reports.push(Report {
                        key: *key,
                        attrs: seen.attrs,
                        delta,
                        start_ns: seen.start_ns,
                        end_ns: f.last_ns.max(seen.start_ns),
                        reason,
                    });
                }
                seen.base = now_counters;
                // The next period starts with its first packet; the best we
                // know is that it comes after this one's last.
                seen.start_ns = f.last_ns;
            };
            let gone = if ended_tcp && idle >= ns(t.tcp_linger) {
                report(EndReason::EndDetected, seen, delta);
                true
            } else if idle >= ns(retention) {
                report(EndReason::Idle, seen, delta);
                true
            } else {
                if idle >= ns(t.inactive) {
                    report(EndReason::Idle, seen, delta);
                } else if !delta.is_empty() && now_ns.saturating_sub(seen.start_ns) >= ns(t.active) {
                    report(EndReason::Active, seen, delta);
                }
                false
            };
            if gone {
                self.tracker.seen.remove(key);
                self.delete.push(*key);
                self.deleted += 1;
            }
        }
        self.tracker.reported += (self.reports.len() - reported_before) as u64;
    }

    /// After the last batch, before [`Pass::finish`]: whether the table holds
    /// more than its high-water mark of `table_size`.
    pub fn pressed(&self, table_size: u32) -> bool {
        self.entries.saturating_sub(self.deleted) > (f64::from(table_size) * self.tracker.t.high_water) as usize
    }

    /// After the last batch: pressure eviction (the longest-idle flows, reported
    /// first), then the flows that vanished without us since the last scan
    /// (reported from its figures). Hands `out` the reports and the keys to
    /// delete in batches of at most [`BATCH`] (export the reports, then delete
    /// the keys; `out` may leave the vectors as they are). Returns how many flows
    /// vanished.
    pub fn finish(self, table_size: u32, mut out: impl FnMut(&mut Vec<Report>, &mut Vec<FlowKey>)) -> u64 {
        let Pass { tracker, mut reports, mut delete, entries, deleted, .. } = self;
        let epoch = tracker.epoch;
        let mut flush = |reports: &mut Vec<Report>, delete: &mut Vec<FlowKey>| {
            if !reports.is_empty() || !delete.is_empty() {
                out(reports, delete);
                reports.clear();
                delete.clear();
            }
        };
        flush(&mut reports, &mut delete);
        let mut reported = 0u64;
        let mut evicted = 0u64;
        let live = entries.saturating_sub(deleted);
        let high = (f64::from(table_size) * tracker.t.high_water) as usize;
        if live > high {
            let target = (f64::from(table_size) * tracker.t.low_water) as usize;
            let n = live - target;
            // The n oldest, with a heap of n (not a sorted copy of the table).
            let mut heap: BinaryHeap<Age> = BinaryHeap::with_capacity(n + 1);
            for (k, s) in tracker.seen.iter().filter(|(_, s)| s.mark == epoch) {
                let a = age(s.last_ns, &k);
                if heap.len() < n {
                    heap.push(a);
                } else if heap.peek().is_some_and(|top| a < *top) {
                    heap.pop();
                    heap.push(a);
                }
            }
            for a in heap.into_sorted_vec() {
                let key = key_of(&a);
                let seen = tracker.seen.remove(&key).expect("ranked above");
                if let Some(r) = seen.report(key, seen.last_ns, EndReason::LackOfResources) {
                    reports.push(r);
                    reported += 1;
                }
                delete.push(key);
                evicted += 1;
                if delete.len() >= BATCH {
                    flush(&mut reports, &mut delete);
                }
            }
            flush(&mut reports, &mut delete);
        }
        // Vanished since the last scan, without us: the kernel evicted them.
        let mut vanished = 0u64;
        loop {
            let gone = tracker.seen.keys_where(BATCH, |s| s.mark != epoch);
            if gone.is_empty() {
                break;
            }
            for key in &gone {
                let seen = tracker.seen.remove(key).expect("listed above");
                if let Some(r) = seen.report(*key, seen.last_ns, EndReason::LackOfResources) {
                    reports.push(r);
                    reported += 1;
                }
                vanished += 1;
            }
            flush(&mut reports, &mut delete);
        }
        tracker.pressure_evictions += evicted;
        tracker.vanished += vanished;
        tracker.reported += reported;
        tracker.deleted += deleted as u64 + evicted;
        tracker.shrink_if_idle();
        vanished
    }
}

impl FlowTracker {
    /// Gives the map's memory back once it has been mostly empty for a while
    /// (a hash map keeps its largest size otherwise): not between two bursts of
    /// flows, where shrinking and growing again would cost more at the peak.
    fn shrink_if_idle(&mut self) {
        if self.seen.mostly_empty() {
            self.small_scans += 1;
            if self.small_scans >= SHRINK_AFTER_SCANS {
                self.seen.shrink();
                self.small_scans = 0;
            }
        } else {
            self.small_scans = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(port: u16, proto: u8) -> FlowKey {
        FlowKey { client: [0; 16], remote: [0; 16], client_port: port.to_be(), remote_port: 443u16.to_be(), proto, family: 4, pad: 0 }
    }

    /// A real IPv4 key (addresses IPv4-mapped), as the datapath makes them.
    fn key_v4(port: u16, proto: u8) -> FlowKey {
        FlowKey {
            client: abi::addr_bytes(std::net::Ipv4Addr::new(10, 0, (port >> 8) as u8, port as u8).into()),
            remote: abi::addr_bytes(std::net::Ipv4Addr::new(192, 0, 2, 10).into()),
            family: 4,
            ..key(port, proto)
        }
    }

    fn flow(first: u64, last: u64, up: u64, down: u64) -> Flow {
        Flow { first_ns: first, last_ns: last, up_packets: up, up_bytes: up * 100, down_packets: down, down_bytes: down * 1000, ..Flow::default() }
    }

    fn t() -> Timeouts {
        Timeouts { active: Duration::from_secs(60), inactive: Duration::from_secs(15), tcp_linger: Duration::from_secs(2), ..Timeouts::default() }
    }

    #[test]
    fn big_tables_are_scanned_less_often_but_never_past_half_a_timeout() {
        let t = Timeouts::default(); // inactive 15 s, linger 5 s: cap 2.5 s
        let ms = Duration::from_millis;
        // A small table: every second.
        assert_eq!(t.next_scan(ms(3), false), SCAN_INTERVAL);
        // 30 ms: 50 times that.
        assert_eq!(t.next_scan(ms(30), false), ms(1500));
        // 100 ms would be 5 s: capped at half the 5 s linger.
        assert_eq!(t.next_scan(ms(100), false), ms(2500));
        // Above the high-water mark: every second, however long the scan.
        assert_eq!(t.next_scan(ms(100), true), SCAN_INTERVAL);
        // Short timeouts bound it below the linger's.
        let short = Timeouts { inactive: ms(1200), ..t };
        assert_eq!(short.next_scan(ms(100), false), SCAN_INTERVAL);
        let tight = Timeouts { active: ms(3000), inactive: ms(3000), ..t };
        assert_eq!(tight.next_scan(ms(100), false), ms(1500));
    }

    #[test]
    fn active_flows_report_periods_that_add_up() {
        let mut tr = FlowTracker::new(t());
        let k = key(1000, 17);
        let mut total = Delta::default();
        // A flow sending 10 packets a second for 200 s, scanned every second.
        for sec in 1..=200u64 {
            let f = flow(0, sec * S, sec * 10, sec * 5);
            let scan = tr.scan(sec * S, &[(k, f)], 1024);
            assert!(scan.delete.is_empty());
            for r in scan.reports {
                assert_eq!(r.reason, EndReason::Active);
                total.up_packets += r.delta.up_packets;
                total.down_bytes += r.delta.down_bytes;
            }
        }
        // Three full active periods reported (60, 120, 180 s); the rest at stop.
        assert_eq!(total.up_packets, 1800);
        let rest = tr.finish(&[(k, flow(0, 200 * S, 2000, 1000))]);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].reason, EndReason::Forced);
        assert_eq!(total.up_packets + rest[0].delta.up_packets, 2000, "every packet reported exactly once");
        assert_eq!(total.down_bytes + rest[0].delta.down_bytes, 1_000_000);
    }

    #[test]
    fn tcp_end_after_linger_and_idle_udp_kept_until_retention() {
        let mut tr = FlowTracker::new(t());
        let tcp = key(1, 6);
        let udp = key(2, 17);
        let mut fin = flow(0, 10 * S, 8, 6);
        fin.tcp_flags_down = TCP_FIN | 0x10;
        let u = flow(0, 10 * S, 3, 3);
        // One second after the FIN: still lingering.
        let scan = tr.scan(11 * S, &[(tcp, fin), (udp, u)], 1024);
        assert!(scan.reports.is_empty() && scan.delete.is_empty());
        let scan = tr.scan(12 * S, &[(tcp, fin), (udp, u)], 1024);
        assert_eq!(scan.delete, vec![tcp]);
        assert_eq!((scan.reports[0].reason, scan.reports[0].delta.up_packets), (EndReason::EndDetected, 8));
        // UDP idle 15 s: reported, kept.
        let scan = tr.scan(25 * S, &[(udp, u)], 1024);
        assert_eq!(scan.reports.len(), 1);
        assert_eq!(scan.reports[0].reason, EndReason::Idle);
        assert!(scan.delete.is_empty(), "an idle flow keeps its entry (and its uplink)");
        // Resumes: the next period is reported once, not the old counters again.
        let resumed = flow(0, 40 * S, 5, 3);
        assert!(tr.scan(41 * S, &[(udp, resumed)], 1024).reports.is_empty());
        let scan = tr.scan(56 * S, &[(udp, resumed)], 1024);
        assert_eq!(scan.reports[0].delta.up_packets, 2);
        // Deleted after the retention, with nothing left to report.
        let scan = tr.scan(40 * S + 180 * S, &[(udp, resumed)], 1024);
        assert_eq!((scan.reports.len(), scan.delete.clone()), (0, vec![udp]));
    }

    #[test]
    fn pressure_evicts_the_longest_idle_after_reporting_them() {
        let mut tr = FlowTracker::new(t());
        // 95 flows in a table of 100: above 90 %, down to 80 %.
        let flows: Vec<(FlowKey, Flow)> = (0..95u16).map(|i| (key_v4(i, 17), flow(0, S + u64::from(i) * 1000, 1, 1))).collect();
        let scan = tr.scan(2 * S, &flows, 100);
        assert_eq!(scan.delete.len(), 15);
        let deleted: Vec<u16> = scan.delete.iter().map(|k| u16::from_be(k.client_port)).collect();
        assert_eq!(deleted, (0..15).collect::<Vec<_>>(), "the longest idle go first");
        assert_eq!(scan.delete, (0..15).map(|i| key_v4(i, 17)).collect::<Vec<_>>(), "keys given back byte for byte");
        assert_eq!(scan.reports.len(), 15);
        assert!(scan.reports.iter().all(|r| r.reason == EndReason::LackOfResources));
        assert_eq!(tr.pressure_evictions, 15);
    }

    #[test]
    fn a_handover_carries_what_was_reported_so_nothing_is_reported_twice() {
        let mut old = FlowTracker::new(t());
        let k = key(7, 17);
        let gone = key(8, 17);
        // 70 s of traffic: one active period (60 s) reported by the old daemon.
        let mut reported = 0;
        for sec in 1..=70u64 {
            let scan = old.scan(sec * S, &[(k, flow(0, sec * S, sec * 10, 0)), (gone, flow(0, S, 1, 0))], 1024);
            reported += scan.reports.iter().filter(|r| r.key == k).map(|r| r.delta.up_packets).sum::<u64>();
        }
        assert_eq!(reported, 600);
        let carried = old.carry();
        // The successor finds the flow grown meanwhile; `gone` was evicted.
        let mut new = FlowTracker::new(t());
        assert_eq!(new.adopt(carried, &[(k, flow(0, 75 * S, 750, 0))]), 1);
        let rest = new.finish(&[(k, flow(0, 75 * S, 750, 0))]);
        assert_eq!(rest.len(), 1);
        assert_eq!(reported + rest[0].delta.up_packets, 750, "every packet reported exactly once across the handover");
        assert_eq!(rest[0].start_ns, 60 * S, "the unreported period starts where the old daemon stopped");
    }

    #[test]
    fn flows_the_kernel_evicted_are_reported_from_the_last_scan() {
        let mut tr = FlowTracker::new(t());
        let a = key(1, 17);
        let b = key(2, 17);
        tr.scan(S, &[(a, flow(0, S, 4, 4)), (b, flow(0, S, 2, 0))], 1024);
        let scan = tr.scan(2 * S, &[(b, flow(0, 2 * S, 3, 0))], 1024);
        assert_eq!(scan.vanished, 1);
        assert_eq!(scan.reports.len(), 1);
        assert_eq!((scan.reports[0].key, scan.reports[0].delta.up_packets, scan.reports[0].reason), (a, 4, EndReason::LackOfResources));
        // A flow deleted and recreated between scans starts over.
        let scan = tr.scan(3 * S, &[(b, flow(3 * S, 3 * S, 1, 0))], 1024);
        assert!(scan.reports.is_empty());
        let rest = tr.finish(&[(b, flow(3 * S, 3 * S, 1, 0))]);
        assert_eq!(rest[0].delta.up_packets, 1);
    }

    #[test]
    fn a_scan_in_batches_decides_as_one_over_the_whole_table() {
        let (mut whole, mut batched) = (FlowTracker::new(t()), FlowTracker::new(t()));
        // 300 flows in a table of 300: ended TCP, idle UDP, active, and pressure.
        let table = |sec: u64| -> Vec<(FlowKey, Flow)> {
            (0..300u16)
                .filter(|i| sec < 3 || i % 7 != 0) // every 7th vanishes after 2 s
                .map(|i| {
                    let mut f = flow(0, (sec.saturating_sub(u64::from(i % 40))) * S, u64::from(i) + sec, sec);
                    if i % 5 == 0 {
                        f.tcp_flags_up = TCP_FIN;
                    }
                    // Both kinds of key the tracker keeps: IPv4 (short) and others.
                    let k = if i % 3 == 0 { key(i, if i % 2 == 0 { 6 } else { 17 }) } else { key_v4(i, if i % 2 == 0 { 6 } else { 17 }) };
                    (k, f)
                })
                .collect()
        };
        for sec in [1, 2, 20, 21, 90, 200] {
            let mut a = whole.scan(sec * S, &table(sec), 300);
            let mut b = batched.scan_in_chunks(sec * S, &table(sec), 300, 16);
            // Vanished flows come in the tracker's (hash) order.
            for s in [&mut a, &mut b] {
                s.reports.sort_by_key(|r| (r.key.client_port, r.key.proto, r.reason as u8));
                s.delete.sort_by_key(|k| (k.client_port, k.proto));
            }
            assert_eq!((&a.reports, &a.delete, a.vanished), (&b.reports, &b.delete, b.vanished), "at {sec} s");
        }
        assert!(whole.pressure_evictions > 0 && whole.vanished > 0, "the table exercised pressure and eviction");
        assert_eq!(
            (whole.reported, whole.deleted, whole.vanished, whole.pressure_evictions, whole.len()),
            (batched.reported, batched.deleted, batched.vanished, batched.pressure_evictions, batched.len())
        );
    }

    #[test]
    fn a_scan_cut_short_leaves_the_next_one_right() {
        let mut tr = FlowTracker::new(t());
        let (a, b) = (key(1, 17), key(2, 17));
        tr.scan(S, &[(a, flow(0, S, 1, 0)), (b, flow(0, S, 1, 0))], 1024);
        // A walk that failed after seeing only `a`: never finished.
        tr.pass(2 * S).chunk(&[a], &[flow(0, 2 * S, 2, 0)]);
        // The next full scan finds only `a`: `b` vanished and is reported once.
        let scan = tr.scan(3 * S, &[(a, flow(0, 3 * S, 3, 0))], 1024);
        assert_eq!(scan.vanished, 1);
        assert_eq!(scan.reports.iter().map(|r| (r.key, r.delta.up_packets)).collect::<Vec<_>>(), vec![(b, 1)]);
    }
}
