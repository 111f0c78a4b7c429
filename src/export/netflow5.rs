//! NetFlow v5 export packets: a 24-byte header and up to 30 fixed 48-byte records.
//!
//! v5 carries IPv4 only: IPv6 records are skipped and counted in
//! [`EncoderStats::skipped`]. Counters are 32-bit and interface indexes 16-bit: larger
//! values saturate. It has no templates, options, provider or end reason; it is here
//! for the collectors and tools that read nothing else.

use super::fields::uptime;
use super::record::{Addrs, FlowRecord};
use super::{check_max_len, EncoderOptions, EncoderStats, ExportError};

pub const VERSION: u16 = 5;
pub const HEADER_LEN: usize = 24;
pub const RECORD_LEN: usize = 48;
/// The format's limit on records per packet.
pub const MAX_RECORDS: usize = 30;

#[derive(Debug, Clone)]
pub struct Netflow5Encoder {
    engine_type: u8,
    engine_id: u8,
    boot_ms: u64,
    /// Flows sent before the next packet, mod 2^32.
    sequence: u32,
    stats: EncoderStats,
}

impl Netflow5Encoder {
    pub fn new(options: &EncoderOptions, boot_ms: u64) -> Netflow5Encoder {
        let [_, _, engine_type, engine_id] = options.observation_domain.to_be_bytes();
        Netflow5Encoder { engine_type, engine_id, boot_ms, sequence: 0, stats: EncoderStats::default() }
    }

    pub fn set_boot_ms(&mut self, boot_ms: u64) {
        self.boot_ms = boot_ms;
    }

    pub fn stats(&self) -> EncoderStats {
        self.stats
    }

    /// Packets of up to 30 records (fewer when `max_len` says so). No records, no packet.
    pub fn encode(&mut self, records: &[FlowRecord], now_ms: u64, max_len: usize) -> Result<Vec<Vec<u8>>, ExportError> {
        check_max_len(max_len, HEADER_LEN + RECORD_LEN)?;
        let per_packet = ((max_len - HEADER_LEN) / RECORD_LEN).min(MAX_RECORDS);
        let v4: Vec<_> = records
            .iter()
            .filter_map(|r| match r.addrs() {
                Some(Addrs::V4(s, d)) => Some((r, s, d)),
                _ => {
                    self.stats.skipped += 1;
                    None
                }
            })
            .collect();
        let up = uptime(now_ms, self.boot_ms);
        let mut out = Vec::with_capacity(v4.len().div_ceil(per_packet));
        for chunk in v4.chunks(per_packet) {
            let mut b = Vec::with_capacity(HEADER_LEN + chunk.len() * RECORD_LEN);
            b.extend_from_slice(&VERSION.to_be_bytes());
            b.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            b.extend_from_slice(&up.to_be_bytes());
            b.extend_from_slice(&((now_ms / 1000) as u32).to_be_bytes());
            b.extend_from_slice(&(((now_ms % 1000) * 1_000_000) as u32).to_be_bytes());
            b.extend_from_slice(&self.sequence.to_be_bytes());
            b.push(self.engine_type);
            b.push(self.engine_id);
            // Sampling: mode 0 (none) and interval 0 in the top 2 and low 14 bits.
            b.extend_from_slice(&0u16.to_be_bytes());
            for (r, src, dst) in chunk {
                b.extend_from_slice(&src.octets());
                b.extend_from_slice(&dst.octets());
                b.extend_from_slice(&[0; 4]); // nexthop: the kernel's business, not known here
                b.extend_from_slice(&sat16(r.ingress_ifindex).to_be_bytes());
                b.extend_from_slice(&sat16(r.egress_ifindex).to_be_bytes());
                b.extend_from_slice(&sat32(r.packets).to_be_bytes());
                b.extend_from_slice(&sat32(r.octets).to_be_bytes());
                b.extend_from_slice(&uptime(r.start_ms, self.boot_ms).to_be_bytes());
                b.extend_from_slice(&uptime(r.end_ms, self.boot_ms).to_be_bytes());
                b.extend_from_slice(&r.src_port.to_be_bytes());
                b.extend_from_slice(&r.dst_port.to_be_bytes());
                b.push(0); // pad1
                b.push(r.tcp_flags);
                b.push(r.protocol);
                b.push(r.tos);
                b.extend_from_slice(&[0; 4]); // src_as, dst_as
                b.extend_from_slice(&[0; 2]); // src_mask, dst_mask
                b.extend_from_slice(&[0; 2]); // pad2
            }
            self.sequence = self.sequence.wrapping_add(chunk.len() as u32);
            self.stats.messages += 1;
            self.stats.records += chunk.len() as u64;
            out.push(b);
        }
        Ok(out)
    }
}

fn sat16(v: u32) -> u16 {
    v.min(u16::MAX.into()) as u16
}

fn sat32(v: u64) -> u32 {
    v.min(u32::MAX.into()) as u32
}
