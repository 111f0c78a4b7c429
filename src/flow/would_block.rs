//! Observe mode: which flows a block verdict would have stopped, each reported
//! once. The datapath records the verdict (and counts the packets in
//! `would_block`) but passes them; the daemon's flow scan hands the table to
//! [`WouldBlock::scan`], which picks the flows not reported yet, at most
//! [`MAX_PER_SCAN`] a scan (one scan a second: a flood of blocked flows cannot
//! flood the log; the rest are counted as suppressed and never reported). A flow
//! is forgotten once it leaves the table.
//!
//! Pure: the table comes in, the flows to log come out.

use std::collections::HashMap;

use crate::bpf::abi::{Flow, FlowKey, VERDICT_BLOCK};

/// Log lines a scan may produce.
pub const MAX_PER_SCAN: usize = 64;

/// What one scan decided.
#[derive(Debug, Default, PartialEq)]
pub struct WouldBlockScan {
    /// Flows to log now, in table order.
    pub log: Vec<(FlowKey, Flow)>,
    /// Blocked flows first seen now but over the limit: not logged, ever.
    pub suppressed: usize,
}

/// The blocked flows already handled (logged or suppressed), while they live:
/// each with the last scan that saw it in the table.
#[derive(Debug, Default)]
pub struct WouldBlock {
    seen: HashMap<FlowKey, u32>,
    epoch: u32,
}

impl WouldBlock {
    /// One scan of the whole table at once.
    pub fn scan(&mut self, flows: &[(FlowKey, Flow)]) -> WouldBlockScan {
        let mut out = WouldBlockScan::default();
        self.begin();
        for (k, f) in flows {
            self.one(k, f, &mut out);
        }
        self.end();
        out
    }

    /// A scan a batch at a time: `begin`, `chunk` for each batch, `end`.
    pub fn begin(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
    }

    pub fn chunk(&mut self, keys: &[FlowKey], flows: &[Flow], out: &mut WouldBlockScan) {
        for (k, f) in keys.iter().zip(flows) {
            self.one(k, f, out);
        }
    }

    /// Forgets the flows the scan did not find.
    pub fn end(&mut self) {
        let epoch = self.epoch;
        self.seen.retain(|_, e| *e == epoch);
    }

    fn one(&mut self, k: &FlowKey, f: &Flow, out: &mut WouldBlockScan) {
        if self.seen.is_empty() && f.verdict != VERDICT_BLOCK {
            return;
        }
        if let Some(e) = self.seen.get_mut(k) {
            *e = self.epoch;
            return;
        }
        if f.verdict != VERDICT_BLOCK {
            return;
        }
        self.seen.insert(*k, self.epoch);
        if out.log.len() < MAX_PER_SCAN {
            out.log.push((*k, *f));
        } else {
            out.suppressed += 1;
        }
    }

    /// Blocked flows remembered (live and handled).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::abi::VERDICT_PASS;

    fn key(port: u16) -> FlowKey {
        FlowKey { client: [0; 16], remote: [0; 16], client_port: port.to_be(), remote_port: 443u16.to_be(), proto: 6, family: 4, pad: 0 }
    }

    fn flow(verdict: u8) -> Flow {
        Flow { verdict, rule_id: 2, ..Flow::default() }
    }

    #[test]
    fn each_blocked_flow_once_while_it_lives() {
        let mut w = WouldBlock::default();
        let table = vec![(key(1), flow(VERDICT_BLOCK)), (key(2), flow(VERDICT_PASS)), (key(3), flow(VERDICT_BLOCK))];
        let s = w.scan(&table);
        assert_eq!(s.log.iter().map(|(k, _)| u16::from_be(k.client_port)).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(s.suppressed, 0);
        // The same flows a second later (more packets): nothing new.
        assert_eq!(w.scan(&table), WouldBlockScan::default());
        // Flow 1 ends and leaves the table; a new flow with the same tuple is new.
        let s = w.scan(&table[1..]);
        assert!(s.log.is_empty());
        assert_eq!(w.len(), 1);
        let s = w.scan(&table);
        assert_eq!(s.log.len(), 1, "the tuple came back as a new flow");
    }

    #[test]
    fn a_flood_is_cut_at_the_limit_and_the_rest_counted() {
        let mut w = WouldBlock::default();
        let table: Vec<(FlowKey, Flow)> = (0..MAX_PER_SCAN as u16 + 10).map(|p| (key(p), flow(VERDICT_BLOCK))).collect();
        let s = w.scan(&table);
        assert_eq!((s.log.len(), s.suppressed), (MAX_PER_SCAN, 10));
        // Suppressed flows are not logged later either.
        assert_eq!(w.scan(&table), WouldBlockScan::default());
    }
}
