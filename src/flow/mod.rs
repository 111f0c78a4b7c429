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
//! Pure: times and the table's contents come in, decisions go out.

pub mod would_block;

use std::collections::HashMap;
use std::time::Duration;

use crate::bpf::abi::{Flow, FlowKey};

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

/// One flow record to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub key: FlowKey,
    /// The flow entry as last read (class, provider, flags, timing).
    pub flow: Flow,
    pub delta: Delta,
    /// CLOCK_MONOTONIC ns of the period's first and last packet (last_ns is the
    /// coarse clock: a few ms of precision).
    pub start_ns: u64,
    pub end_ns: u64,
    pub reason: EndReason,
}

/// What one scan decided.
#[derive(Debug, Default)]
pub struct Scan {
    pub reports: Vec<Report>,
    /// Entries to delete from the table once the reports are out.
    pub delete: Vec<FlowKey>,
    /// Flows that vanished from the table without us (the kernel's LRU evicted
    /// them under pressure): reported from the previous scan's figures.
    pub vanished: u64,
}

struct Seen {
    /// Counters already reported.
    base: Delta,
    /// Start of the period not yet reported.
    start_ns: u64,
    last: Flow,
}

/// What a handover carries per flow: the counters already reported and the
/// start of the period not yet reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub key: FlowKey,
    pub base: Delta,
    pub start_ns: u64,
}

/// Remembers, per live flow, what was reported already.
#[derive(Default)]
pub struct FlowTracker {
    t: Timeouts,
    seen: HashMap<FlowKey, Seen>,
    /// Totals since start, for status and metrics.
    pub reported: u64,
    pub deleted: u64,
    pub vanished: u64,
    pub pressure_evictions: u64,
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

    /// One pass over the table's contents `flows` at `now_ns` (CLOCK_MONOTONIC).
    pub fn scan(&mut self, now_ns: u64, flows: &[(FlowKey, Flow)], table_size: u32) -> Scan {
        let mut out = Scan::default();
        let ns = |d: Duration| d.as_nanos() as u64;
        let mut present: std::collections::HashSet<FlowKey> = std::collections::HashSet::with_capacity(flows.len());
        let mut candidates: Vec<(u64, FlowKey)> = Vec::new();
        for (key, f) in flows {
            present.insert(*key);
            let now_counters = Delta::of(f);
            let seen = self.seen.entry(*key).or_insert(Seen { base: Delta::default(), start_ns: f.first_ns, last: *f });
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
            seen.last = *f;
            let idle = now_ns.saturating_sub(f.last_ns);
            let ended_tcp = f_proto_is_tcp(key) && (f.tcp_flags_up | f.tcp_flags_down) & (TCP_FIN | TCP_RST) != 0;
            let retention = if f_proto_is_tcp(key) { self.t.retention_tcp } else { self.t.retention_other };
            let mut report = |reason: EndReason, seen: &mut Seen, delta: Delta| {
                if !delta.is_empty() {
                    out.reports.push(Report {
                        key: *key,
                        flow: *f,
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
            if ended_tcp && idle >= ns(self.t.tcp_linger) {
                report(EndReason::EndDetected, seen, delta);
                out.delete.push(*key);
            } else if idle >= ns(retention) {
                report(EndReason::Idle, seen, delta);
                out.delete.push(*key);
            } else if idle >= ns(self.t.inactive) {
                report(EndReason::Idle, seen, delta);
                candidates.push((f.last_ns, *key));
            } else if !delta.is_empty() && now_ns.saturating_sub(seen.start_ns) >= ns(self.t.active) {
                report(EndReason::Active, seen, delta);
                candidates.push((f.last_ns, *key));
            } else {
                candidates.push((f.last_ns, *key));
            }
        }
        // Pressure: the longest-idle flows go, reported first.
        let live = flows.len().saturating_sub(out.delete.len());
        let high = (f64::from(table_size) * self.t.high_water) as usize;
        if live > high {
            let target = (f64::from(table_size) * self.t.low_water) as usize;
            candidates.sort_unstable_by_key(|&(last, k)| (last, k.client_port, k.remote_port, k.client, k.remote, k.proto));
            for (_, key) in candidates.into_iter().take(live - target) {
                let seen = self.seen.get_mut(&key).expect("seen above");
                let f = seen.last;
                if let Some(delta) = Delta::of(&f).minus(&seen.base).filter(|d| !d.is_empty()) {
                    out.reports.push(Report { key, flow: f, delta, start_ns: seen.start_ns, end_ns: f.last_ns, reason: EndReason::LackOfResources });
                }
                out.delete.push(key);
                self.pressure_evictions += 1;
            }
        }
        // Vanished since the last scan, without us: the kernel evicted them.
        let vanished: Vec<FlowKey> = self.seen.keys().filter(|k| !present.contains(k)).copied().collect();
        for key in vanished {
            let seen = self.seen.remove(&key).expect("listed above");
            if let Some(delta) = Delta::of(&seen.last).minus(&seen.base).filter(|d| !d.is_empty()) {
                out.reports.push(Report {
                    key,
                    flow: seen.last,
                    delta,
                    start_ns: seen.start_ns,
                    end_ns: seen.last.last_ns,
                    reason: EndReason::LackOfResources,
                });
            }
            out.vanished += 1;
        }
        for key in &out.delete {
            self.seen.remove(key);
        }
        self.vanished += out.vanished;
        self.deleted += out.delete.len() as u64;
        self.reported += out.reports.len() as u64;
        out
    }

    /// Handover: what was reported of each live flow, for the successor.
    pub fn carry(&self) -> Vec<Carried> {
        self.seen.iter().map(|(key, s)| Carried { key: *key, base: s.base, start_ns: s.start_ns }).collect()
    }

    /// Successor: take over what the predecessor reported, for the flows still in
    /// the (adopted) table `flows`, so that no period is reported twice. Flows
    /// no longer there are dropped (their last period is lost: the kernel
    /// evicted them while no daemon ran). Returns how many were taken over.
    pub fn adopt(&mut self, carried: Vec<Carried>, flows: &[(FlowKey, Flow)]) -> usize {
        let table: HashMap<FlowKey, Flow> = flows.iter().copied().collect();
        let mut n = 0;
        for c in carried {
            if let Some(f) = table.get(&c.key) {
                self.seen.insert(c.key, Seen { base: c.base, start_ns: c.start_ns, last: *f });
                n += 1;
            }
        }
        n
    }

    /// At stop: everything not yet reported, as forced ends.
    pub fn finish(&mut self, flows: &[(FlowKey, Flow)]) -> Vec<Report> {
        let mut out = Vec::new();
        for (key, f) in flows {
            let base = self.seen.get(key).map(|s| s.base).unwrap_or_default();
            let start_ns = self.seen.get(key).map_or(f.first_ns, |s| s.start_ns);
            let delta = Delta::of(f).minus(&base).unwrap_or_else(|| Delta::of(f));
            if !delta.is_empty() {
                out.push(Report { key: *key, flow: *f, delta, start_ns, end_ns: f.last_ns.max(start_ns), reason: EndReason::Forced });
            }
        }
        self.seen.clear();
        self.reported += out.len() as u64;
        out
    }
}

fn f_proto_is_tcp(key: &FlowKey) -> bool {
    key.proto == libc::IPPROTO_TCP as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(port: u16, proto: u8) -> FlowKey {
        FlowKey { client: [0; 16], remote: [0; 16], client_port: port.to_be(), remote_port: 443u16.to_be(), proto, family: 4, pad: 0 }
    }

    fn flow(first: u64, last: u64, up: u64, down: u64) -> Flow {
        Flow { first_ns: first, last_ns: last, up_packets: up, up_bytes: up * 100, down_packets: down, down_bytes: down * 1000, ..Flow::default() }
    }

    fn t() -> Timeouts {
        Timeouts { active: Duration::from_secs(60), inactive: Duration::from_secs(15), tcp_linger: Duration::from_secs(2), ..Timeouts::default() }
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
        let flows: Vec<(FlowKey, Flow)> = (0..95u16).map(|i| (key(i, 17), flow(0, S + u64::from(i) * 1000, 1, 1))).collect();
        let scan = tr.scan(2 * S, &flows, 100);
        assert_eq!(scan.delete.len(), 15);
        let deleted: Vec<u16> = scan.delete.iter().map(|k| u16::from_be(k.client_port)).collect();
        assert_eq!(deleted, (0..15).collect::<Vec<_>>(), "the longest idle go first");
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
}
